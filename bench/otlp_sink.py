"""An OTLP/HTTP trace sink for measuring the relay with tracing on (docs/performance.md "Tracing"): accepts
`POST /v1/traces` on loopback, counts the spans (decoded with opentelemetry-proto) and prints the count every few
seconds and at exit. Run it, then the bench with the relay's tracing pointed at it:

    python -m bench.otlp_sink --port 4318 &
    OTEL_TRACES_EXPORTER=otlp OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 OTEL_TRACES_SAMPLER=always_on \\
        python -m bench --impl relay --clients 50 --duration 20
"""

from __future__ import annotations

import argparse
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ANSWER = ExportTraceServiceResponse().SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    counts = {"spans": 0, "exports": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            with lock:
                counts["spans"] += spans
                counts["exports"] += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(ANSWER)))
            self.end_headers()
            self.wfile.write(ANSWER)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        while True:
            time.sleep(5)
            print(f"otlp sink: {counts['spans']} spans in {counts['exports']} exports", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        print(f"otlp sink: {counts['spans']} spans in {counts['exports']} exports", flush=True)


if __name__ == "__main__":
    main()
