"""devhost's HTTP edge, as the real front end behaves: cut bodies, 413 before reading, timeouts, Host, 405, admin."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from devhost.functions import Dispatcher
from devhost.http import EdgeLimits, HttpApp, edge_protocol, uvicorn_gaps
from devhost.process import DevHostProcess
from devhost.routing import Route, Router
from tests.apps.support import APPS, serving, wait_until

BASIC = APPS / "basic"
SHORT = 1.0  # seconds; every timeout of this module's host


@pytest.fixture(scope="module")
def host(azurite) -> Iterator[DevHostProcess]:
    """The basic app with every connection timeout at one second."""
    env = {"AzureWebJobsStorage": azurite.connection_string, "DEVHOST_KEEP_ALIVE_SECONDS": str(SHORT),
           "DEVHOST_HEADERS_TIMEOUT_SECONDS": str(SHORT), "DEVHOST_BODY_GRACE_SECONDS": str(SHORT)}
    yield from serving(BASIC, env)


def connect(host: DevHostProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", host.port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket timeout fails the test)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def invocations(host: DevHostProcess) -> int:
    return host.logs().count("Executing 'Functions.echo'")


def refused_lines(host: DevHostProcess, path: str) -> list[str]:
    return [line for line in host.logs().splitlines() if f"POST {path} not passed to 'Functions.echo'" in line]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_cut_short_never_reaches_the_function(host: DevHostProcess, framing: str) -> None:
    path = f"/api/echo/cut-{framing}"
    before = invocations(host)
    with connect(host) as sock:
        if framing == "content-length":
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n".encode()
                         + b"patient,result\nP1,10")
        else:  # two chunks sent, the last (zero-length) chunk never
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                         + b"5\r\nhello\r\n6\r\n world\r\n")
        time.sleep(0.2)  # let the server read what was sent before the connection drops
    lines = wait_until(lambda: refused_lines(host, path), what="the host to notice the dropped connection")
    assert "client disconnected" in lines[0]
    assert invocations(host) == before


def test_complete_bodies_still_reach_the_function(host: DevHostProcess) -> None:
    with connect(host) as sock:
        sock.sendall(b"POST /api/echo/chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"body_len": 11' in answer


def test_over_100_mb_is_413_before_the_body_is_sent(host: DevHostProcess) -> None:
    before = invocations(host)
    with connect(host) as sock:
        # Headers only: the answer must come without a byte of the declared 500 MB.
        sock.sendall(b"POST /api/echo/huge HTTP/1.1\r\nHost: localhost\r\nContent-Length: 524288000\r\n\r\n")
        answer = read_all(sock)  # ... and the connection is closed, not drained
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert invocations(host) == before


def test_exactly_100_mb_is_not_refused_up_front(host: DevHostProcess) -> None:
    with connect(host) as sock:
        sock.sendall(b"POST /api/echo/limit HTTP/1.1\r\nHost: localhost\r\nContent-Length: 104857600\r\n\r\n")
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(100)  # no early answer: the server is waiting for the body


def test_idle_connection_is_closed(host: DevHostProcess) -> None:
    with connect(host) as sock:
        assert read_all(sock) == b""  # closed by the server, nothing sent either way


def test_headers_that_never_finish_get_408(host: DevHostProcess) -> None:
    with connect(host) as sock:
        sock.sendall(b"GET /api/echo/slow HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")


def test_body_that_stalls_gets_408_and_never_reaches_the_function(host: DevHostProcess) -> None:
    before = invocations(host)
    with connect(host) as sock:
        sock.sendall(b"POST /api/echo/stall HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789")
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")
    lines = wait_until(lambda: refused_lines(host, "/api/echo/stall"), what="the refusal to be logged")
    assert "arrived too slowly" in lines[0] and invocations(host) == before


def test_keep_alive_requests_still_work(host: DevHostProcess) -> None:
    with httpx.Client(base_url=host.url) as client:
        for _ in range(3):
            assert client.get("/api/echo/again").status_code == 200


def test_wrong_method_is_405_with_allow(host: DevHostProcess) -> None:
    response = httpx.delete(f"{host.url}/api/echo/alice")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


@pytest.mark.parametrize("value", ['"><script>alert(1)</script>', "good.com@evil.com", "a b", "host:port"])
def test_malformed_host_is_400(host: DevHostProcess, value: str) -> None:
    before = invocations(host)
    with connect(host) as sock:
        sock.sendall(f"GET /api/echo/host HTTP/1.1\r\nHost: {value}\r\n\r\n".encode())
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")
    assert invocations(host) == before


def test_host_is_required_in_http_1_1_only(host: DevHostProcess) -> None:
    with connect(host) as sock:
        sock.sendall(b"GET /api/echo/nohost HTTP/1.1\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 400 ")
    with connect(host) as sock:
        sock.sendall(b"GET /api/echo/nohost HTTP/1.0\r\n\r\n")
        assert re.match(rb"HTTP/1\.1 200 ", read_all(sock))


def test_listens_on_loopback_only_by_default(host: DevHostProcess) -> None:
    # 127.0.0.2 is this machine too, but not the address devhost bound: a wildcard bind would accept it.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", host.port), timeout=5).close()


def test_bad_timeout_setting_stops_the_host(start_devhost, storage) -> None:
    with pytest.raises(RuntimeError, match="DEVHOST_HEADERS_TIMEOUT_SECONDS must be a number"):
        start_devhost(BASIC, env={"AzureWebJobsStorage": storage, "DEVHOST_HEADERS_TIMEOUT_SECONDS": "soon"})


def test_timeouts_can_be_shortened_never_lengthened() -> None:
    """The settings exist so tests can run the timeouts in seconds; a longer one would be kinder than Kestrel."""
    settings = {"DEVHOST_HEADERS_TIMEOUT_SECONDS": "3600"}
    with pytest.raises(ValueError, match="at most 30"):
        EdgeLimits.from_settings(settings.get)
    assert EdgeLimits.from_settings({"DEVHOST_HEADERS_TIMEOUT_SECONDS": "2"}.get).headers_seconds == 2


@pytest.mark.parametrize("request_head, status", [
    (b"POST /api/echo/x?" + b"q" * 8200 + b" HTTP/1.1\r\nHost: localhost\r\n", b"414"),
    (b"POST /api/echo/x HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"v" * 33_000 + b"\r\n", b"431"),
    (b"POST /api/echo/x HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)),
     b"431"),
    (b"POST /api/echo/x HTTP/1.1\r\nHost: localhost\r\nHost: elsewhere\r\n", b"400"),
])
def test_kestrel_request_limits(host: DevHostProcess, request_head: bytes, status: bytes) -> None:
    """Kestrel's limits on the request line (8 KB), headers (100, 32 KB in all) and Host (one): a request the
    real front end refuses never reaches a function here either."""
    before = invocations(host)
    with connect(host) as sock:
        sock.sendall(request_head + b"Content-Length: 2\r\n\r\nhi")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert invocations(host) == before


# --- the admin API answers this machine only ---------------------------------------------------------------------


def call_app(app: HttpApp, method: str, path: str, client: str = "127.0.0.1",
             chunks: tuple[bytes, ...] = (b"{}",), headers: tuple[tuple[bytes, bytes], ...] = ()) -> int:
    """One request through the ASGI app exactly as uvicorn hands it over, from the given client address."""
    return asyncio.run(call_app_async(app, method, path, client, chunks, headers))


async def call_app_async(app: HttpApp, method: str, path: str, client: str = "127.0.0.1",
                         chunks: tuple[bytes, ...] = (b"{}",), headers: tuple[tuple[bytes, bytes], ...] = ()) -> int:
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"localhost"), *headers], "client": (client, 50000),
             "server": ("127.0.0.1", 7071), "http_version": "1.1", "scheme": "http"}
    sent: list[dict] = []
    pending = list(chunks)

    async def receive() -> dict:
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


@pytest.mark.parametrize("client, expected", [("192.0.2.10", 403), ("127.0.0.1", 202), ("::1", 202)])
def test_admin_api_answers_loopback_clients_only(client: str, expected: int) -> None:
    async def run_now(_: str) -> None:
        return None

    app = HttpApp(Router(), Dispatcher(None), lambda: "Running", {"tick": run_now}, EdgeLimits())
    assert call_app(app, "POST", "/admin/functions/tick", client) == expected
    assert call_app(app, "GET", "/admin/host/status", client) == (403 if expected == 403 else 200)


def test_a_function_slower_than_the_front_end_gets_502_and_runs_on() -> None:
    """Azure's front end gives up on an HTTP function after 230 s (here 0.2 s): 502, and the invocation finishes."""
    finished: list[str] = []

    class Slow:
        async def invoke(self, fn, args, reason):  # noqa: ANN001, ANN202 - stands in for Dispatcher.invoke
            await asyncio.sleep(0.5)
            finished.append(fn.name)
            return SimpleNamespace(succeeded=True, value=None, outputs={})

    router = Router()
    router.add(Route("api/echo/{name}", frozenset({"POST"}), SimpleNamespace(
        name="echo", info=SimpleNamespace(trigger={"name": "req"}, bindings=[]))))
    app = HttpApp(router, Slow(), lambda: "Running", {}, EdgeLimits(response_seconds=0.2))  # type: ignore[arg-type]

    async def request_then_wait() -> int:
        status = await call_app_async(app, "POST", "/api/echo/x")
        assert finished == []  # answered before the function ended
        deadline = time.monotonic() + 5
        while not finished and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return status

    assert asyncio.run(request_then_wait()) == 502
    assert finished == ["echo"]
    assert EdgeLimits.from_settings({}.get).response_seconds == 230
    with pytest.raises(ValueError, match="DEVHOST_RESPONSE_TIMEOUT_SECONDS"):
        EdgeLimits.from_settings({"DEVHOST_RESPONSE_TIMEOUT_SECONDS": "600"}.get)


