"""Network plumbing with no knowledge of any service: the Trio WebSocket client over the `websockets` sans-I/O
protocol (`wsclient`), and retries with backoff for calls that are safe to repeat (`retry`)."""

from relay.net.retry import Retryable, backoff_delay, call_with_retries
from relay.net.wsclient import (
    ClientWebSocket,
    WebSocketClosed,
    WebSocketConnectError,
    WebSocketRejected,
    open_websocket,
)

__all__ = ["ClientWebSocket", "Retryable", "WebSocketClosed", "WebSocketConnectError", "WebSocketRejected",
           "backoff_delay", "call_with_retries", "open_websocket"]
