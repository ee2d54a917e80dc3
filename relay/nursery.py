"""One conversation: the Trio nursery that holds the avatar session, the two pumps and the speech router.

`run_conversation` reads top to bottom: wait for `start`; open the agent and the avatar concurrently; send `ready`;
pump browser -> agent and agent -> browser (and avatar) until something ends the conversation; tell the browser why.
Every way out — the browser leaving (the web layer cancels us), `stop`, the agent closing, the avatar failing, a
timeout, a server shutdown — leaves the nursery, and leaving it stops the avatar session: that happens in the
provider's `open_session` context, shielded and time-bounded. Nothing here is a hand-made flag: endings are
exceptions (`ConversationOver` and the upstream errors) and cancellation comes from scopes.

The parts it composes are in `relay.conversation` (record, endings, outbox, speech router, pumps). This module must
never parse or build wire formats itself (that is `relay.protocol`), and never know which avatar provider it drives.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import overload

import httpx2
import trio

from relay import __version__, elevenlabs
from relay._util import leaves
from relay.avatars import (
    AvatarError,
    AvatarEvent,
    AvatarProvider,
    AvatarSession,
    AvatarSessionEnded,
    AvatarSpeaking,
    AvatarStateChanged,
    AvatarUnavailable,
    SessionRotated,
)
from relay.avatars import ending as avatar_ending
from relay.avatars.common import rotation_limit
from relay.config import Settings
from relay.conversation.agent_queue import AgentQueue, AnswerPing, QueueStep, ShowQueueStatus
from relay.conversation.client_reports import ClientReports, ReportHook
from relay.conversation.endings import BrowserSocket, ConversationOver, classify, tell_browser_and_close, why_cut
from relay.conversation.gates import McpApprovals, QueueGate
from relay.conversation.outbox import Outbox
from relay.conversation.pumps import pump_agent_to_browser, pump_browser_to_agent
from relay.conversation.record import ConversationRecord, current_conversation
from relay.conversation.speech import SpeechRouter
from relay.elevenlabs import AgentConnection
from relay.protocol import browser as bp
from relay.protocol import elevenlabs as el
from relay.protocol.audio import AudioFormat, parse_format

log = logging.getLogger("relay.conversation")

# Seconds after the agent's metadata within which a `queue_status` "waiting" is expected (it comes right after the
# metadata: convai-widget-core's mock). `ready` waits for the agent's first event at most this long from the
# metadata; the avatar's set-up (seconds, for a real one) overlaps it, so it only delays a conversation whose avatar
# was ready sooner and whose agent says nothing at first.
QUEUE_NOTICE = 0.05
# Avatar sessions that die mid-conversation are replaced at most this many times per conversation (a provider whose
# sessions die at once would otherwise be asked again and again); then the conversation goes on voice-only.
MAX_AVATAR_REPLACEMENTS = 5
# A session with a known limit is rotated up to ROTATION_MARGIN before it (a quarter of a shorter limit), between
# turns; at the latest ROTATION_DEADLINE before it, between turns or not.
ROTATION_MARGIN, ROTATION_DEADLINE = 15.0, 2.0


@dataclass(frozen=True)
class ConversationHooks:
    """What the process wants to know as a conversation goes (metrics, transcripts). Each is called inline and must
    not block; none is called per audio frame."""

    on_start: Callable[[ConversationRecord], None] | None = None  # opened, before its first read
    on_ready: Callable[[ConversationRecord], None] | None = None  # `ready` sent
    on_end: Callable[[ConversationRecord], None] | None = None  # ended, for whatever reason
    on_agent_event: Callable[[ConversationRecord, el.ServerEvent], None] | None = None  # every agent event but audio
    on_user_text: Callable[[ConversationRecord, str], None] | None = None  # a typed user message, as sent
    on_client_metrics: ReportHook | None = None  # the page's measurements, or why a report was dropped


@dataclass(frozen=True)
class Upstreams:
    """Everything a conversation needs from the process: settings, the shared HTTP client, the avatar provider, the
    agent connection's opener, and the hooks."""

    settings: Settings
    http: httpx2.AsyncClient
    provider: AvatarProvider | None
    open_agent: Callable[..., AbstractAsyncContextManager[AgentConnection]] = elevenlabs.open_agent
    hooks: ConversationHooks = ConversationHooks()
    # The providers' known session limits in seconds, by provider name (relay.providers.table.session_limits): a
    # session is rotated between turns before its limit.
    session_limits: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Grant:
    """What the client's token allows: `max_duration` (seconds) caps the conversation below RELAY_MAX_DURATION;
    `overrides` False refuses a `start` that carries agent overrides (`unauthorized`); `subject` is the token's
    verified `sub` (None: no token, or one without a subject)."""

    max_duration: float | None = None
    overrides: bool = True
    subject: str | None = None


