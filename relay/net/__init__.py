"""Network plumbing with no knowledge of any service: the Trio WebSocket client over the `websockets` sans-I/O
protocol (`wsclient`), retries with backoff for calls that are safe to repeat (`retry`), and the ASGI guard that
keeps hypercorn's HTTP keep-alive working under quart-trio (`http_keepalive`, installed by the relay's app and by
every simulator). Import the module you need: this package loads none of them."""
