"""What operators and load balancers ask the app: `/healthz` (liveness), `/readyz` (readiness, with the failing
checks), `/metrics` (Prometheus; all workers' under `serve --workers N`) and, in demo mode, `/_demo/simulators`."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from relay import __version__
from relay.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.server.jwks import JwksCache
from relay.server.state import RelayState


def add_probe_routes(app: QuartTrio, state: RelayState) -> None:
    """`/healthz`, `/readyz`, `/metrics` and `/_demo/simulators` on `app`, reading `state`."""
    worker = state.worker

    @app.route("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the process answers. Never depends on upstreams (a restart would not fix them)."""
        body: dict[str, Any] = {"status": "ok", "version": __version__}
        if worker is not None:
            body["worker"] = worker.index
        return body

    @app.route("/readyz")
    async def readyz() -> Any:
        """Readiness: 200 while new conversations are welcome, 503 (with the failing checks) otherwise — from
        the first moment of a shutdown, so a load balancer stops sending new ones before the drain."""
        checks = state.readiness
        body: dict[str, Any] = {"ready": all(checks.values()), "checks": checks,
                                "open_conversations": state.registry.open_count,
                                "max_conversations": state.registry.max_conversations}
        if not checks.get("jwks", True) and state.gate is not None and isinstance(state.gate.jwks, JwksCache):
            body["why"] = {"jwks": state.gate.jwks.not_ready_because}
        return body, 200 if body["ready"] else 503

    @app.route("/metrics")
    async def metrics_endpoint() -> Response:
        """This relay's metrics; with several workers, all of theirs, each sample labelled with its `worker`."""
        assert state.metrics is not None
        body = state.metrics.render()
        if worker is not None:
            from relay.server.worker_metrics import gather_expositions, merge_expositions

            sockets = {index: worker.metrics_socket(index) for index in range(worker.count)}
            body = merge_expositions(await gather_expositions(sockets, worker.index, body))
        return Response(body, content_type=METRICS_CONTENT_TYPE, headers={"cache-control": "no-store"})

    @app.route("/_demo/simulators")
    async def demo_simulators() -> Any:
        urls = state.simulators
        if urls is None:
            return {"error": "not in demo mode"}, 404
        return dict(urls)