async def run_conversation(browser: BrowserSocket, up: Upstreams,
                           shutdown_scope: trio.CancelScope | None = None, *,
                           start: bp.Start | None = None,
                           grant: Grant | None = None,
                           browser_left: Callable[[], bool] | None = None) -> ConversationRecord:
    """Hold one conversation from the browser's first frame to the close.

    Cancelled by the web layer when the browser disconnects; cancelling `shutdown_scope` (the registry's drain)
    ends it with `shutdown`. The avatar session is stopped in every case (shielded, bounded by RELAY_STOP_TIMEOUT)
    and, if the browser is still there, it is told why the conversation ended. Returns the record of what happened.
    `start`: the browser's `start`, when the caller has read it already (the web layer reads it, and verifies its
    token, before the conversation takes a seat: `relay.server.opening`); otherwise it is read here, within
    RELAY_START_TIMEOUT. `grant`: what the client's token allows.

    A cancellation from outside is the browser leaving when `browser_left()` says so (or when it is not given);
    otherwise the server cut the conversation (hypercorn's grace period ended, ...): the browser is told `shutdown`
    before the cancellation goes on up.
    """
    record = ConversationRecord(relay_id="r-" + secrets.token_hex(6))
    current_conversation.set(record)  # every log line from here on (and from the tasks below) carries its ids
    log.info("conversation opened")
    if up.hooks.on_start is not None:
        up.hooks.on_start(record)
    settings = up.settings
    outcome: ConversationOver
    shutdown_scope = shutdown_scope or trio.CancelScope()
    try:
        with shutdown_scope:
            if start is None:
                start = await receive_start(browser, settings)
            grant = grant or Grant()
            record.subject = grant.subject
            _check_overrides(start, grant, settings)
            with trio.move_on_after(min(settings.relay_max_duration, grant.max_duration or math.inf)) \
                    as duration_scope:
                await _converse(browser, up, start, record)
            if duration_scope.cancelled_caught:
                raise ConversationOver.failed("timeout", "maximum conversation duration reached")
        if shutdown_scope.cancelled_caught:
            raise why_cut(shutdown_scope)  # the drain's `shutdown`, or an operator's `admin` (relay.server.roster)
        raise AssertionError("a conversation only ends by ConversationOver or an upstream error")
    except Exception as exc:
        outcome = classify(exc, record)
        if outcome.reason == "shutdown" and browser_left is not None and browser_left():
            # Held for a resume (relay.conversation.link) when the relay shuts down: nobody there to tell.
            outcome = ConversationOver("client_gone", message="held for a resume when the relay shut down")
    except BaseException as exc:
        if browser_left is None or browser_left() or not _cancelled(exc):
            record.reason = "client_gone"
        else:
            cut = ConversationOver.failed("shutdown", "the relay is shutting down")
            record.reason, record.error, record.message = cut.reason, cut.error, cut.message
            await tell_browser_and_close(browser, cut)  # shielded and bounded: the cancellation stands
        _finish(record, up)
        if isinstance(exc, BaseExceptionGroup):
            # The browser left (we are cancelled); what else failed meanwhile (a send that broke when the socket
            # died, ...) is a consequence, not a server error: only the cancellation goes on up.
            cancelled, others = exc.split(trio.Cancelled)
            if others is not None:
                log.debug("after the browser left: %r", others)
            if cancelled is not None:
                raise cancelled from None
        raise
    record.reason, record.error, record.message = outcome.reason, outcome.error, outcome.message
    await tell_browser_and_close(browser, outcome)
    _finish(record, up)
    return record


