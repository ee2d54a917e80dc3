"""Serving the app (`relay.web`): hypercorn configuration and drain (`serving`), `serve --workers N` (`workers`,
`seats`, `worker_metrics`), who gets in (`admission`, `auth`, `limits`) and `demo` mode. The HTTP keep-alive
guard the app installs is `relay.net.http_keepalive` (one copy, shared with the simulators)."""

from relay.server import admission, auth, demo, limits, seats, serving, worker_metrics, workers

__all__ = ["admission", "auth", "demo", "limits", "seats", "serving", "worker_metrics", "workers"]
