"""The simulator's routes: signed URLs, agent details, the conversation socket, and the control endpoints (ledger,
faults, reset). Each socket reads the faults once, when it opens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson
import trio
from quart import Response, abort, request, websocket
from quart_trio import QuartTrio

from relay.net.http_keepalive import KeepAliveGuard
from relay.sim.elevenlabs_sim.conversation import CLOSE_TIMEOUT, Conversation
from relay.sim.elevenlabs_sim.defaults import DEFAULT_AGENTS, DEFAULT_CLIENT_EVENTS, DEFAULT_FAULTS, FORMATS


def new_record(
    conversation_id: str, agent_id: str, subprotocol: str | None, signed: bool, faults: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": conversation_id,
        "agent_id": agent_id,
        "subprotocol": subprotocol,
        "signed": signed,
        "opened_at": time.monotonic(),
        "metadata_at": None,
        "closed_at": None,
        "close_code": None,
        "close_reason": None,
        "closed_by": None,
        "initiation": None,
        "agent_output_audio_format": faults["agent_output_audio_format"],
        "user_input_audio_format": faults["user_input_audio_format"],
        "user_audio_chunks": 0,
        "user_audio_bytes": 0,
        "user_audio_seconds": 0.0,
        "user_messages": [],
        "contextual_updates": [],
        "user_activity": 0,
        "feedback": [],
        "tool_calls": [],
        "tool_results": [],
        "pings": 0,
        "pongs": 0,
        "last_ping_ms": None,
        "turns": 0,
        "user_transcripts": [],
        "replies": 0,
        "agent_audio_seconds": 0.0,
        "interruptions": 0,
        "repeated_initiations": 0,
        "reply_times": [],
        "query": {},
        "rich_content_ids": [],
        "context_ids": [],
        "multimodal_messages": [],
        "mcp_approvals": [],
        "mcp_tool_calls": [],
        "server_tool_calls": [],
        "hand_offs": 0,
    }


def _error(status: int, detail: Any) -> Response:
    return Response(orjson.dumps({"detail": detail}), status=status, content_type="application/json")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def create_app(*, on_user_audio: Callable[[str, bytes, float], None] | None = None,
               start_faults: dict[str, Any] | None = None) -> QuartTrio:
    """The simulator as an ASGI app. `on_user_audio(conversation_id, audio, time.monotonic())` is called for
    every user audio chunk as it arrives (base64-decoded, still in the input format); it must not block.
    `start_faults` are merged into the defaults (demo mode: `DEMO_FAULTS`); `/_sim/reset` restores them."""
    app = QuartTrio(__name__)
    app.asgi_app = KeepAliveGuard(app.asgi_app)  # type: ignore[method-assign]  # never lose a kept-alive request
    secret = secrets.token_bytes(32)
    initial_faults: dict[str, Any] = {**DEFAULT_FAULTS, **(start_faults or {})}
    faults: dict[str, Any] = dict(initial_faults)
    ledger: dict[str, Any] = {"conversations": {}, "signed_urls_issued": 0, "agent_details_requests": 0,
                              "signed_url_queries": []}

    def sign(agent_id: str, expires: int) -> str:
        mac = hmac.new(secret, f"{agent_id}:{expires}".encode(), hashlib.sha256).hexdigest()[:40]
        return f"{expires}.{mac}"

    def signature_valid(signature: str, agent_id: str) -> bool:
        expires, _, _ = signature.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature, sign(agent_id, int(expires)))

    def api_key_error() -> Response | None:
        key = request.headers.get("xi-api-key")
        if not key:
            return _error(401, {"status": "needs_authorization", "message": "Missing xi-api-key header"})
        if key in faults["invalid_api_keys"]:
            return _error(401, {"status": "invalid_api_key", "message": "Invalid API key"})
        return None

    @app.get("/v1/convai/conversation/get-signed-url")
    async def get_signed_url() -> Response:
        if faults["signed_url_latency_ms"]:
            await trio.sleep(faults["signed_url_latency_ms"] / 1000.0)
        agent_id = request.args.get("agent_id")
        if not agent_id:
            return _error(
                422, [{"type": "missing", "loc": ["query", "agent_id"], "msg": "Field required", "input": None}]
            )
        refused = api_key_error()
        if refused is not None:
            return refused
        if faults["signed_url_status"] is not None:
            status = int(faults["signed_url_status"])
            return _error(status, {"status": "simulated_failure", "message": f"Simulated HTTP {status}"})
        if agent_id in faults["unknown_agent_ids"]:
            return _error(404, {"status": "agent_not_found", "message": "Agent not found"})
        scheme = "wss" if request.scheme in ("https", "wss") else "ws"
        expires = int(time.time()) + int(faults["signature_ttl_s"])
        ledger["signed_urls_issued"] += 1
        ledger["signed_url_queries"].append(dict(request.args))
        url = (
            f"{scheme}://{request.host}/v1/convai/conversation?agent_id={quote(agent_id, safe='')}"
            f"&conversation_signature={sign(agent_id, expires)}"
        )
        return _json({"signed_url": url})

    @app.get("/v1/convai/agents/<agent_id>")
    async def agent_details(agent_id: str) -> Response:
        ledger["agent_details_requests"] += 1
        refused = api_key_error()
        if refused is not None:
            return refused
        if faults["agent_details_status"] is not None:
            status = int(faults["agent_details_status"])
            return _error(status, {"status": "simulated_failure", "message": f"Simulated HTTP {status}"})
        if agent_id in faults["unknown_agent_ids"]:
            return _error(404, {"status": "agent_not_found", "message": "Agent not found"})
        agent = agent_faults(agent_id)
        return _json(
            {
                "agent_id": agent_id,
                "name": "Simulated agent",
                "conversation_config": {
                    "asr": {"user_input_audio_format": faults["user_input_audio_format"]},
                    "tts": {"agent_output_audio_format": faults["agent_output_audio_format"]},
                    "agent": {"first_message": faults["first_message"] or "", "language": "en"},
                    "conversation": {
                        "max_duration_seconds": faults["max_duration_s"],
                        "client_events": list(agent["client_events"] or DEFAULT_CLIENT_EVENTS),
                    },
                },
                "platform_settings": {
                    "auth": {"enable_auth": bool(faults["require_signed_url"])},
                    "overrides": {
                        "enable_conversation_initiation_client_data_from_webhook": False,
                        "conversation_config_override": {
                            "agent": {"first_message": bool(agent["overrides_allowed"]),
                                      "language": bool(agent["overrides_allowed"]),
                                      "prompt": {"prompt": bool(agent["overrides_allowed"])}},
                            "tts": {"voice_id": bool(agent["overrides_allowed"])},
                        },
                    },
                },
            }
        )

    def agent_faults(agent_id: str) -> dict[str, Any]:
        """The faults as this agent sees them: the global ones, then its own configuration (`agents`)."""
        agents = DEFAULT_AGENTS if faults["agents"] is None else faults["agents"]
        return {**faults, **agents.get(agent_id, {})}

    @app.websocket("/v1/convai/conversation")
    async def conversation_socket() -> None:
        agent_id = websocket.args.get("agent_id", "")
        snapshot = agent_faults(agent_id)
        signature = websocket.args.get("conversation_signature") or websocket.args.get("token")
        if signature is not None and not signature_valid(signature, agent_id):
            abort(403)
        if signature is None and snapshot["require_signed_url"]:
            abort(403)
        if not agent_id:
            abort(400)
        if snapshot["handshake_latency_ms"]:
            await trio.sleep(snapshot["handshake_latency_ms"] / 1000.0)
        if snapshot["refuse_handshake_status"] is not None:
            abort(int(snapshot["refuse_handshake_status"]))
        subprotocol = "convai" if "convai" in websocket.requested_subprotocols else None
        await websocket.accept(subprotocol=subprotocol)
        conversation_id = "conv_" + secrets.token_hex(12)
        record = new_record(conversation_id, agent_id, subprotocol, signature is not None, snapshot)
        record["query"] = {key: websocket.args.get(key) for key in ("source", "version", "branch_id", "environment")
                           if key in websocket.args}
        ledger["conversations"][conversation_id] = record
        # The real object, not the context-local proxy: it is used from the conversation's own tasks.
        socket = websocket._get_current_object()  # type: ignore[attr-defined]
        conversation = Conversation(socket, snapshot, record, on_user_audio)
        try:
            await conversation.run()
        finally:
            record["closed_at"] = time.monotonic()
            if conversation.close is None:
                record["closed_by"] = "client"
            else:
                record["closed_by"] = "agent"
                record["close_code"], record["close_reason"] = conversation.close
        if conversation.close is not None:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await websocket.close(*conversation.close)

    @app.get("/_sim/ledger")
    async def get_ledger() -> Response:
        conversations = list(ledger["conversations"].values())
        totals = {
            "conversations": len(conversations),
            "open": sum(1 for c in conversations if c["closed_at"] is None),
            "user_audio_chunks": sum(c["user_audio_chunks"] for c in conversations),
            "user_audio_bytes": sum(c["user_audio_bytes"] for c in conversations),
            "user_audio_seconds": sum(c["user_audio_seconds"] for c in conversations),
            "user_messages": sum(len(c["user_messages"]) for c in conversations),
            "turns": sum(c["turns"] for c in conversations),
            "replies": sum(c["replies"] for c in conversations),
            "interruptions": sum(c["interruptions"] for c in conversations),
            "tool_results": sum(len(c["tool_results"]) for c in conversations),
            "pongs": sum(c["pongs"] for c in conversations),
        }
        return _json(
            {
                "conversations": conversations,
                "totals": totals,
                "signed_urls_issued": ledger["signed_urls_issued"],
                "signed_url_queries": ledger["signed_url_queries"],
                "agent_details_requests": ledger["agent_details_requests"],
            }
        )

    @app.post("/_sim/faults")
    async def set_faults() -> Response:
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return _json({"error": "expected a JSON object"}, 400)
        unknown = sorted(set(body) - set(DEFAULT_FAULTS))
        if unknown:
            return _json({"error": f"unknown fault keys {unknown}", "known": sorted(DEFAULT_FAULTS)}, 400)
        for key in ("agent_output_audio_format", "user_input_audio_format"):
            if key in body and body[key] not in FORMATS:
                return _json({"error": f"{key} must be one of {list(FORMATS)}"}, 400)
        if body.get("reply_pacing", "burst") not in ("burst", "realtime"):
            return _json({"error": "reply_pacing must be 'burst' or 'realtime'"}, 400)
        if body.get("agents") is not None and not isinstance(body["agents"], dict):
            return _json({"error": "agents must be an object: agent id -> its fault overrides"}, 400)
        faults.update(body)
        return _json(faults)

    @app.post("/_sim/reset")
    async def reset() -> Response:
        faults.clear()
        faults.update(initial_faults)
        ledger["conversations"] = {}
        ledger["signed_url_queries"] = []
        ledger["signed_urls_issued"] = 0
        ledger["agent_details_requests"] = 0
        return _json({"ok": True})

    return app