def _check_overrides(start: bp.Start, grant: Grant, settings: Settings) -> None:
    """A `start` may only change what the operator allows (RELAY_CLIENT_OVERRIDES, RELAY_CLIENT_EXTRA_BODY) and
    what its token allows (`relay_overrides`): anything more is refused (`unauthorized`, naming what)."""
    if start.overrides or start.custom_llm_extra_body is not None:
        if not grant.overrides:
            raise ConversationOver.failed("unauthorized", "this client token does not allow agent overrides")
    if start.overrides:
        refused = bp.refused_override(start.overrides, bp.parse_allowed_paths(settings.relay_client_overrides))
        if refused is not None:
            raise ConversationOver.failed("unauthorized", f"the relay does not allow overriding {refused[:100]!r} "
                                          "(RELAY_CLIENT_OVERRIDES)")
    if start.custom_llm_extra_body is not None and not settings.relay_client_extra_body:
        raise ConversationOver.failed("unauthorized", "the relay does not allow custom_llm_extra_body "
                                      "(RELAY_CLIENT_EXTRA_BODY)")


def _cancelled(exc: BaseException) -> bool:
    """True when `exc` is a cancellation (alone or with what failed as it arrived), not KeyboardInterrupt & co."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(trio.Cancelled) is not None
    return isinstance(exc, trio.Cancelled)


def _finish(record: ConversationRecord, up: Upstreams) -> None:
    duration = time.monotonic() - record.started_at
    log.info("conversation ended reason=%s error=%s duration=%.1fs degraded=%s message=%s", record.reason,
             record.error, duration, record.degraded, record.message or "-")
    if up.hooks.on_end is not None:
        up.hooks.on_end(record)
    current_conversation.set(None)


@overload
async def receive_start(browser: BrowserSocket, settings: Settings) -> bp.Start: ...
@overload
async def receive_start(browser: BrowserSocket, settings: Settings, *, resumable: bool) -> bp.Start | bp.Resume: ...


async def receive_start(browser: BrowserSocket, settings: Settings, *, resumable: bool = False) -> bp.Start | bp.Resume:
    """Read the browser's first frame, which must be a `start` (or, with `resumable`, a `resume`) of at most
    RELAY_MAX_START_BYTES, for at most RELAY_START_TIMEOUT seconds. Raises ConversationOver (`timeout`,
    `protocol_error`) otherwise; cancelled by the caller's scope."""
    with trio.move_on_after(settings.relay_start_timeout) as scope:
        frame = await browser.receive()
    if scope.cancelled_caught:
        raise ConversationOver.failed("timeout", f"no 'start' message received within "
                                      f"{settings.relay_start_timeout:g} s")
    if not isinstance(frame, str):
        raise ConversationOver.failed("protocol_error", "the first message must be a 'start' text frame")
    limit = min(settings.relay_max_start_bytes, settings.relay_max_frame_bytes)
    if len(frame) > limit:
        raise ConversationOver.failed("protocol_error", f"'start' larger than {limit} bytes")
    try:
        if resumable and (resume := bp.parse_resume(frame)) is not None:
            return resume
        event = bp.parse_text_frame(frame)
    except bp.ProtocolError as exc:
        raise ConversationOver.failed("protocol_error", f"the first message must be 'start': {exc}") from None
    if not isinstance(event, bp.Start):
        raise ConversationOver.failed("protocol_error", "the first message must be 'start'")
    return event


