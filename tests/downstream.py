"""A real HTTP downstream for delivery tests: records every POST and answers what the test tells it to."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from devhost.loopback import LoopbackServer, QuietHandler


@dataclass
class Received:
    idempotency_key: str
    body: bytes
    traceparent: str | None = None


@dataclass
class Downstream(LoopbackServer):
    """`answers` is consumed one status per request; when empty, `default` is answered."""

    default: int = 200
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    # Requests whose sender died before the whole body arrived: an HTTP server discards them, so do we.
    incomplete: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    # When given, each POST is recorded at once but answered only once this is set (at most a minute later): a
    # downstream that holds the processor's delivery, and with it the thread that delivers.
    release: threading.Event | None = None

    @property
    def url(self) -> str:
        return f"{self.base_url}/ingest"

    def start(self) -> Downstream:
        outer = self

        class Handler(QuietHandler):
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
                    outer.received.append(
                        Received(self.headers.get("Idempotency-Key", ""), body, self.headers.get("traceparent"))
                    )
                if outer.release is not None:
                    outer.release.wait(60)
                self.answer(code)

        self.serve(Handler)
        return self

    def keys(self) -> list[str]:
        with self.lock:
            return [r.idempotency_key for r in self.received]
