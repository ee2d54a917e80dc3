"""Serving the app (`relay.web`): hypercorn configuration and drain (`serving`, `hosted`), `serve --workers N`
(`workers`, `seats`, `worker_metrics`), who gets in (`request_guard`, `auth`, `jwks`, `opening`, `pending`,
`admission`, `fleet_admission`, `token_uses`, `limits`, `ws_limits`), the page's headers (`page_headers`),
`departures` and `demo` mode. The HTTP keep-alive guard the app installs is `relay.net.http_keepalive` (one copy,
shared with the simulators). Import the module you need: this package loads none of them."""
