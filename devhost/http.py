"""The HTTP front: an ASGI app that routes to HTTP-triggered functions, with the real front end's edge rules.

The edge rules (docs/local.md) are Kestrel's, which the Functions host runs behind: a body over 100 MB is refused
before it is read, a body cut short never reaches a function, slow or idle connections time out, a malformed Host is
a 400, and the admin API is not open to the network.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from azure.functions.http import HttpRequest as WorkerHttpRequest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from devhost.functions import HOST_API_REASON, Dispatcher, LoadedFunction
from devhost.routing import Router

log = logging.getLogger("devhost")

STATUS_PATH = "/admin/host/status"
ADMIN_PREFIX = "/admin/"
ADMIN_FUNCTIONS = "/admin/functions/"
# Kestrel's Host check (HttpUtilities.IsHostHeaderValid): a reg-name or IP literal, then an optional port.
VALID_HOST = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9!$&'()*+,;=._~%-]+)(?::[0-9]{0,5})?$")
CLOSE = [(b"connection", b"close")]
BODY_TOO_SLOW = "devhost.body_too_slow"  # set in the ASGI scope by EdgeProtocol when it gives up on a slow body
# ASGI's receive and send callables (messages are plain dicts, as uvicorn passes them).
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class EdgeLimits:
    """The front end's limits; defaults are the Functions host's (Kestrel's) own."""

    max_body_bytes: int = 104_857_600  # the host's 100 MB request limit (maxRequestLength)
    max_header_count: int = 100  # Kestrel MaxRequestHeaderCount (over it: 431)
    max_headers_bytes: int = 32_768  # Kestrel MaxRequestHeadersTotalSize, name + value + ": " + CRLF (431)
    max_request_line_bytes: int = 8_192  # Kestrel MaxRequestLineSize: method, target and version (414)
    keep_alive_seconds: float = 130.0  # Kestrel KeepAliveTimeout: idle before (and between) requests
    headers_seconds: float = 30.0  # Kestrel RequestHeadersTimeout: from a request's first byte to its last header
    body_grace_seconds: float = 5.0  # Kestrel MinRequestBodyDataRate: 240 bytes/s on average after a 5 s grace
    body_min_rate: float = 240.0
    # Azure's front end answers 502 when an HTTP function has not responded within 230 s, whatever functionTimeout
    # says; the invocation itself runs on to its end.
    response_seconds: float = 230.0
    # Open connections per process. At the cap a new connection closes the oldest idle one (no request under way)
    # to get in, so a flood of idle connections cannot lock out the next request (a health check, say); only
    # when every connection is busy is the new one turned away. Kept well below the process's file limit.
    max_connections: int = 4096

    @classmethod
    def from_settings(cls, get: Callable[[str], str | None]) -> EdgeLimits:
        """DEVHOST_KEEP_ALIVE_SECONDS, DEVHOST_HEADERS_TIMEOUT_SECONDS, DEVHOST_BODY_GRACE_SECONDS and
        DEVHOST_RESPONSE_TIMEOUT_SECONDS shorten defaults."""
        values: dict[str, float] = {}
        cap = get("DEVHOST_MAX_CONNECTIONS")
        if cap and (not cap.isdigit() or not 1 <= int(cap) <= cls.max_connections):
            raise ValueError(f"DEVHOST_MAX_CONNECTIONS must be a whole number from 1 to {cls.max_connections}, "
                                 f"got {cap!r}")
        for setting, name in (("DEVHOST_KEEP_ALIVE_SECONDS", "keep_alive_seconds"),
                              ("DEVHOST_HEADERS_TIMEOUT_SECONDS", "headers_seconds"),
                              ("DEVHOST_BODY_GRACE_SECONDS", "body_grace_seconds"),
                              ("DEVHOST_RESPONSE_TIMEOUT_SECONDS", "response_seconds")):
            text = get(setting)
            if text:
                try:
                    values[name] = float(text)
                except ValueError:
                    raise ValueError(f"{setting} must be a number of seconds, got {text!r}") from None
                if not 0 < values[name] <= getattr(cls, name):
                    # Shorter only: devhost may be made stricter for tests, never kinder than the real front end.
                    raise ValueError(f"{setting} must be more than 0 and at most {getattr(cls, name)} (the host's "
                                     f"own limit), got {text!r}")
        # values holds only the float fields named above; max_connections is the one int
        return cls(**values, **({"max_connections": int(cap)} if cap else {}))  # type: ignore[arg-type]  # by name


# What EdgeProtocol uses of uvicorn beyond its public `http=` protocol option: the httptools protocol's callbacks,
# the state its __init__ sets, and its request cycle's. uvicorn is pinned (requirements-dev.txt); a release that
# renames any of these turns the edge timers off with a warning (`edge_protocol`) instead of breaking connections.
UVICORN_CALLBACKS = ("connection_made", "data_received", "on_message_begin", "on_headers_complete", "on_body",
                     "on_message_complete", "connection_lost", "timeout_keep_alive_handler")
UVICORN_STATE = ("loop", "transport", "cycle", "timeout_keep_alive", "timeout_keep_alive_task")
UVICORN_CYCLE_STATE = ("scope", "more_body", "response_started", "response_complete")


def uvicorn_gaps(protocol: type = HttpToolsProtocol, cycle: type | None = None) -> list[str]:
    """The names EdgeProtocol needs that this uvicorn lacks (none with the pinned release). State is looked for
    among the names each class's __init__ uses."""
    if cycle is None:
        try:
            from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
        except ImportError:
            return ["uvicorn.protocols.http.httptools_impl.RequestResponseCycle"]
        cycle = RequestResponseCycle
    assigned, cycle_assigned = _assigned_in_init(protocol), _assigned_in_init(cycle)
    return ([f"{protocol.__name__}.{name}" for name in UVICORN_CALLBACKS if not callable(getattr(protocol, name, None))]
            + [f"{protocol.__name__}.{name}" for name in UVICORN_STATE if name not in assigned]
            + [f"{cycle.__name__}.{name}" for name in UVICORN_CYCLE_STATE if name not in cycle_assigned])


def _assigned_in_init(cls: type) -> set[str]:
    init = cls.__dict__.get("__init__")
    return set(init.__code__.co_names) if init is not None else set()


def edge_protocol(limits: EdgeLimits, gaps: list[str] | None = None) -> Callable[..., asyncio.Protocol]:
    """The protocol factory for uvicorn's `http=` option: EdgeProtocol, or uvicorn's own when this uvicorn lacks a
    name EdgeProtocol relies on (then only uvicorn's keep-alive timeout and no connection cap apply)."""
    gaps = uvicorn_gaps() if gaps is None else gaps
    if gaps:
        log.warning("This uvicorn lacks %s: devhost serves without its header and body timeouts and connection cap "
                    "(pin uvicorn as requirements-dev.txt does)", ", ".join(gaps))
        return HttpToolsProtocol
    return functools.partial(EdgeProtocol, limits=limits)


class EdgeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the connection timers uvicorn lacks.

    An idle connection (nothing sent since it opened) is closed after the keep-alive timeout, as uvicorn already
    does between requests. Headers that do not all arrive within the headers timeout, or a body that arrives slower
    than the minimum rate, get 408 and the connection is closed; the function is never called. Timers are armed
    only once a request is seen to be incomplete after a read, so the usual request (headers and body in one read)
    costs no timer at all: intake latency is benchmarked.
    """

    def __init__(self, *args: Any, limits: EdgeLimits = EdgeLimits(), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.timer: asyncio.TimerHandle | None = None
        self.in_headers = False
        self.started = 0.0  # when the current request's headers, then its body, began
        self.body_received = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's own
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        if len(_OPEN) >= self.limits.max_connections and not _evict_idle():
            transport.close()  # every connection is busy with a request: this one waits for none
            return
        _OPEN[self] = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.timer is not None or self.transport.is_closing():
            return
        if self.in_headers:
            self.timer = self.loop.call_at(self.started + self.limits.headers_seconds, self._headers_timed_out)
        elif self.cycle is not None and self.cycle.more_body and not self.cycle.response_complete:
            self.timer = self.loop.call_at(self._body_due(), self._body_check)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_headers, self.started = True, self.loop.time()

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        self.in_headers, self.started, self.body_received = False, self.loop.time(), 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_received += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        _OPEN.pop(self, None)
        super().connection_lost(exc)

    @property
    def idle(self) -> bool:
        """No request under way: between requests, or none yet and not one byte of it."""
        return not self.in_headers and (self.cycle is None or self.cycle.response_complete) and \
            not self.transport.is_closing()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _body_due(self) -> float:
        """Kestrel's minimum data rate: once the grace period is over, on average `body_min_rate` bytes a second
        since the body began (the grace is not added on top)."""
        return self.started + max(self.limits.body_grace_seconds, self.body_received / self.limits.body_min_rate)

    def _body_check(self) -> None:
        self.timer = None
        if self.loop.time() < self._body_due():
            self.timer = self.loop.call_at(self._body_due(), self._body_check)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.scope[BODY_TOO_SLOW] = True  # type: ignore[literal-required]  # devhost's own key; the scope is a dict
            self._refuse(not cycle.response_started)

    def _headers_timed_out(self) -> None:
        self.timer = None
        self._refuse(True)

    def _refuse(self, answer: bool) -> None:
        if not self.transport.is_closing():
            if answer:
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()


# The process's open connections, oldest first (dicts keep insertion order): at the cap, the oldest idle one goes.
_OPEN: dict[EdgeProtocol, None] = {}


def _evict_idle() -> bool:
    """Close the longest-idle connection; False if every open connection has a request under way."""
    oldest = next((conn for conn in _OPEN if conn.idle), None)  # the longest-open idle one: in a flood, the first
    if oldest is None:
        return False
    _OPEN.pop(oldest, None)
    oldest.transport.close()
    return True


class BodyRefused(Exception):
    """The request body cannot be handed to a function; `status` is the answer, or None if the client is gone."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _joined(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Repeated names become one comma-joined value, as the host's StringValues.ToString() gives them."""
    out: dict[str, str] = {}
    for name, value in pairs:
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def build_request(scope: dict[str, Any], body: bytes, route_params: dict[str, str]) -> func.HttpRequest:
    headers = _joined([(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]])
    query = scope.get("query_string") or b""
    params = _joined(parse_qsl(query.decode("latin-1"), keep_blank_values=True)) if query else {}
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    url = f"{scope.get('scheme', 'http')}://{host}{path}" + (f"?{query.decode('latin-1')}" if query else "")
    return WorkerHttpRequest(scope["method"], url, headers=headers, params=params, route_params=route_params,
                             body_type="bytes", body=body)


def convert_response(value: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of what the function returned, with the worker's content-type defaulting."""
    if value is None:
        return 204, [], b""
    if isinstance(value, str):
        return 200, [(b"content-type", b"text/plain; charset=utf-8")], value.encode("utf-8")
    if isinstance(value, func.HttpResponse):
        headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in value.headers.items()]
        if not any(k == b"content-type" for k, _ in headers):
            mimetype = value.mimetype or "text/plain"
            ct = f"{mimetype}; charset={value.charset}" if mimetype.startswith("text/") else mimetype
            headers.append((b"content-type", ct.encode("latin-1")))
        headers = [(k, v) for k, v in headers if k not in (b"content-length", b"transfer-encoding")]
        return int(value.status_code), headers, value.get_body() or b""
    raise TypeError(f"unsupported HTTP output of type {type(value).__name__}")


class HttpApp:
    """ASGI callable; kept minimal because HTTP intake is the benchmarked hot path."""

    def __init__(self, router: Router, dispatcher: Dispatcher, state: Callable[[], str],
                 manual: dict[str, Callable[[str], Coroutine[Any, Any, Any]]] | None = None,
                 limits: EdgeLimits = EdgeLimits()) -> None:
        self.router = router
        self.dispatcher = dispatcher
        self.state = state
        self.limits = limits
        # Non-HTTP functions that `POST /admin/functions/{name}` may run, by lower-cased name.
        self.manual = {name.lower(): run for name, run in (manual or {}).items()}
        self._manual_tasks: set[asyncio.Task[Any]] = set()
        self._late: set[asyncio.Task[Any]] = set()  # invocations still running after their 502

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        refusal = self._refusal(scope)
        if refusal:
            await _respond(send, refusal, CLOSE, b"")
            return
        if path.startswith(ADMIN_PREFIX):
            await self._admin(scope, receive, send)
            return
        status, route, params = self.router.match(path, method)
        if route is None:
            allow = [(b"allow", ", ".join(self.router.allowed(path)).encode())] if status == 405 else []
            await _respond(send, status, allow + _close_unless_bodiless(scope), b"")
            return
        try:
            body = await self._read_body(scope, receive)
        except BodyRefused as refused:
            log.warning("Request %s %s not passed to 'Functions.%s': %s", method, path, route.target.name, refused)
            if refused.status is not None:
                await _respond(send, refused.status, CLOSE, b"")
            return
        fn: LoadedFunction = route.target
        trigger_name = str(fn.info.trigger.get("name"))
        try:
            request = build_request(scope, body, params)
        except Exception:  # noqa: BLE001 - a malformed request must not crash the server
            log.exception("Cannot build the HttpRequest for 'Functions.%s'", fn.name)
            await _respond(send, 400, [], b"")
            return
        invocation = asyncio.ensure_future(self.dispatcher.invoke(fn, {trigger_name: request}, HOST_API_REASON))
        done, _ = await asyncio.wait((invocation,), timeout=self.limits.response_seconds)
        if not done:
            log.warning("Request %s %s: 'Functions.%s' did not respond within %g s: 502 (the invocation runs on)",
                        method, path, fn.name, self.limits.response_seconds)
            self._late.add(invocation)
            invocation.add_done_callback(self._late.discard)
            await _respond(send, 502, CLOSE, b"")
            return
        outcome = invocation.result()
        if not outcome.succeeded:
            # The host never puts the exception in the response; it is in the log.
            await _respond(send, 500, [], b"")
            return
        out_name = next((str(b["name"]) for b in fn.info.bindings if str(b.get("type", "")).lower() == "http"
                         and str(b.get("direction", "")).lower() == "out"), "$return")
        value = outcome.value if out_name == "$return" else outcome.outputs.get(out_name)
        try:
            code, headers, payload = convert_response(value)
        except Exception:  # noqa: BLE001 - any unconvertible value is the function's error: 500, as the host answers
            log.exception("Functions.%s returned a value the HTTP output binding cannot convert", fn.name)
            await _respond(send, 500, [], b"")
            return
        await _respond(send, code, headers, payload)


    def _refusal(self, scope: dict[str, Any]) -> int | None:
        """What the front end answers before routing: 414 for a request line over Kestrel's limit, 431 for too
        many or too large headers, 400 for a missing, repeated or malformed Host, 413 for a declared body over
        the limit."""
        limits = self.limits
        target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 1
        if len(scope["method"]) + target + len(" HTTP/1.1") + 1 > limits.max_request_line_bytes:
            return 414
        headers = scope["headers"]
        if len(headers) > limits.max_header_count:
            return 431
        host = length = None
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"host":
                if host is not None:
                    return 400  # Kestrel refuses a request with more than one Host
                host = value
            elif name == b"content-length":
                length = value
        if size > limits.max_headers_bytes:
            return 431
        if host is None:
            if scope.get("http_version") == "1.1":
                return 400  # HTTP/1.1 requires Host (RFC 9112 section 3.2), and Kestrel enforces it
        elif not VALID_HOST.match(host.decode("latin-1")):
            return 400
        if length is not None:
            if not length.isdigit():
                return 400  # the parser already refuses these; never let one reach int()
            if int(length) > self.limits.max_body_bytes:
                return 413
        return None

    async def _admin(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """The host's admin API, for this machine only: devhost has no master key to guard it with."""
        if not _is_loopback(scope.get("client")):
            await _respond(send, 403, _close_unless_bodiless(scope), b"")
            return
        path, method = scope["path"], scope["method"]
        if path == STATUS_PATH:
            state = self.state()
            await _respond(send, 200 if state == "Running" else 503,
                           [(b"content-type", b"application/json; charset=utf-8")],
                           json.dumps({"state": state}).encode())
        elif path.startswith(ADMIN_FUNCTIONS) and method == "POST":
            try:
                body = await self._read_body(scope, receive)
            except BodyRefused as refused:
                if refused.status is not None:
                    await _respond(send, refused.status, CLOSE, b"")
                return
            await self._run_manually(path[len(ADMIN_FUNCTIONS):], body, send)
        else:
            await _respond(send, 404, _close_unless_bodiless(scope), b"")

    async def _read_body(self, scope: dict[str, Any], receive: Receive) -> bytes:
        """The whole body, or BodyRefused: cut short or too slow (the connection is gone), or over the limit (413)."""
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                why = "arrived too slowly (408)" if scope.get(BODY_TOO_SLOW) else "was cut short: the client disconnected"
                raise BodyRefused(None, f"the request body {why} after {received} bytes")
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.limits.max_body_bytes:
                raise BodyRefused(413, f"the request body is over {self.limits.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _run_manually(self, name: str, body: bytes, send: Send) -> None:
        """The host's admin API for non-HTTP functions: 202 at once, the invocation runs in the background."""
        run = self.manual.get(name.lower())
        if run is None:
            await _respond(send, 404, [], b"")
            return
        try:
            value = json.loads(body or b"{}").get("input", "")
        except (ValueError, AttributeError):
            await _respond(send, 400, [], b"")
            return
        task = asyncio.create_task(run(str(value)))
        self._manual_tasks.add(task)
        task.add_done_callback(self._manual_tasks.discard)
        await _respond(send, 202, [], b"")


def _is_loopback(client: tuple[str, int] | None) -> bool:
    try:
        return client is not None and ipaddress.ip_address(client[0]).is_loopback
    except ValueError:
        return False


def _close_unless_bodiless(scope: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """Close the connection after answering without reading a body, rather than drain what may be 100 MB."""
    for name, value in scope["headers"]:
        if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
            return CLOSE
    return []


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
