"""The demo agent's scripted features (docs/simulators.md): a server-side webhook tool ("order"), an MCP tool that
needs the user's approval ("weather"), a human colleague taking over ("human") and a client tool ("tool"). Each is a
reply's `prepare` (it returns the reply's text) or `after` step, run in the reply's scope: an interruption cancels
it."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any, Protocol

import trio

from relay.sim.elevenlabs_sim.wire import frame

ORDER = re.compile(r"\border", re.IGNORECASE)
WEATHER = re.compile(r"weather", re.IGNORECASE)
HUMAN = re.compile(r"\bhuman", re.IGNORECASE)
TOOL = re.compile(r"\btool\b", re.IGNORECASE)
CITY = re.compile(r"\bin ([A-Z][A-Za-z-]+)")


class AgentLine(Protocol):
    """What a feature needs of the conversation it runs in."""

    faults: dict[str, Any]
    record: dict[str, Any]
    tool_waiters: dict[str, tuple[trio.Event, list[dict[str, Any]]]]
    approval_waiters: dict[str, tuple[trio.Event, list[bool]]]

    def enabled(self, event_type: str) -> bool: ...

    async def send(self, text: str) -> None: ...


async def lookup_order(agent: AgentLine, number: str, event_id: int) -> str:
    """The agent runs its `lookup_order` webhook tool (server side): request, a short delay, response."""
    call_id = "toolu_" + secrets.token_hex(8)
    agent.record["server_tool_calls"].append({"tool_call_id": call_id, "tool_name": "lookup_order"})
    if agent.enabled("agent_tool_request"):
        await agent.send(frame("agent_tool_request", "agent_tool_request", {
            "tool_name": "lookup_order", "tool_call_id": call_id, "tool_type": "webhook", "event_id": event_id}))
    await trio.sleep(float(agent.faults["server_tool_delay_ms"]) / 1000.0)
    if agent.enabled("agent_tool_response"):
        await agent.send(frame("agent_tool_response", "agent_tool_response", {
            "tool_name": "lookup_order", "tool_call_id": call_id, "tool_type": "webhook", "is_error": False,
            "is_called": True, "event_id": event_id}))
    if agent.enabled("rich_content"):
        await agent.send(frame("rich_content", "rich_content", {
            "rich_content_id": "rc_" + call_id[6:], "component": "buttons", "event_id": event_id,
            "props": {"buttons": [{"type": "message", "label": "Track it", "message": "Where is my order?"}]}}))
    return f"Your order {number} has shipped and arrives on Friday."

async def mcp_weather(agent: AgentLine, city: str, event_id: int) -> str:
    """The agent calls the `get_weather` tool of an MCP server that requires approval: loading, then
    awaiting_approval for `mcp_approval_timeout_s`; approved -> success, denied or no answer -> failure."""
    call_id = "mcp_" + secrets.token_hex(8)
    timeout = int(agent.faults["mcp_approval_timeout_s"])
    base = {"service_id": "sim-weather", "tool_call_id": call_id, "tool_name": "get_weather",
            "tool_description": "Current weather for a city", "parameters": {"city": city}}
    call = {"tool_call_id": call_id, "tool_name": "get_weather", "parameters": {"city": city}, "outcome": None}
    agent.record["mcp_tool_calls"].append(call)

    async def state(name: str, **extra: Any) -> None:
        if agent.enabled("mcp_tool_call"):
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            await agent.send(frame("mcp_tool_call", "mcp_tool_call",
                                   {**base, "timestamp": stamp, "state": name, **extra}))

    await state("loading")
    answered = trio.Event()
    answers: list[bool] = []
    agent.approval_waiters[call_id] = (answered, answers)
    try:
        await state("awaiting_approval", approval_timeout_secs=timeout)
        with trio.move_on_after(timeout):
            await answered.wait()
        answered.set()  # from now on an answer is late
    finally:
        agent.approval_waiters.pop(call_id, None)
    if answers and answers[0]:
        call["outcome"] = "approved"
        await state("success", result=[{"type": "text", "text": f"{city}: sunny, 21 °C"}])
        return f"The weather in {city} is sunny, 21 degrees."
    call["outcome"] = "denied" if answers else "timed_out"
    await state("failure", error_message="The user denied the tool call" if answers
                else "Approval timed out")
    if answers:
        return f"All right, I won't look up the weather in {city}."
    return "I did not get your approval in time, so I did not look up the weather."

async def hand_off(agent: AgentLine, event_id: int) -> str:
    """A human takes over: external_agent_connected, agent_typing, then the human's reply."""
    agent.record["hand_offs"] += 1
    if agent.enabled("external_agent_connected"):
        await agent.send(frame("external_agent_connected", "external_agent_connected_event", {}))
    if agent.enabled("agent_typing"):
        await agent.send(frame("agent_typing", "agent_typing_event", {"is_typing": True, "duration_ms": None}))
    await trio.sleep(float(agent.faults["human_typing_ms"]) / 1000.0)
    return "Hi, this is Sam, a human colleague. I can take it from here."

async def hand_back(agent: AgentLine, event_id: int) -> None:
    if agent.enabled("agent_typing"):
        await agent.send(frame("agent_typing", "agent_typing_event", {"is_typing": False, "duration_ms": None}))
    if agent.enabled("external_agent_disconnected"):
        await agent.send(frame("external_agent_disconnected", "external_agent_disconnected_event", {}))

async def call_tool(agent: AgentLine, event_id: int) -> str:
    call_id = "call_" + secrets.token_hex(8)
    event = trio.Event()
    results: list[dict[str, Any]] = []
    agent.tool_waiters[call_id] = (event, results)
    agent.record["tool_calls"].append({"tool_call_id": call_id, "tool_name": "get_time"})
    try:
        if not agent.enabled("client_tool_call"):
            return "The get_time tool is not enabled for this client."
        await agent.send(
            frame(
                "client_tool_call",
                "client_tool_call",
                {
                    "tool_name": "get_time",
                    "tool_call_id": call_id,
                    "parameters": {"timezone": "UTC"},
                    "event_id": event_id,
                },
            )
        )
        with trio.move_on_after(float(agent.faults["tool_result_timeout_s"])):
            await event.wait()
    finally:
        del agent.tool_waiters[call_id]
    if not results:
        return "The get_time tool did not answer in time."
    result = results[0]
    if result["is_error"]:
        return f"The get_time tool failed: {result['result']}"
    return f"The get_time tool returned: {result['result']}"
