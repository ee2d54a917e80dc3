"""Simli's protocol without sockets: the token request and answers, the socket's messages, the frames of speech,
and every refusal as the relay's reason."""

from __future__ import annotations

import orjson
import pytest

from relay.protocol.simli import (
    AUDIO_FRAME_BYTES,
    KEEP_ALIVE_SILENCE,
    SIMLI_SAMPLE_RATE,
    Acknowledged,
    ApiError,
    Destination,
    JoinInfo,
    Speaking,
    Started,
    Terminated,
    TokenAnswer,
    Unknown,
    VideoMetadata,
    audio_frames,
    connect_src_allows,
    parse_server_message,
    read_session_count,
    read_token_answer,
    session_end_text,
    socket_refusal,
    socket_url,
    token_request_body,
    unavailable,
)

SECRET_TOKEN = "sess-token-do-not-leak-0123456789"


def test_the_token_body_names_the_face_both_limits_idle_video_and_pcm16() -> None:
    assert token_request_body(face_id="cace3ef7-a4c4-425d-a8cf-a5358eb0c427", max_session_length=1860,
                              max_idle_time=120) == {
        "faceId": "cace3ef7-a4c4-425d-a8cf-a5358eb0c427", "handleSilence": True, "maxSessionLength": 1860,
        "maxIdleTime": 120, "audioInputFormat": "pcm16"}


@pytest.mark.parametrize(("face", "length", "idle"), [("", 60, 30), ("f", 0, 30), ("f", 60, 0)])
def test_the_token_body_refuses_an_empty_face_or_a_limit_that_is_not_positive(face: str, length: int,
                                                                             idle: int) -> None:
    with pytest.raises(ValueError):
        token_request_body(face_id=face, max_session_length=length, max_idle_time=idle)


def test_a_200_answer_gives_the_token_and_its_repr_hides_it() -> None:
    answer = read_token_answer(200, orjson.dumps({"session_token": SECRET_TOKEN}))
    assert answer.session_token == SECRET_TOKEN
    assert SECRET_TOKEN not in repr(answer)
    assert answer.fingerprint.startswith("tok-") and len(answer.fingerprint) == 20
    assert SECRET_TOKEN not in answer.fingerprint
    assert answer.fingerprint == TokenAnswer(SECRET_TOKEN).fingerprint


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"session_token": ""}', b'{"token": "x"}'])
def test_a_200_answer_without_a_token_is_an_error(body: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        read_token_answer(200, body)
    assert caught.value.status == 200


def test_a_400_answer_keeps_the_reason_and_drops_the_fail_token() -> None:
    with pytest.raises(ApiError) as caught:
        read_token_answer(400, orjson.dumps({"session_token": SECRET_TOKEN, "detail": "INVALID_FACE_ID"}))
    assert caught.value.detail == "INVALID_FACE_ID"
    assert SECRET_TOKEN not in str(caught.value)


def test_a_422_answer_names_the_fields_not_their_values() -> None:
    detail = [{"loc": ["body", "faceId"], "msg": "Field required", "type": "missing", "input": "secret"}]
    with pytest.raises(ApiError) as caught:
        read_token_answer(422, orjson.dumps({"detail": detail}))
    assert caught.value.detail == "faceId: Field required"
    assert "secret" not in str(caught.value)


def test_retry_after_is_read_from_the_header() -> None:
    with pytest.raises(ApiError) as caught:
        read_token_answer(429, b'{"detail": "slow down"}', retry_after="7")
    assert caught.value.retry_after == 7.0


@pytest.mark.parametrize(
    ("status", "detail", "reason"),
    [
        (401, "INVALID_API_KEY", "unauthorized"),
        (400, "INVALID_API_KEY", "unauthorized"),
        (403, "", "unauthorized"),
        (400, "BILLING_ERROR", "no_credits"),
        (400, "MISSING_BILLING_INFO", "no_credits"),
        (402, "", "no_credits"),
        (400, "INVALID_FACE_ID", "bad_config"),
        (400, "INVALID_EMOTION", "bad_config"),
        (422, "faceId: Field required", "bad_config"),
        (400, "something new", "bad_config"),
        (429, "Too many concurrent sessions", "concurrent_limit"),
        (429, "slow down", "rate_limited"),
        (408, "", "timeout"),
        (504, "", "timeout"),
        (500, "", "upstream_error"),
        (503, "", "upstream_error"),
    ],
)
def test_every_rest_refusal_has_its_reason(status: int, detail: str, reason: str) -> None:
    got, text = unavailable(ApiError(status, detail))
    assert got == reason
    assert text and SECRET_TOKEN not in text


def test_the_session_count_is_current_usage() -> None:
    assert read_session_count(200, b'{"currentUsage": 3}') == 3
    with pytest.raises(ApiError) as caught:
        read_session_count(401, b'{"detail": "INVALID_API_KEY"}')
    assert caught.value.status == 401
    with pytest.raises(ApiError):
        read_session_count(200, b'{"currentUsage": true}')


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://api.simli.ai", "wss://api.simli.ai/compose/webrtc/livekit?session_token=a%2Bb"),
        ("https://api.simli.ai/", "wss://api.simli.ai/compose/webrtc/livekit?session_token=a%2Bb"),
        ("http://127.0.0.1:5000", "ws://127.0.0.1:5000/compose/webrtc/livekit?session_token=a%2Bb"),
        ("https://proxy.example/simli", "wss://proxy.example/simli/compose/webrtc/livekit?session_token=a%2Bb"),
    ],
)
def test_the_socket_url_follows_the_base_url(base: str, expected: str) -> None:
    assert socket_url(base, "a+b") == expected


