"""A recording HTTP proxy on loopback in front of a storage endpoint: every request passes through unchanged (the
SharedKey signature covers path and headers, not the host) and its method, path and query are kept for inspection.
Used to check which table queries the app makes and to count storage calls.
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]

    @property
    def table(self) -> str | None:
        """The table an entity request addresses (`/account/reports()`, `/account/reports(PartitionKey=...)`)."""
        match = re.match(r"^/[^/]+/([A-Za-z][A-Za-z0-9]*)\(", unquote(self.path))
        return match.group(1) if match else None

    @property
    def is_query(self) -> bool:
        return self.method == "GET" and self.table is not None and unquote(self.path).endswith("()")


class StorageProxy:
    """Forwards http://127.0.0.1:<port>/... to `upstream` (host:port) and records each request."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                split = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(split.query).items()}
                with proxy._lock:
                    proxy.calls.append(Call(self.command, split.path, query))
                connection = http.client.HTTPConnection(upstream_host, upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                except (OSError, http.client.HTTPException):
                    connection.close()
                    self.send_error(502)
                    return
                connection.close()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_MERGE = do_DELETE = do_HEAD = do_OPTIONS = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def __enter__(self) -> StorageProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self) -> list[Call]:
        """The calls recorded since the last take."""
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


CLAUSE = re.compile(r"^\(?\s*(\w+)\s+(eq|ne|gt|ge|lt|le)\s+'((?:[^']|'')*)'\s*\)?$")


def unbounded_reason(call: Call) -> str | None:
    """Why a table query would read more than one PartitionKey's bounded RowKey range on Azure; None if it does not.

    Bounded: `PartitionKey eq` one value, and RowKey either `eq` or bounded on both sides; or PartitionKey alone
    with a plain `$top`. Anything else (another property, `or`, `not`, a missing bound) makes Azure scan.
    """
    text = call.query.get("$filter", "")
    if not text:
        return "no $filter: a scan of the whole table"
    clauses = re.split(r"\s+and\s+", text.strip())
    keys: dict[str, set[str]] = {"PartitionKey": set(), "RowKey": set()}
    for clause in clauses:
        match = CLAUSE.match(clause.strip())
        if not match or re.search(r"\s(or|not)\s", f" {clause} "):
            return f"clause {clause!r} is not a key comparison"
        name, op, _ = match.groups()
        if name not in keys:
            return f"filter on {name!r}, not a key"
        keys[name].add(op)
    if keys["PartitionKey"] != {"eq"}:
        return "does not name exactly one PartitionKey"
    rows = keys["RowKey"]
    if rows == {"eq"} or (rows & {"gt", "ge"} and rows & {"lt", "le"}):
        return None
    if not rows and "$top" in call.query:
        return None
    return f"RowKey not bounded on both sides ({sorted(rows) or 'no bound'})"
