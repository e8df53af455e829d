"""An origin on a port chosen before it starts (tests/origin.py picks its own):
for an origin that is down (nothing on the port) and later comes up, or one
that goes away. Serves one body to every GET, counting them."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class PortOrigin:
    def __init__(
        self, port: int, body: bytes, etag: str | None = None, status: int = 200,
        delay: float = 0.0,
    ) -> None:  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.body, self.etag, self.status, self.delay = body, etag, status, delay
        self.gets = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name
                served.gets += 1
                time.sleep(served.delay)
                ok = served.status == 200
                self.send_response(served.status)
                self.send_header("Content-Length", str(len(served.body) if ok else 0))
                if served.etag:
                    self.send_header("ETag", served.etag)
                self.end_headers()
                if ok:
                    self.wfile.write(served.body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> PortOrigin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
