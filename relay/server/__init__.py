"""Serving the app (`relay.web`): hypercorn configuration and drain (`serving`), `serve --workers N` (`workers`,
`seats`, `worker_metrics`), who gets in (`request_guard`, `auth`, `opening`, `pending`, `admission`, `token_uses`,
`limits`, `ws_limits`) and `demo` mode. The HTTP keep-alive
guard the app installs is `relay.sim.http_keepalive` (one copy, shared with the simulators)."""

from relay.server import admission, auth, demo, limits, seats, serving, worker_metrics, workers

__all__ = ["admission", "auth", "demo", "limits", "seats", "serving", "worker_metrics", "workers"]