async def _converse(browser: BrowserSocket, up: Upstreams, start: bp.Start, record: ConversationRecord) -> None:
    settings = up.settings
    outbox = Outbox()
    avatar_ending.begin()  # the agent pump marks it when the agent hangs up; the avatar's stop call reads it
    async with trio.open_nursery() as conversation:
        conversation.start_soon(outbox.run_sender, browser)
        conversation.start_soon(outbox.watch_sender, settings.relay_send_timeout)

        # Set-up: the agent and the avatar concurrently; ready when both are up.
        agent: AgentConnection | None = None
        session: AvatarSession | None = None
        speech = SpeechRouter(outbox)
        ready_sent = trio.Event()  # the avatar's `connected` is awaited from here on, bounded

        def on_avatar_event(event: AvatarEvent) -> None:
            if isinstance(event, AvatarSpeaking):
                speech.avatar_speaking(event.duration_ms)
                outbox.send(bp.avatar_speaking(event.text, event.duration_ms, event.turn))
            elif isinstance(event, AvatarStateChanged):
                speech.avatar_state(event.speaking, event.turn)
                outbox.send(bp.avatar_state(event.speaking, event.turn))

        queue = AgentQueue()
        notice_until = -math.inf  # until when a queue notice is awaited (set when the metadata arrives)
        # What watches the agent's queue while the avatar sets up ends exactly when the avatar's set-up does (its
        # `finally` cancels it, whatever ended it): shielded, so the set-up time-out alone never cuts it — an avatar
        # that degrades to voice right at RELAY_SETUP_TIMEOUT must not fail the conversation because of it.
        avatar_set_up = trio.CancelScope(shield=True)

        async def start_agent() -> None:
            nonlocal agent, notice_until
            # The avatar is the slower path (two calls in a row upstream): its first request goes out first.
            await trio.lowlevel.checkpoint()
            agent = await conversation.start(_hold_agent, up, start)
            notice_until = trio.current_time() + QUEUE_NOTICE
            with avatar_set_up:
                await _watch_queue(queue, agent, outbox)

        async def start_avatar() -> None:
            nonlocal session
            try:
                if up.provider is not None:
                    session = await conversation.start(_hold_avatar, up, on_avatar_event, outbox, speech, record,
                                                       ready_sent)
            finally:
                avatar_set_up.cancel()

        with trio.fail_after(settings.relay_setup_timeout):
            async with trio.open_nursery() as setup:
                setup.start_soon(start_avatar)
                setup.start_soon(start_agent)
        assert agent is not None
        held = await _settle_queue(queue, agent, outbox, notice_until, settings.relay_agent_silence_timeout)
        record.conversation_id = agent.metadata.conversation_id
        input_format, output_format = _formats(agent.metadata)
        speech.agent_format = output_format
        approvals = McpApprovals()
        queue_gate = QueueGate()  # the agent may still queue the conversation after `ready`
        _announce_ready(up, record, outbox, agent.metadata, session, input_format, output_format)
        ready_sent.set()

        on_agent_event, on_user_text = up.hooks.on_agent_event, up.hooks.on_user_text
        conversation.start_soon(partial(
            pump_browser_to_agent, browser, agent, speech, settings, record.traffic,
            on_user_text=None if on_user_text is None else partial(on_user_text, record), input_format=input_format,
            approvals=approvals, queue=queue_gate,
            on_client_metrics=ClientReports(record, up.hooks.on_client_metrics).take))
        conversation.start_soon(partial(
            pump_agent_to_browser, agent, outbox, speech, settings.relay_agent_silence_timeout,
            on_event=None if on_agent_event is None else partial(on_agent_event, record),
            finish_timeout=settings.relay_finish_speaking_timeout, approvals=approvals, queue=queue_gate,
            held=held))


def _formats(metadata: el.ConversationMetadata) -> tuple[AudioFormat, AudioFormat]:
    """The agent's (input, output) audio formats; an unsupported one ends the conversation (`agent_error`)."""
    try:
        return parse_format(metadata.user_input_audio_format), parse_format(metadata.agent_output_audio_format)
    except ValueError as exc:
        raise ConversationOver.failed("agent_error", f"the agent announced an unsupported format: {exc}") from None


def _announce_ready(up: Upstreams, record: ConversationRecord, outbox: Outbox, metadata: el.ConversationMetadata,
                    session: AvatarSession | None, input_format: AudioFormat, output_format: AudioFormat) -> None:
    """Record the set-up's outcome and send `ready` (the avatar's info, the audio rates both ways)."""
    if session is not None:
        record.avatar_provider = session.info.provider
        record.avatar_session_id = session.info.session_id
    record.ready_at = time.monotonic()
    outbox.send(bp.ready(conversation_id=metadata.conversation_id, avatar=None if session is None else session.info,
                         input_sample_rate=input_format.sample_rate, output_sample_rate=output_format.sample_rate))
    log.info("conversation ready setup=%.3fs avatar=%s", record.ready_at - record.started_at,
             record.avatar_provider or "none")
    if up.hooks.on_ready is not None:
        up.hooks.on_ready(record)


async def _watch_queue(queue: AgentQueue, agent: AgentConnection, outbox: Outbox) -> None:
    """While the avatar sets up, read the agent's first events until the queue question is settled (see
    `relay.conversation.agent_queue`: without a queue, that is the agent's first other event). Cancelled when the
    avatar is set up."""
    while not queue.settled:
        await _act_on_queue_step(queue.receive(await agent.receive()), agent, outbox)


