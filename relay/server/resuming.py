"""`/ws` with resuming on (RELAY_RESUME_WINDOW > 0): a conversation runs in the app's nursery, not in the handler of
the connection that started it, so a dropped connection does not end it; its `BrowserLink` is what it talks to.
`serve_connection` is a connection that starts one; `resume_connection` one whose first frame is `resume`.

The conversation (seat, upstreams, avatar) is exactly what `relay.nursery.run_conversation` holds; the link's scope
around it is what ends it when the browser is gone for good (a clean close, or the window passing).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from socket import gethostname
from typing import TYPE_CHECKING

import trio

from relay.conversation.endings import BrowserSocket, ConversationOver, tell_browser_and_close
from relay.conversation.link import BrowserLink
from relay.protocol import browser as bp
from relay.protocol.resume import ResumeRefused
from relay.server.resume import HeldTable, Hold

if TYPE_CHECKING:
    from relay.server.state import RelayState

log = logging.getLogger("relay.web")


def held_table(state: RelayState) -> HeldTable | None:
    """The process's table of resumable conversations, None with RELAY_RESUME_WINDOW=0. Its route names this relay
    (RELAY_RESUME_ROUTE, else its fleet id with RELAY_REDIS_URL, else a random id) and, under `serve --workers N`,
    the worker: `<relay>-w<index>`, the relay part shared by every worker (RELAY_RESUME_ROUTE, else the host and the
    supervisor's private directory's random name), so that each knows the others' routes (`siblings`); under
    hypercorn's own workers, this process (`-p<pid in hex>`): docs/deploy.md "Resuming behind a proxy"."""
    settings = state.settings
    if settings.relay_resume_window <= 0:
        return None
    worker = state.worker
    if settings.relay_resume_route:
        base = settings.relay_resume_route
    elif worker is not None:
        base = f"{gethostname()[:24]}-{Path(worker.directory).name.rsplit('-', 1)[-1]}"
    else:
        base = state.fleet.relay_id if state.fleet is not None else "r" + secrets.token_hex(4)
    if worker is None and multiprocessing.parent_process() is not None:  # one of hypercorn's own workers (`hypercorn
        base += f"-p{os.getpid():x}"  # -w N`): they share the route otherwise, and the other's token reads as forged

    def route_of(index: int | None) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "-", base if index is None else f"{base}-w{index}")[-64:]

    table = HeldTable(route_of(None if worker is None else worker.index), settings.relay_resume_window,
                      lifetime=settings.relay_max_duration + settings.relay_resume_window)
    if worker is not None:
        table.siblings = {route_of(index): index for index in range(worker.count) if index != worker.index}
    return table


async def serve_connection(state: RelayState, nursery: trio.Nursery, socket: BrowserSocket, subject: str | None,
                           converse: Callable[[BrowserSocket, Callable[[], bool]], Awaitable[None]],
                           left_cleanly: Callable[[], bool | None]) -> None:
    """Start a conversation on `socket` (whose `start` the doorway has read and verified: `relay.server.opening`) in
    `nursery`, and serve it until it ends or another connection takes it over. `converse(link, browser_left)` runs
    the conversation (seat, token use and all); `subject` is who started it (a client token's identity), whom a
    resume must come from too. Cancelled when the connection ends: `left_cleanly()` (True for the browser's close
    1000, None when the browser did not leave: the server cut the connection) says whether the conversation is
    held."""
    table = state.held
    assert table is not None
    link = BrowserLink(table.window, state.settings.relay_send_timeout, lambda: table.issue(hold))
    link.subject = subject
    hold = Hold(link)
    connection = socket
    link.attach_first(connection)

    async def conversation() -> None:
        try:
            with link.scope:
                await converse(link, link.gone)
        except Exception:  # never out into the app's nursery: that would end the server
            log.exception("internal error around a conversation")
        finally:
            table.end(hold, expired=link.held and link.scope.cancelled_caught)  # not when cut while held (admin)
            link.finish()

    nursery.start_soon(conversation)
    await _serve(link, connection, left_cleanly, state.settings.relay_stop_timeout)


async def _serve(link: BrowserLink, connection: BrowserSocket, left_cleanly: Callable[[], bool | None],
                 stop_timeout: float) -> None:
    try:
        await link.serve(connection)
    except BaseException:
        clean = left_cleanly()
        if clean is None:  # the server cut this connection (hypercorn's grace period): the browser is told why
            link.scope.cancel()
            with trio.move_on_after(stop_timeout + 2, shield=True):
                await link.ended.wait()
        else:
            link.connection_lost(connection, clean=clean)
        raise


async def resume_connection(state: RelayState, socket: BrowserSocket, resume: bp.Resume, subject: str | None,
                            left_cleanly: Callable[[], bool | None], *, relayed: bool = False) -> None:
    """Hand `socket` to the conversation `resume` names, and serve it as `serve_connection` does; a resume that
    cannot be honoured is answered `resume_failed` (reason), `ended`, close 1008. Under `serve --workers N` a
    resume for a conversation another worker holds is relayed there (`relay.server.handover`; `relayed`: this
    connection was relayed here by another worker, and goes no further)."""
    table = state.held
    try:
        if table is None:
            raise ResumeRefused("unknown", "this relay does not resume conversations")
        sibling = None if relayed else table.sibling_holding(resume.resume_token)
        if sibling is not None and state.worker is not None:
            from relay.server.handover import relay_resume

            log.info("resume for worker %d: relaying the connection there", sibling)
            if state.metrics is not None:
                state.metrics.resume_handovers.inc()
            await relay_resume(state.worker.handover_socket(sibling), socket, resume, subject, left_cleanly,
                               state.settings.relay_max_frame_bytes)
            return
        hold = table.claim(resume.resume_token, subject)
        link = hold.link

        def resumed(token: str, seq: int) -> str:
            return bp.resumed(conversation_id=link.conversation_id or "", resume_token=token, seq=seq)

        try:
            await link.take_over(socket, resume.last_seq, resumed)
        except ResumeRefused:
            link.give_up()  # its token is used up and what the browser missed is lost: nobody can come back
            raise
    except ResumeRefused as refused:
        log.info("resume refused reason=%s", refused.reason)
        if state.metrics is not None:
            state.metrics.conversation_refused("resume_failed")
        await tell_browser_and_close(socket, ConversationOver.failed("resume_failed", refused.message,
                                                                     reason=refused.reason))
        return
    await _serve(link, socket, left_cleanly, state.settings.relay_stop_timeout)
