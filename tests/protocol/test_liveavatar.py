"""LiveAvatar REST protocol without sockets: request bodies, the envelope, refusals -> AvatarUnavailable."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from relay.avatars.common import is_simulated
from relay.config import Settings
from relay.liveavatar import (
    avatar_info,
    to_unavailable,
    token_request_body,
)
from relay.protocol.liveavatar import (
    SANDBOX_AVATAR_ID,
    ApiError,
    active_session_ids,
    parse_start_answer,
    parse_token_answer,
    read_answer,
    stop_request_body,
)

SECRET = "la-secret-key-do-not-leak"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"elevenlabs_agent_id": "agent", "liveavatar_api_key": SecretStr(SECRET),
                              "liveavatar_avatar_id": "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def body(payload: object) -> bytes:
    return orjson.dumps(payload)


def refusal(status: int, payload: object, retry_after: str | None = None) -> ApiError:
    with pytest.raises(ApiError) as caught:
        read_answer(status, body(payload), retry_after=retry_after)
    return caught.value


# -- request bodies --------------------------------------------------------------------------------------


def test_token_body_asks_for_a_lite_session_with_the_configured_avatar_and_video() -> None:
    assert token_request_body(settings(liveavatar_quality="medium", liveavatar_max_session_duration=300,
                                       relay_max_duration=300)) == {
        "mode": "LITE",
        "avatar_id": "6f1c1a52-9f0e-4d0c-8a51-2f6f0a3b1c01",
        "is_sandbox": False,
        "video_settings": {"quality": "medium", "encoding": "H264"},
        "max_session_duration": 300,
    }


def test_sandbox_without_an_avatar_id_uses_the_sandbox_avatar() -> None:
    request = token_request_body(settings(liveavatar_avatar_id=None, liveavatar_sandbox=True))
    assert request["avatar_id"] == SANDBOX_AVATAR_ID
    assert request["is_sandbox"] is True


def test_the_token_body_never_contains_the_api_key() -> None:
    assert SECRET not in orjson.dumps(token_request_body(settings())).decode()


def test_stop_body_carries_the_reason_and_refuses_unknown_reasons() -> None:
    assert stop_request_body("s1", "USER_DISCONNECTED") == {"session_id": "s1", "reason": "USER_DISCONNECTED"}
    with pytest.raises(ValueError):
        stop_request_body("s1", "BORED")


# -- the envelope ----------------------------------------------------------------------------------------


def test_success_is_code_1000_and_gives_data() -> None:
    assert read_answer(200, body({"code": 1000, "data": {"a": 1}, "message": "ok"})) == {"a": 1}


def test_start_succeeds_with_201() -> None:
    answer = body({"code": 1000, "data": {"x": 1}, "message": "ok"})
    assert read_answer(201, answer, success_statuses=(200, 201)) == {"x": 1}


def test_http_200_with_another_code_is_a_failure() -> None:
    # openapi's default of 100 is wrong; the web SDK rejects anything but 1000 even on 2xx.
    error = refusal(200, {"code": 100, "data": None, "message": "Success"})
    assert error.code == 100
    assert to_unavailable(error).reason == "upstream_error"


def test_an_unexpected_success_status_is_a_failure() -> None:
    with pytest.raises(ApiError):
        read_answer(202, body({"code": 1000, "data": None}))


def test_a_422_detail_list_becomes_a_bad_config_naming_the_fields() -> None:
    error = refusal(422, {"detail": [{"loc": ["body", "avatar_id"], "msg": "Field required", "type": "missing"},
                                     {"loc": ["body", "mode"], "msg": "Input should be 'LITE'", "type": "enum"}]})
    unavailable = to_unavailable(error)
    assert unavailable.reason == "bad_config"
    assert "avatar_id: Field required" in unavailable.message
    assert "mode" in unavailable.message


def test_401_error_object_means_unauthorized() -> None:
    error = refusal(401, {"error": "bad api key"})
    assert error.message == "bad api key"
    unavailable = to_unavailable(error)
    assert unavailable.reason == "unauthorized"
    assert SECRET not in unavailable.message


@pytest.mark.parametrize(("status", "payload"), [
    (403, {"code": 4033, "data": None, "message": "Insufficient credits"}),
    (400, {"code": 4033, "data": None, "message": "Insufficient credits"}),
    (403, {"message": "Forbidden"}),
])
def test_no_credits_is_recognised_by_code_4033_or_http_403(status: int, payload: object) -> None:
    assert to_unavailable(refusal(status, payload)).reason == "no_credits"


def test_429_with_retry_after_is_rate_limited_and_retryable() -> None:
    error = refusal(429, {"code": 4290, "data": None, "message": "Too many requests"}, retry_after="7")
    assert error.retryable
    unavailable = to_unavailable(error)
    assert unavailable.reason == "rate_limited"
    assert unavailable.retry_after == 7.0


@pytest.mark.parametrize("payload", [
    {"code": 4029, "data": None, "message": "Limit"},
    {"code": 4000, "data": None, "message": "Concurrent session limit reached"},
])
def test_a_concurrency_refusal_is_concurrent_limit_and_not_retried(payload: object) -> None:
    error = refusal(429, payload)
    assert not error.retryable
    assert to_unavailable(error).reason == "concurrent_limit"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_an_upstream_error_and_retryable(status: int) -> None:
    error = refusal(status, {"code": 4000, "message": "Session start failed"})
    assert error.retryable
    unavailable = to_unavailable(error)
    assert unavailable.reason == "upstream_error"
    assert unavailable.upstream_code == 4000


def test_504_is_a_timeout() -> None:
    assert to_unavailable(refusal(504, {"message": "gateway timeout"})).reason == "timeout"


def test_other_4xx_are_configuration_problems_and_not_retried() -> None:
    error = refusal(404, {"code": 4004, "data": None, "message": "Avatar not found"})
    assert not error.retryable
    assert to_unavailable(error).reason == "bad_config"


@pytest.mark.parametrize("raw", [b"", b"<html>502</html>", b"[1,2]"])
def test_non_json_or_non_object_answers_are_failures(raw: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        read_answer(502, raw)
    assert to_unavailable(caught.value).reason == "upstream_error"


def test_long_upstream_messages_are_shortened() -> None:
    error = refusal(500, {"code": 5000, "message": "x" * 5000})
    assert len(error.message) <= 200


# -- answers ---------------------------------------------------------------------------------------------


def test_token_answer_needs_an_id_and_a_token() -> None:
    answer = parse_token_answer({"session_id": "s1", "session_token": "tok"})
    assert (answer.session_id, answer.session_token) == ("s1", "tok")
    with pytest.raises(ApiError):
        parse_token_answer({"session_id": "s1"})
    with pytest.raises(ApiError):
        parse_token_answer(None)


START = {"session_id": "s1", "livekit_url": "wss://room.livekit.cloud", "livekit_client_token": "client",
         "livekit_agent_token": "agent", "max_session_duration": 600, "ws_url": "wss://ws.example/v1/ws?token=t"}


def test_start_answer_gives_the_browser_the_client_token_and_never_the_agent_token() -> None:
    info = avatar_info(parse_start_answer(START, "s1"))
    assert info.provider == "liveavatar"
    assert info.session_id == "s1"
    assert info.livekit_url == "wss://room.livekit.cloud"
    assert info.access_token == "client"
    assert info.simulated is False
    assert "agent" not in repr(info).replace("liveavatar", "")


def test_start_answer_without_ws_url_is_refused() -> None:
    with pytest.raises(ApiError):
        parse_start_answer({**START, "ws_url": None}, "s1")


def test_simulated_only_when_the_livekit_host_is_on_the_invalid_tld() -> None:
    assert is_simulated("wss://livekit.simulated.invalid")
    assert is_simulated("wss://livekit.simulated.invalid:443/x")
    assert not is_simulated("wss://invalid.livekit.cloud")
    assert not is_simulated("not a url")


def test_session_listing_reads_ids_and_whether_more_pages_follow() -> None:
    data = {"count": 3, "next": "/v1/sessions?page=2", "previous": None,
            "results": [{"id": "a"}, {"id": "b"}, {"no_id": 1}]}
    assert active_session_ids(data) == (["a", "b"], True)
    assert active_session_ids({"count": 0, "next": None, "results": []}) == ([], False)
