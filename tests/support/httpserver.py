"""A tiny HTTP server on a loopback port, in a thread, for tests that need a third party to answer plain GETs (an
identity provider's JWKS, a foreign page that frames the relay's)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def answering(answer: Callable[[], tuple[str, bytes]]) -> Iterator[int]:
    """Serve every GET on 127.0.0.1 with `answer()` → (content type, body), each request in its own thread, until
    the block ends; yields the port. `answer` runs on the server's threads: it locks what it shares."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            content_type, body = answer()
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