def test_chunked_body_over_the_limit_is_413_as_it_passes_it() -> None:
    """A chunked body declares no length: it is counted as it arrives and cut off past the limit (here 10 bytes)."""
    router = Router()
    # The target is only named in the log: the body is refused before any function would be called.
    router.add(Route("api/echo/{name}", frozenset({"POST"}), SimpleNamespace(name="echo")))
    app = HttpApp(router, Dispatcher(None), lambda: "Running", {}, EdgeLimits(max_body_bytes=10))
    chunked = ((b"transfer-encoding", b"chunked"),)
    assert call_app(app, "POST", "/api/echo/x", chunks=(b"123456", b"78901", b"never read"), headers=chunked) == 413


def test_a_flood_of_idle_connections_cannot_lock_out_the_next_request(azurite) -> None:
    """20,000 idle connections used to exhaust devhost's file descriptors until they timed out (130 s). At the cap
    a new connection closes the oldest idle one, so a real request still gets in at once."""
    env = {"AzureWebJobsStorage": azurite.connection_string, "DEVHOST_MAX_CONNECTIONS": "20"}
    for host in serving(BASIC, env):
        flood = [socket.create_connection(("127.0.0.1", host.port), timeout=10) for _ in range(100)]
        try:
            response = httpx.get(f"{host.url}/api/echo/after-flood", timeout=10)
            assert response.status_code == 200
            closed = 0
            for sock in flood:
                sock.settimeout(0.5)
                try:
                    closed += sock.recv(1) == b""
                except (TimeoutError, OSError):
                    pass
            assert closed >= 80, f"only {closed} of the idle connections were closed to make room"
        finally:
            for sock in flood:
                sock.close()


