"""The closed vocabularies the relay speaks, as `Literal` types so `mypy --strict` checks every use.

Plain strings on the wire (docs/protocol.md); one alias per vocabulary here, re-exported where it belongs
(`relay.protocol.browser`, `relay.avatars`). Enums are kept for things that have a state; these are only names.
"""

from __future__ import annotations

from typing import Literal

# `error.code` for the browser; `CLOSE_CODE_FOR_ERROR` (relay.protocol.browser) maps each to its close code.
ErrorCode = Literal["protocol_error", "unauthorized", "capacity", "upstream_unavailable", "agent_error", "timeout",
                    "shutdown", "internal", "agent_refused", "agent_busy", "resume_failed"]

# `ended.reason`: an error code when the conversation failed, or one of the normal endings.
# `client_gone` never reaches a browser (none is there): the record's reason when it left first, or did not come back
# within RELAY_RESUME_WINDOW. `admin`: an operator ended it (`POST /admin/conversations/<id>/end`).
EndReason = ErrorCode | Literal["client_stop", "agent_ended", "max_duration", "client_gone", "admin"]

# `AvatarUnavailable.reason`: why no avatar session could be opened.
# `capacity`: the relay's own budget of avatar sessions (RELAY_MAX_AVATAR_SESSIONS) is used up; no call was made.
UnavailableReason = Literal["concurrent_limit", "capacity", "unauthorized", "no_credits", "rate_limited",
                            "upstream_error", "timeout", "bad_config"]

# `AvatarSessionEnded.reason`: a running session ended on the provider's side (gone by its answer, or its socket
# closed).
SessionEndedReason = Literal["session_gone", "session_ended"]

# `avatar_unavailable.reason` for the browser: a refusal, or "session_ended" for a session that died.
AvatarUnavailableReason = UnavailableReason | Literal["session_ended"]

# `AgentUnavailable.reason`: why no conversation with the ElevenLabs agent could be started.
AgentUnavailableReason = Literal["unauthorized", "not_found", "rate_limited", "upstream_error", "timeout",
                                 "rejected"]