async def _settle_queue(queue: AgentQueue, agent: AgentConnection, outbox: Outbox, notice_until: float,
                        silence_timeout: float) -> list[el.ServerEvent]:
    """After the set-up: the agent's first event is awaited until `notice_until` (QUEUE_NOTICE after the metadata;
    what has already arrived is read at once); when queued, `ready` is kept back until "admitted", with at most
    `silence_timeout` between two events (the agent's own queue time-out closes 3008: `agent_busy`). Returns the
    events held for the agent pump."""
    while not queue.settled:
        if queue.queued:
            with trio.move_on_after(silence_timeout) as window:
                event = await agent.receive()
            if window.cancelled_caught:
                raise ConversationOver.failed("agent_error", f"the agent sent nothing for {silence_timeout:g} s "
                                              "while the conversation waited in its queue")
        else:
            with trio.move_on_at(notice_until) as nothing_waiting:
                event = await agent.receive()  # what was already received is returned at once
            if nothing_waiting.cancelled_caught:
                break
        await _act_on_queue_step(queue.receive(event), agent, outbox)
    return queue.held


async def _act_on_queue_step(step: QueueStep, agent: AgentConnection, outbox: Outbox) -> None:
    if isinstance(step, AnswerPing):
        with trio.CancelScope(shield=True):  # a frame is sent whole, even when the avatar's set-up ends now
            await agent.send(el.build_pong(step.event_id))
    elif isinstance(step, ShowQueueStatus):
        outbox.send(bp.queue_status(step.status))
        if step.change == "waiting":
            log.info("waiting in the agent's queue")
        elif step.change == "admitted":
            log.info("admitted from the agent's queue")