def test_the_connection_cap_can_be_lowered_never_raised() -> None:
    assert EdgeLimits.from_settings({"DEVHOST_MAX_CONNECTIONS": "50"}.get).max_connections == 50
    for bad in ("0", "5000", "many"):
        with pytest.raises(ValueError, match="DEVHOST_MAX_CONNECTIONS"):
            EdgeLimits.from_settings({"DEVHOST_MAX_CONNECTIONS": bad}.get)


def test_the_pinned_uvicorn_has_every_name_the_edge_protocol_uses() -> None:
    assert uvicorn_gaps() == []
    assert isinstance(edge_protocol(EdgeLimits()), functools.partial)


def test_an_uvicorn_without_those_names_is_found_out() -> None:
    class Renamed:  # a release that renamed a callback, and a request cycle that renamed its state
        def __init__(self) -> None:
            self.loop = self.transport = self.cycle = None
            self.timeout_keep_alive = self.timeout_keep_alive_task = None

    class Cycle:
        def __init__(self) -> None:
            self.scope = self.more_body = self.response_started = None

    gaps = uvicorn_gaps(Renamed, Cycle)
    assert "Renamed.data_received" in gaps and "Cycle.response_complete" in gaps
    assert "Renamed.loop" not in gaps


def test_without_those_names_devhost_serves_with_uvicorns_own_protocol(caplog: pytest.LogCaptureFixture) -> None:
    """The fallback still answers requests: the edge timers are off, the service is not."""
    import threading

    import uvicorn

    async def app(scope: dict, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    protocol = edge_protocol(EdgeLimits(), gaps=["HttpToolsProtocol.on_body"])
    assert protocol is HttpToolsProtocol
    assert "lacks HttpToolsProtocol.on_body" in caplog.text
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, lifespan="off", log_config=None))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10)
        answer = httpx.get(f"http://127.0.0.1:{sock.getsockname()[1]}/", timeout=5)
        assert (answer.status_code, answer.text) == (200, "ok")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive()
