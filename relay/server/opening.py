"""The way into a conversation for one browser socket, once the handshake checks have passed (`Gate`): the
socket's `start` is read and its token verified while it holds only a pre-start slot (`PendingPool`), and only then
does it take a conversation seat (`Registry.admit`, counted against the token's subject) and spend one of its
token's uses (`TokenUses`), before `run_conversation` calls anything upstream.

Whatever refuses it on the way — an idle socket, a bad frame, a bad token, a full relay — tells the browser why
(`error` then `ended`, with the close code of the error) and is counted as a refusal, never as a conversation.
Nothing here blocks but the socket read (bounded by RELAY_START_TIMEOUT) and the seat keeper's calls.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass

from relay.config import Settings
from relay.conversation.endings import BrowserSocket, ConversationOver, tell_browser_and_close
from relay.nursery import Grant, Upstreams, receive_start, run_conversation
from relay.ops.metrics import RelayMetrics
from relay.protocol import browser as bp
from relay.server.admission import OVER_RATE, AdmissionRefused, Registry
from relay.server.auth import Gate, HandshakeDecision, TokenClaims, TokenError, identity
from relay.server.pending import PUSHED_OUT, PendingPool
from relay.server.roster import Roster
from relay.server.token_uses import TokenUses, token_use

log = logging.getLogger("relay.web")


@dataclass(frozen=True, slots=True)
class Opening:
    """A socket's verified opening: its `start`, who it is counted against (`client`: the token's `sub`, else the
    address), and its token's claims (None without tokens)."""

    start: bp.Start
    client: str
    claims: TokenClaims | None
    address: str = ""  # the client's address (what `client` is without a token's `sub`)


def allowed_names(setting: str) -> frozenset[str]:
    """RELAY_CLIENT_DYNAMIC_VARIABLES -> the names a browser may set ("*": any)."""
    return frozenset(name.strip() for name in setting.split(",") if name.strip())


def with_identity(start: bp.Start, claims: TokenClaims | None, settings: Settings) -> bp.Start:
    """The `start` as the agent gets it: everything in it but the token is the browser's to choose, so its
    `dynamic_variables` must be allowed by the operator (RELAY_CLIENT_DYNAMIC_VARIABLES), a token's own
    `relay_dynamic_variables` win over them, and a token's `sub` is the `user_id` (a `start` naming another user is
    refused). Raises ConversationOver (`unauthorized`, naming what)."""
    allowed = allowed_names(settings.relay_client_dynamic_variables)
    if "*" not in allowed:
        for name in start.dynamic_variables:
            if name not in allowed:
                raise ConversationOver.failed("unauthorized", f"the relay does not let a page set the dynamic "
                                              f"variable {name[:100]!r} (RELAY_CLIENT_DYNAMIC_VARIABLES)")
    if claims is None:
        return start
    update: dict[str, object] = {}
    if claims.dynamic_variables:
        update["dynamic_variables"] = {**start.dynamic_variables, **claims.dynamic_variables}
    if claims.subject:
        if start.user_id is not None and start.user_id != claims.subject:
            raise ConversationOver.failed("unauthorized", "the start's user_id is not the client token's subject "
                                          "(the token says who the user is; leave user_id out)")
        update["user_id"] = claims.subject
    return start.model_copy(update=update) if update else start


def grant_of(claims: TokenClaims | None) -> Grant | None:
    """What a verified token allows the conversation."""
    if claims is None:
        return None
    return Grant(max_duration=claims.max_duration, overrides=claims.overrides, subject=claims.subject or None)


async def read_opening(browser: BrowserSocket, decision: HandshakeDecision, gate: Gate, pending: PendingPool,
                       up: Upstreams, *, resumable: bool = False) -> Opening | bp.Resume:
    """Hold a pre-start slot while the socket's `start` is read (RELAY_START_TIMEOUT) and its token verified; with
    `resumable`, a first frame `resume` is returned as it is (read under the same slot, time-out and size bound; its
    resume token is checked by `relay.server.resuming`, and it spends no token use). Raises ConversationOver
    (`timeout`, `protocol_error`, `unauthorized`) or AdmissionRefused (`capacity`: too many waiting sockets from this
    client, or this one pushed out by a newer one; `shutdown`)."""
    with pending.hold(decision.client) as slot:
        with slot:
            first = await receive_start(browser, up.settings, resumable=resumable)
            if isinstance(first, bp.Resume):
                return first
            start = first
            claims = decision.claims
            if decision.check_start:
                try:
                    claims = await gate.verify(start.token)
                except TokenError as exc:
                    raise ConversationOver.failed("unauthorized", str(exc)) from None
            start = with_identity(start, claims, up.settings)
        if slot.cancelled_caught:
            if pending.was_pushed_out(slot):
                raise AdmissionRefused(PUSHED_OUT, why="pre_start")
            raise AdmissionRefused("the relay is shutting down; try again shortly", "shutdown", "shutdown")
    return Opening(start, decision.client if claims is None else identity(claims, decision.client), claims,
                   decision.client)