async def _hold_agent(up: Upstreams, start: bp.Start, *,
                      task_status: trio.TaskStatus[AgentConnection] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the agent connection and keep it open until the conversation's scope is cancelled (which closes it)."""
    settings = up.settings
    initiation = el.build_initiation(dynamic_variables=start.dynamic_variables or None,
                                     overrides=start.overrides or None, user_id=start.user_id,
                                     custom_llm_extra_body=start.custom_llm_extra_body, source_version=__version__)
    api_key = settings.elevenlabs_api_key.get_secret_value() if settings.elevenlabs_api_key else None
    async with up.open_agent(up.http, base_url=settings.elevenlabs_base_url,
                             agent_id=settings.elevenlabs_agent_id or "", api_key=api_key,
                             initiation=initiation, connect_timeout=settings.relay_setup_timeout,
                             branch_id=settings.elevenlabs_branch_id, environment=settings.elevenlabs_environment,
                             version=__version__) as agent:
        task_status.started(agent)
        await trio.sleep_forever()


async def _hold_avatar(up: Upstreams, on_event: Callable[[AvatarEvent], None], outbox: Outbox, speech: SpeechRouter,
                       record: ConversationRecord, ready_sent: trio.Event, *,
                       task_status: trio.TaskStatus[AvatarSession | None] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the avatar session, feed it from the speech router and keep it alive until the conversation's scope is
    cancelled; leaving the `open_session` context stops the session. The session is handed over as soon as it is
    started, not once the avatar says `connected` (speech is held until then, at most RELAY_AVATAR_SPEECH_HOLD
    seconds: then the browser says it).

    A session that dies mid-conversation (the provider ends it, its socket drops, it reports an error, it reaches
    its maximum length: `AvatarSessionEnded`) is replaced: its context has stopped it; the unsaid rest of the turn
    it was saying goes to the browser as voice (`SpeechRouter.avatar_lost`) while the provider (the first of the
    list that starts) opens another within RELAY_SETUP_TIMEOUT; once it has, the browser is told `avatar_changed`
    and the new avatar takes over from the next turn. At most MAX_AVATAR_REPLACEMENTS times per conversation.
    If the provider refuses a session (at the start, or a replacement), the avatar does not say `connected` within
    RELAY_AVATAR_CONNECT_TIMEOUT after `ready`, or replacements run out, the conversation goes on voice-only
    (`avatar_unavailable`; unless RELAY_DEGRADE_TO_VOICE is off), what was held for the avatar going to the
    browser first."""
    assert up.provider is not None
    started = False
    died: AvatarSessionEnded | None = None  # the session being replaced
    replacements = 0
    while True:
        # Opening a replacement is bounded like a set-up (the first is bounded by the conversation's set-up scope).
        opening = trio.CancelScope(deadline=trio.current_time() + up.settings.relay_setup_timeout if started
                                   else math.inf)
        try:
            with opening:
                async with up.provider.open_session(on_event) as session:
                    opening.deadline = math.inf
                    speech.attach(session)
                    if not started:
                        task_status.started(session)
                        started = True
                    else:
                        await _announce_replacement(session, died, outbox, record, ready_sent)
                    died = None
                    async with trio.open_nursery() as avatar_tasks:
                        avatar_tasks.start_soon(speech.run, session)
                        avatar_tasks.start_soon(speech.hold_for_avatar, up.settings.relay_avatar_speech_hold)
                        avatar_tasks.start_soon(_keep_alive, session)
                        avatar_tasks.start_soon(_await_connected, session, speech, ready_sent,
                                                up.settings.relay_avatar_connect_timeout)
                        limit = rotation_limit(session.info, up.session_limits)
                        if limit is not None:
                            avatar_tasks.start_soon(_rotate_before, speech, trio.current_time() + limit, limit)
            if opening.cancelled_caught:
                raise AvatarUnavailable("timeout", f"No avatar could be started again within "
                                        f"{up.settings.relay_setup_timeout:g} s.")
        except* AvatarError as group:
            if not up.settings.relay_degrade_to_voice:
                raise
            exc = leaves(group)[0]
            assert isinstance(exc, AvatarError)
            if isinstance(exc, SessionRotated):
                died = exc
                log.info("rotating the avatar session before its limit")
            elif isinstance(exc, AvatarSessionEnded) and started and replacements < MAX_AVATAR_REPLACEMENTS:
                replacements += 1
                died = exc
                log.warning("avatar session died, replacing it (the voice goes on in the browser meanwhile) "
                            "reason=%s message=%s", exc.reason, exc.message)
            else:
                died = None
                reason = exc.reason if isinstance(exc, AvatarUnavailable) else "session_ended"
                log.warning("avatar unavailable, continuing voice-only reason=%s message=%s", reason, exc.message)
                record.degraded = True
                outbox.send(bp.avatar_unavailable(reason, exc.message))
            speech.avatar_lost()  # the unsaid rest of the turn, and what was held, go to the browser as voice
        if died is None:
            break
    if not started:
        task_status.started(None)


async def _announce_replacement(session: AvatarSession, died: AvatarSessionEnded | None, outbox: Outbox,
                                record: ConversationRecord, ready_sent: trio.Event) -> None:
    """Tell the browser the avatar changed (after `ready`, which named the one it replaces)."""
    await ready_sent.wait()
    record.avatar_provider = session.info.provider
    record.avatar_session_id = session.info.session_id
    reason = "session_limit" if isinstance(died, SessionRotated) else "session_ended" if died is None else died.reason
    outbox.send(bp.avatar_changed(session.info, reason))
    log.info("avatar replaced provider=%s reason=%s", session.info.provider, reason)


async def _rotate_before(speech: SpeechRouter, limit_at: float, limit: float) -> None:
    """Raise `SessionRotated` before the session's known limit (`limit_at`, `limit` seconds after it opened): from
    ROTATION_MARGIN before it (a quarter of a shorter limit) once the avatar is between turns (its speech played
    out), at the latest ROTATION_DEADLINE before it. Blocks on the clock and the speech router; cancelled with the
    session's tasks."""
    await trio.sleep_until(limit_at - min(ROTATION_MARGIN, limit / 4))
    with trio.move_on_at(limit_at - ROTATION_DEADLINE):
        await speech.wait_played_out()
    raise SessionRotated("session_ended", f"the avatar session reaches its limit of {limit:g} s")


async def _await_connected(session: AvatarSession, speech: SpeechRouter, ready_sent: trio.Event,
                           bound: float) -> None:
    """Raise AvatarUnavailable("timeout") unless the avatar says `connected` within `bound` seconds of `ready`
    (the browser joins the avatar's room after `ready`: a service that waits for a viewer announces it then); once
    it has, the speech router stops holding speech for it."""
    await ready_sent.wait()
    try:
        with trio.fail_after(bound):
            await session.wait_connected()
    except trio.TooSlowError:
        raise AvatarUnavailable("timeout", f"The avatar did not report that it was connected within {bound:g} s."
                                ) from None
    speech.avatar_connected()
    log.info("avatar connected")


async def _keep_alive(session: AvatarSession) -> None:
    """Reset the avatar's idle timer every `keep_alive_interval` seconds until cancelled."""
    while True:
        await trio.sleep(session.keep_alive_interval)
        await session.keep_alive()
