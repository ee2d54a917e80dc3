"""HeyGen Streaming v1, sans-io: request bodies, the answer envelope, and what each failure means.

No sockets: these drive the plain functions of `relay.heygen` directly, exhaustively over the codes and
forms listed in `reference/heygen-streaming-v1.md` (⚠ forms included).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from relay.avatars import AvatarSessionEnded, AvatarUnavailable
from relay.avatars.common import is_simulated
from relay.config import Settings
from relay.heygen import (
    keep_alive_interval,
    new_session_body,
    to_session_ended,
    to_unavailable,
)
from relay.protocol.heygen import (
    ApiError,
    HeyGenFailure,
    is_retryable,
    is_session_gone,
    list_params,
    parse_new_session,
    parse_task,
    read_answer,
    redact,
    session_body,
    session_id_of,
    task_body,
    unavailable_message,
    unavailable_reason,
)

KEY = "hg-secret-key-abcdef0123456789"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"elevenlabs_agent_id": "agent", "relay_avatar": "heygen",
                              "heygen_api_key": SecretStr(KEY), "heygen_avatar_id": "Wayne_20240711"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def body(payload: Any) -> bytes:
    return orjson.dumps(payload)


def failure_of(status: int, payload: Any, retry_after: str | None = None) -> HeyGenFailure:
    with pytest.raises(ApiError) as raised:
        read_answer(status, body(payload) if payload is not None else b"", retry_after)
    return raised.value.failure


# -- request bodies --------------------------------------------------------------------------------------------


def test_new_session_body_has_every_field_the_relay_needs() -> None:
    assert new_session_body(settings(heygen_voice_id="v-1", heygen_quality="high", heygen_idle_timeout=300)) == {
        "quality": "high",
        "avatar_id": "Wayne_20240711",
        "avatar_name": "Wayne_20240711",
        "voice": {"voice_id": "v-1"},
        "version": "v2",
        "video_encoding": "H264",
        "activity_idle_timeout": 300,
    }


def test_new_session_body_leaves_out_voice_and_avatar_when_not_configured() -> None:
    body_ = new_session_body(Settings(_env_file=None))  # type: ignore[call-arg]
    assert "voice" not in body_
    assert "avatar_id" not in body_ and "avatar_name" not in body_
    assert body_["quality"] == "medium"
    assert body_["activity_idle_timeout"] == 120
    assert body_["version"] == "v2"


def test_new_session_body_never_holds_the_key() -> None:
    assert KEY not in orjson.dumps(new_session_body(settings())).decode()


def test_session_calls_send_only_the_session_id() -> None:
    assert session_body("abc") == {"session_id": "abc"}


def test_task_body_repeats_the_text_verbatim_without_waiting_for_speech() -> None:
    assert task_body("abc", "Hello, world.") == {"session_id": "abc", "text": "Hello, world.",
                                                  "task_type": "repeat", "task_mode": "async"}


def test_list_params_carry_the_pagination_token_only_when_there_is_one() -> None:
    assert list_params(1, 100, None) == {"page": 1, "page_size": 100}
    assert list_params(2, 50, "tok") == {"page": 2, "page_size": 50, "token": "tok"}


# -- the envelope ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [100, "100", "SUCCESS", "success"])
def test_success_envelope_yields_its_data(code: object) -> None:
    assert read_answer(200, body({"code": code, "message": "success", "data": {"x": 1}})) == {"x": 1}


def test_create_token_envelope_with_null_error_yields_its_data() -> None:
    assert read_answer(200, body({"error": None, "data": {"token": "t"}})) == {"token": "t"}


@pytest.mark.parametrize("payload", [{"code": 100, "message": "success"}, {"code": 100, "data": None}])
def test_success_without_data_is_an_empty_dict(payload: dict[str, Any]) -> None:
    assert read_answer(200, body(payload)) == {}


def test_list_data_is_returned_as_is() -> None:
    assert read_answer(200, body({"code": 100, "data": [{"avatar_id": "a"}]})) == [{"avatar_id": "a"}]


def test_a_2xx_with_an_error_code_is_an_error() -> None:
    failure = failure_of(200, {"code": 10007, "message": "concurrent limit reached"})
    assert (failure.status, failure.code, failure.message) == (200, 10007, "concurrent limit reached")


def test_a_2xx_with_an_error_object_is_an_error() -> None:
    failure = failure_of(200, {"error": {"code": 40102, "message": "Unauthorized"}, "data": None})
    assert (failure.code, failure.message) == (40102, "Unauthorized")


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]"])
def test_a_2xx_that_is_not_a_json_object_is_an_error(raw: bytes) -> None:
    with pytest.raises(ApiError) as raised:
        read_answer(200, raw)
    assert raised.value.failure.status == 200


def test_any_non_2xx_is_an_error_even_with_a_success_body() -> None:
    failure = failure_of(500, {"code": 100, "message": "success", "data": {}})
    assert failure.status == 500


def test_error_answer_carries_status_code_message_and_retry_after() -> None:
    failure = failure_of(429, {"code": 400123, "message": "exceed rate limit"}, retry_after="2")
    assert failure == HeyGenFailure(429, 400123, "exceed rate limit", 2.0)


def test_string_error_codes_are_read_as_numbers() -> None:
    assert failure_of(400, {"code": "10007", "message": "x"}).code == 10007


def test_unsupported_media_type_detail_is_read_as_the_message() -> None:
    detail = "Unsupported media type '' in request. 'application/json' is required."
    failure = failure_of(415, {"detail": detail})
    assert (failure.code, failure.message) == (None, detail)


def test_error_without_a_body_is_named_by_its_status() -> None:
    failure = failure_of(502, None)
    assert (failure.status, failure.code, failure.message) == (502, None, "HTTP 502")


# -- answers -------------------------------------------------------------------------------------------------


NEW_DATA = {
    "session_id": "sid", "url": "wss://livekit.simulated.invalid", "access_token": "lk",
    "session_duration_limit": 600, "is_paid": True, "realtime_endpoint": "ws://h/v1/realtime/sid?token=t",
    "livekit_agent_token": "agent", "sdp": None, "ice_servers": None,
}


def test_new_session_answer_is_parsed() -> None:
    new = parse_new_session(NEW_DATA)
    assert (new.session_id, new.url, new.access_token) == ("sid", "wss://livekit.simulated.invalid", "lk")
    assert new.realtime_endpoint == "ws://h/v1/realtime/sid?token=t"
    assert (new.session_duration_limit, new.is_paid) == (600, True)


@pytest.mark.parametrize("missing", ["session_id", "url", "access_token"])
def test_new_session_answer_missing_a_required_field_is_refused(missing: str) -> None:
    data = {k: v for k, v in NEW_DATA.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        parse_new_session(data)


def test_session_id_is_found_even_when_the_rest_of_the_answer_is_malformed() -> None:
    assert session_id_of({"session_id": "sid"}) == "sid"
    assert session_id_of({"session_id": ""}) is None
    assert session_id_of(None) is None


def test_optional_new_session_fields_may_be_missing() -> None:
    new = parse_new_session({"session_id": "s", "url": "wss://x", "access_token": "t"})
    assert (new.realtime_endpoint, new.session_duration_limit, new.is_paid) == (None, None, None)


def test_task_answer_is_parsed_and_missing_fields_are_none() -> None:
    accepted = parse_task({"duration_ms": 1234.0, "task_id": "t1"})
    assert (accepted.task_id, accepted.duration_ms) == ("t1", 1234)
    assert parse_task({}) == parse_task(None)
    assert parse_task({"duration_ms": -5}).duration_ms is None
    assert parse_task({"duration_ms": True}).duration_ms is None


@pytest.mark.parametrize(
    ("url", "simulated"),
    [("wss://livekit.simulated.invalid", True), ("wss://x.invalid:443/rtc", True),
     ("wss://heygen-feapbkvq.livekit.cloud", False), ("wss://invalid.example.com", False)],
)
def test_a_livekit_url_on_the_invalid_tld_is_simulated(url: str, simulated: bool) -> None:
    assert is_simulated(url) is simulated


def test_keep_alive_interval_stays_below_half_the_idle_timeout() -> None:
    assert keep_alive_interval(settings(relay_keep_alive_interval=60, heygen_idle_timeout=300)) == 60
    assert keep_alive_interval(settings(relay_keep_alive_interval=60, heygen_idle_timeout=30)) == 15


# -- what a failure means ------------------------------------------------------------------------------------

REASONS = [
    (HeyGenFailure(400, 10007, "concurrent limit reached"), "concurrent_limit"),
    (HeyGenFailure(400, 10014, "session full"), "concurrent_limit"),
    (HeyGenFailure(401, 40102, "Unauthorized"), "unauthorized"),
    (HeyGenFailure(401, None, "HTTP 401"), "unauthorized"),
    (HeyGenFailure(400, 40102, "Unauthorized"), "unauthorized"),
    (HeyGenFailure(403, None, "Forbidden"), "unauthorized"),
    (HeyGenFailure(429, None, "HTTP 429", 3.0), "rate_limited"),
    (HeyGenFailure(400, 400123, "exceed rate limit"), "rate_limited"),
    (HeyGenFailure(400, 10015, "trial API limit reached"), "no_credits"),
    (HeyGenFailure(402, None, "Payment Required"), "no_credits"),
    (HeyGenFailure(400, 10012, "avatar not found"), "bad_config"),
    (HeyGenFailure(400, 10013, "avatar not allowed"), "bad_config"),
    (HeyGenFailure(400, 400014, "avatar version is deprecated, please update to v3+"), "bad_config"),
    (HeyGenFailure(400, 10003, "avatar version is deprecated, please update to v3+"), "bad_config"),
    (HeyGenFailure(404, None, "Not Found"), "bad_config"),
    (HeyGenFailure(410, None, "Gone"), "bad_config"),
    (HeyGenFailure(404, 404, "Not Found"), "bad_config"),
    (HeyGenFailure(401, 400112, "This avatar or voice is not allowed for streaming"), "bad_config"),
    (HeyGenFailure(403, 400599, "Your account doesn't have API access"), "unauthorized"),
    (HeyGenFailure(400, 400599, "Your account doesn't have API access"), "unauthorized"),
    (HeyGenFailure(400, 10003, "session state wrong: connected"), "upstream_error"),
    (HeyGenFailure(400, 10001, "session state wrong: new"), "upstream_error"),
    (HeyGenFailure(400, 400004, "Session does not exist. SessionID: x"), "upstream_error"),
    (HeyGenFailure(500, None, "HTTP 500"), "upstream_error"),
    (HeyGenFailure(503, 503, "service unavailable"), "upstream_error"),
    (HeyGenFailure(415, None, "Unsupported media type"), "upstream_error"),
    (HeyGenFailure(200, None, "the answer was not a JSON object"), "upstream_error"),
    (HeyGenFailure(None, None, "ConnectError"), "upstream_error"),
    (HeyGenFailure(None, None, "ReadTimeout", timed_out=True), "timeout"),
]


@pytest.mark.parametrize(("failure", "reason"), REASONS, ids=[f"{f.status}-{f.code}" for f, _ in REASONS])
def test_each_failure_maps_to_its_unavailable_reason(failure: HeyGenFailure, reason: str) -> None:
    assert unavailable_reason(failure) == reason
    error = to_unavailable(failure, "streaming.new")
    assert isinstance(error, AvatarUnavailable)
    assert error.reason == reason
    assert "streaming.new" in error.message


def test_unavailable_keeps_the_upstream_code_and_retry_after() -> None:
    error = to_unavailable(HeyGenFailure(429, 400123, "exceed rate limit", 7.0), "streaming.new")
    assert (error.upstream_code, error.retry_after) == (400123, 7.0)
    assert to_unavailable(HeyGenFailure(502, None, "HTTP 502"), "streaming.new").upstream_code == 502


GONE = [
    (HeyGenFailure(400, 10004, "session state wrong: closing"), True),
    (HeyGenFailure(400, 10005, "session state wrong: closed"), True),
    (HeyGenFailure(400, 10006, "session not found"), True),
    (HeyGenFailure(400, 400004, "Session does not exist. SessionID: x"), True),
    (HeyGenFailure(400, 99999, "Session does not exist. SessionID: x"), True),
    (HeyGenFailure(400, None, "session state wrong: closed"), True),
    (HeyGenFailure(400, 10001, "session state wrong: new"), False),
    (HeyGenFailure(400, 10002, "session state wrong: connecting"), False),
    (HeyGenFailure(400, 10003, "session state wrong: connected"), False),
    (HeyGenFailure(400, 10003, "avatar version is deprecated"), False),
    (HeyGenFailure(400, 10007, "concurrent limit reached"), False),
    (HeyGenFailure(429, 400123, "exceed rate limit"), False),
    (HeyGenFailure(500, None, "session not found"), False),
    (HeyGenFailure(None, None, "ReadTimeout", timed_out=True), False),
]


@pytest.mark.parametrize(("failure", "gone"), GONE, ids=[f"{f.status}-{f.code}-{f.message}" for f, _ in GONE])
def test_session_gone_is_recognised_by_code_or_message(failure: HeyGenFailure, gone: bool) -> None:
    assert is_session_gone(failure) is gone


def test_session_ended_names_the_session_and_the_code() -> None:
    error = to_session_ended(HeyGenFailure(400, 10005, "session state wrong: closed"), "sid-1")
    assert isinstance(error, AvatarSessionEnded)
    assert "sid-1" in error.message
    assert error.upstream_code == 10005


RETRYABLE = [
    (HeyGenFailure(429, None, "HTTP 429", 1.0), True),
    (HeyGenFailure(400, 400123, "exceed rate limit"), True),
    (HeyGenFailure(500, None, "HTTP 500"), True),
    (HeyGenFailure(503, 503, "unavailable"), True),
    (HeyGenFailure(None, None, "ConnectError"), True),
    (HeyGenFailure(None, None, "ReadTimeout", timed_out=True), True),
    (HeyGenFailure(400, 10005, "session state wrong: closed"), False),
    (HeyGenFailure(401, 40102, "Unauthorized"), False),
    (HeyGenFailure(400, 10007, "concurrent limit reached"), False),
    (HeyGenFailure(404, None, "Not Found"), False),
]


@pytest.mark.parametrize(("failure", "retry"), RETRYABLE, ids=[f"{f.status}-{f.code}" for f, _ in RETRYABLE])
def test_only_transient_failures_are_retried(failure: HeyGenFailure, retry: bool) -> None:
    assert is_retryable(failure) is retry


def test_redact_removes_the_key_from_any_text() -> None:
    assert redact(f"GET https://x/?k={KEY} failed", KEY) == "GET https://x/?k=[redacted] failed"
    assert redact("nothing secret", KEY) == "nothing secret"
    assert redact("abc", None) == "abc"


def test_error_messages_built_from_a_failure_never_hold_the_key() -> None:
    failure = HeyGenFailure(401, 40102, "Unauthorized")
    for error in (to_unavailable(failure, "streaming.new"), ApiError(failure)):
        assert KEY not in str(error)


@pytest.mark.parametrize(("failure", "words"), [
    (HeyGenFailure(401, 400112, "not allowed for streaming"), ["not enabled for streaming", "HEYGEN_AVATAR_ID"]),
    (HeyGenFailure(403, 400599, "Your account doesn't have API access"), ["no API access", "LiveAvatar"]),
    (HeyGenFailure(404, None, "Not Found"), ["retired", "2026-03-31", "LiveAvatar"]),
    (HeyGenFailure(410, None, "Gone"), ["retired", "LiveAvatar"]),
])
def test_an_unentitled_or_retired_account_is_told_what_it_means_not_that_the_key_is_bad(
        failure: HeyGenFailure, words: list[str]) -> None:
    message = unavailable_message(failure, "streaming.new")
    for word in words:
        assert word in message
    assert "rejected the API key" not in message
