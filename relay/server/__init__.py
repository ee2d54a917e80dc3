"""Serving the app (`relay.web`): hypercorn configuration and drain (`serving`), `serve --workers N` (`workers`,
`seats`, `worker_metrics`), who gets in (`admission`, `auth`, `limits`), the HTTP keep-alive guard
(`http_keepalive`) and `demo` mode."""

from relay.server import admission, auth, demo, http_keepalive, limits, seats, serving, worker_metrics, workers

__all__ = ["admission", "auth", "demo", "http_keepalive", "limits", "seats", "serving", "worker_metrics", "workers"]
