"""Where one conversation's `client_metrics` reports go: through its `ReportGate`, then to the process's hook.

The browser pump hands each report (or the reason one is dropped: `relay.protocol.client_metrics`) to
`ClientReports.take`; a report that comes too soon after the others is dropped as `too_frequent`; each dropped one
is logged (the first few of a conversation, then every hundredth: a hostile page cannot flood the log either) and,
like each taken one, passed to the hook (`ConversationHooks.on_client_metrics`: the metrics' histograms and drop
counter, and whatever else the process connects there, e.g. the turn's trace span). Inline, never blocks, never
raises into the conversation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from relay.conversation.record import ConversationRecord
from relay.protocol.client_metrics import ClientMetrics, DroppedClientMetrics, ReportGate

log = logging.getLogger("relay.conversation")

LOGGED_DROPS = 5  # drops of a conversation logged one by one; after them, every LOG_EVERY-th
LOG_EVERY = 100

ReportHook = Callable[[ConversationRecord, ClientMetrics | DroppedClientMetrics], None]


class ClientReports:
    """One conversation's reports: `take(report, now)` (the pump's call, `now` on any monotonic clock)."""

    def __init__(self, record: ConversationRecord, hook: ReportHook | None, gate: ReportGate | None = None) -> None:
        self._record = record
        self._hook = hook
        self._gate = gate or ReportGate()
        self.dropped = 0

    def take(self, report: ClientMetrics | DroppedClientMetrics, now: float) -> None:
        if isinstance(report, ClientMetrics) and not self._gate.take(now):
            report = DroppedClientMetrics("too_frequent", "more reports than the relay takes "
                                          "(relay.protocol.client_metrics.ReportGate)")
        if isinstance(report, DroppedClientMetrics):
            self.dropped += 1
            if self.dropped <= LOGGED_DROPS or self.dropped % LOG_EVERY == 0:
                log.info("client_metrics dropped reason=%s detail=%s dropped_so_far=%d", report.reason,
                         report.detail or "-", self.dropped)
        if self._hook is not None:
            self._hook(self._record, report)