def test_the_socket_url_refuses_a_base_url_that_is_not_http() -> None:
    with pytest.raises(ValueError) as caught:
        socket_url("ftp://x", SECRET_TOKEN)
    assert SECRET_TOKEN not in str(caught.value)


def test_audio_goes_out_in_frames_of_at_most_6000_bytes_of_whole_samples() -> None:
    pcm = bytes(range(256)) * 60  # 15360 bytes
    frames = [bytes(f) for f in audio_frames(pcm)]
    assert [len(f) for f in frames] == [6000, 6000, 3360]
    assert b"".join(frames) == pcm
    assert [len(f) for f in audio_frames(pcm, 4999)] == [4998, 4998, 4998, 366]
    assert list(audio_frames(b"")) == []
    with pytest.raises(ValueError):
        list(audio_frames(pcm, 70_000))
    assert AUDIO_FRAME_BYTES % 2 == 0


def test_the_keep_alive_is_0_1875_s_of_silence_at_16khz() -> None:
    assert len(KEEP_ALIVE_SILENCE) == 2 * SIMLI_SAMPLE_RATE * 0.1875
    assert not any(KEEP_ALIVE_SILENCE)


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        ('{"livekit_url": "wss://room.example", "livekit_token": "lk"}', JoinInfo("wss://room.example", "lk")),
        ('{"livekit_token": "lk", "livekit_url": "wss://room.example"}', JoinInfo("wss://room.example", "lk")),
        ('{"livekit_url": "", "livekit_token": "lk"}', Terminated("ERROR", "invalid join info")),
        ('{"destination": "aGVsbG8=", "session_id": "s-1"}', Destination("s-1")),
        ('{"session_id": "s-1", "destination": "aGVsbG8="}', Destination("s-1")),
        ('{"video_metadata": {"fps": 30, "width": 512, "height": 512}}', VideoMetadata(30.0)),
        ("START", Started()),
        ("ACK", Acknowledged()),
        ("SPEAK", Speaking(True)),
        ("SILENT", Speaking(False)),
        ("speak", Speaking(True)),
        ("STOP", Terminated("STOP", "")),
        ("ERROR: INVALID_API_KEY", Terminated("ERROR", "INVALID_API_KEY")),
        ("error invalid face", Terminated("ERROR", "invalid face")),
        ("RATE LIMIT: CONCURRENT_SESSIONS", Terminated("RATE", "LIMIT: CONCURRENT_SESSIONS")),
        ("CLOSING IDLE_TIMEOUT", Terminated("CLOSING", "IDLE_TIMEOUT")),
        ("ENDFRAME", Terminated("ENDFRAME", "")),
        ("pong 1712.5", Unknown("pong 1712.5")),
        ("{not json", Unknown("{not json")),
        ('["livekit_url"]', Unknown('["livekit_url"]')),
        (b"START", Started()),
        (b"\xff\xfe", Unknown("<2 bytes>")),
    ],
)
def test_every_server_message_is_understood_or_unknown(message: str | bytes, parsed: object) -> None:
    assert parse_server_message(message) == parsed


def test_a_join_info_repr_hides_the_livekit_token() -> None:
    assert "lk-secret" not in repr(JoinInfo("wss://room.example", "lk-secret"))


def test_an_unknown_message_is_shortened() -> None:
    parsed = parse_server_message("X" * 5000)
    assert isinstance(parsed, Unknown) and len(parsed.text) == 200


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("ERROR: INVALID_API_KEY", "unauthorized"),
        ("ERROR: BILLING_ERROR", "no_credits"),
        ("ERROR MISSING_BILLING_INFO", "no_credits"),
        ("ERROR: INVALID_FACE_ID", "bad_config"),
        ("RATE LIMIT: CONCURRENT_SESSIONS", "concurrent_limit"),
        ("RATE slow down", "rate_limited"),
        ("CLOSING SERVER_RESTART", "upstream_error"),
        ("STOP", "upstream_error"),
    ],
)
def test_a_termination_before_the_session_is_handed_over_is_a_refusal(message: str, reason: str) -> None:
    parsed = parse_server_message(message)
    assert isinstance(parsed, Terminated)
    assert socket_refusal(parsed)[0] == reason


def test_a_termination_of_a_running_session_says_why() -> None:
    assert session_end_text(Terminated("CLOSING", "IDLE_TIMEOUT")) == "The Simli session ended (CLOSING IDLE_TIMEOUT)."
    assert session_end_text(Terminated("STOP", "")) == "The Simli session ended (STOP)."


@pytest.mark.parametrize(
    ("sources", "url", "allowed"),
    [
        ("wss://*.livekit.cloud https://*.livekit.cloud", "wss://simli-abc.livekit.cloud", True),
        ("wss://*.livekit.cloud", "wss://livekit.cloud", False),  # `*.` needs a subdomain
        ("wss://*.livekit.cloud", "wss://rooms.simli.ai", False),
        ("wss://rooms.simli.ai", "wss://rooms.simli.ai/rtc", True),
        ("https://rooms.simli.ai", "wss://rooms.simli.ai", False),  # the scheme must match
        ("*.simli.ai", "wss://lk.eu.simli.ai", True),  # no scheme: the page's own
        ("", "wss://rooms.simli.ai", False),
    ],
)
def test_the_pages_connect_src_is_checked_against_the_room(sources: str, url: str, allowed: bool) -> None:
    assert connect_src_allows(sources, url) is allowed
