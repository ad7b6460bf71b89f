"""A real HTTP downstream for delivery tests: records every POST and answers what the test tells it to."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    idempotency_key: str
    body: bytes


@dataclass
class Downstream:
    """`answers` is consumed one status per request; when empty, `default` is answered."""

    default: int = 200
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    # Requests whose sender died before the whole body arrived: an HTTP server discards them, so do we.
    incomplete: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/ingest"

    def start(self) -> "Downstream":
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                expected = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(expected)
                if len(body) < expected:
                    with outer.lock:
                        outer.incomplete += 1
                    self.close_connection = True
                    return
                with outer.lock:
                    code = outer.answers.pop(0) if outer.answers else outer.default
                    outer.received.append(Received(self.headers.get("Idempotency-Key", ""), body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    def keys(self) -> list[str]:
        with self.lock:
            return [r.idempotency_key for r in self.received]