@dataclass(frozen=True)
class ResumeDoor:
    """How a connection goes on with resuming on (RELAY_RESUME_WINDOW > 0; `relay.server.resuming`): `resume` hands
    the socket to the held conversation its `resume` names; `start(socket, subject, converse)` runs a new one in the
    app's nursery, `converse(link, browser_left)` being the conversation itself (seat, token use and all)."""

    resume: Callable[[BrowserSocket, bp.Resume], Awaitable[None]]
    start: Callable[[BrowserSocket, str | None, Callable[[BrowserSocket, Callable[[], bool]], Awaitable[None]]],
                    Awaitable[None]]


@dataclass
class Doorway:
    """Everything the way in needs, made once per app: `serve` runs one socket from its handshake decision to its
    close."""

    gate: Gate
    registry: Registry
    pending: PendingPool
    metrics: RelayMetrics
    uses: TokenUses
    roster: Roster | None = None  # the live conversations an operator lists and ends (relay.server.admin)

    async def serve(self, browser: BrowserSocket, decision: HandshakeDecision, up: Upstreams, *,
                    browser_left: Callable[[], bool] | None = None, resuming: ResumeDoor | None = None) -> None:
        """Read the opening, take a seat, hold the conversation; any refusal is told to the browser. Cancelled when
        the browser leaves (the conversation's own cleanup runs then, as in `run_conversation`). With `resuming`, a
        first frame `resume` goes to `resuming.resume` — no new seat, no token use (a resume is the same
        conversation) — and a new conversation runs through `resuming.start`."""
        try:
            if decision.over_rate:
                raise AdmissionRefused(OVER_RATE, why="start_rate")
            if self.registry.shutting_down:  # at once, not after a `start` it would refuse anyway
                raise AdmissionRefused("the relay is shutting down; try again shortly", "shutdown", "shutdown")
            try:
                opening = await read_opening(browser, decision, self.gate, self.pending, up,
                                             resumable=resuming is not None)
            except ConversationOver as refused:
                self.metrics.conversation_refused(refused.reason)
                log.info("conversation refused before start: %s client=%s", refused.message, decision.client)
                await tell_browser_and_close(browser, refused)
                return
        except AdmissionRefused as exc:
            await self._refuse(browser, exc)
            return
        if isinstance(opening, bp.Resume):
            assert resuming is not None
            await resuming.resume(browser, opening)
            return
        if opening.claims is not None and decision.claims is None:
            log.info("client token accepted client=%s", opening.client)
        if resuming is None:
            await self._hold(browser, opening, up, browser_left)
            return
        held = opening

        async def converse(link: BrowserSocket, gone: Callable[[], bool]) -> None:
            await self._hold(link, held, up, gone)

        await resuming.start(browser, None if opening.claims is None else opening.client, converse)

    async def _hold(self, browser: BrowserSocket, opening: Opening, up: Upstreams,
                    browser_left: Callable[[], bool] | None) -> None:
        """Take a seat and one of the token's uses, and run the conversation until it ends."""
        claims, settings = opening.claims, up.settings
        try:
            async with self.registry.admit(opening.client) as shutdown_scope, token_use(
                    self.uses, None if claims is None else claims.use_key,
                    0.0 if claims is None else claims.expires + settings.relay_auth_leeway,
                    (claims and claims.max_conversations) or settings.relay_token_max_conversations):
                with nullcontext() if self.roster is None else self.roster.seat(
                        shutdown_scope, opening.address, None if claims is None else claims.subject, browser):
                    await run_conversation(browser, up, shutdown_scope, start=opening.start,
                                           grant=grant_of(claims), browser_left=browser_left)
        except AdmissionRefused as exc:
            await self._refuse(browser, exc)

    async def _refuse(self, browser: BrowserSocket, exc: AdmissionRefused) -> None:
        self.metrics.conversation_refused(exc.code)
        self.metrics.admission_refused(exc.why)
        log.info("conversation refused: %s", exc)
        await tell_browser_and_close(browser, ConversationOver.failed(exc.code, str(exc)))
