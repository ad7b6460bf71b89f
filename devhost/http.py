"""The HTTP front: a small ASGI app that routes to HTTP-triggered functions and converts requests/responses."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

import azure.functions as func
from azure.functions.http import HttpRequest as WorkerHttpRequest

from devhost.functions import HOST_API_REASON, Dispatcher, LoadedFunction
from devhost.routing import Router

log = logging.getLogger("devhost")

STATUS_PATH = "/admin/host/status"
ADMIN_FUNCTIONS = "/admin/functions/"


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
                 manual: dict[str, Callable[[str], Awaitable[Any]]] | None = None) -> None:
        self.router = router
        self.dispatcher = dispatcher
        self.state = state
        # Non-HTTP functions that `POST /admin/functions/{name}` may run, by lower-cased name.
        self.manual = {name.lower(): run for name, run in (manual or {}).items()}
        self._manual_tasks: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == STATUS_PATH:
            state = self.state()
            await _respond(send, 200 if state == "Running" else 503,
                           [(b"content-type", b"application/json; charset=utf-8")],
                           json.dumps({"state": state}).encode())
            return
        if path.startswith(ADMIN_FUNCTIONS) and method == "POST":
            await self._run_manually(path[len(ADMIN_FUNCTIONS):], await _read_body(receive), send)
            return
        status, route, params = self.router.match(path, method)
        if route is None:
            await _respond(send, status, [], b"")
            return
        body = await _read_body(receive)
        fn: LoadedFunction = route.target
        trigger_name = str(fn.info.trigger.get("name"))
        try:
            request = build_request(scope, body, params)
        except Exception:  # noqa: BLE001 - a malformed request must not crash the server
            log.exception("Cannot build the HttpRequest for 'Functions.%s'", fn.name)
            await _respond(send, 400, [], b"")
            return
        outcome = await self.dispatcher.invoke(fn, {trigger_name: request}, HOST_API_REASON)
        if not outcome.succeeded:
            # The host never puts the exception in the response; it is in the log.
            await _respond(send, 500, [], b"")
            return
        out_name = next((str(b["name"]) for b in fn.info.bindings if str(b.get("type", "")).lower() == "http"
                         and str(b.get("direction", "")).lower() == "out"), "$return")
        value = outcome.value if out_name == "$return" else outcome.outputs.get(out_name)
        try:
            code, headers, payload = convert_response(value)
        except Exception:  # noqa: BLE001
            log.exception("Functions.%s returned a value the HTTP output binding cannot convert", fn.name)
            await _respond(send, 500, [], b"")
            return
        await _respond(send, code, headers, payload)


    async def _run_manually(self, name: str, body: bytes, send: Callable) -> None:
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


async def _read_body(receive: Callable) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _respond(send: Callable, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
