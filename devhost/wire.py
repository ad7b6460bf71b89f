"""What the host and its language worker processes say to each other over a Unix socket: an invocation out, its
outcome back, each a length-prefixed pickle (the real host speaks gRPC to its Python worker).

Both ends are this program, forked from one loaded host, so pickle carries nothing either did not have. An
`HttpRequest` does not pickle (it holds a mapping proxy): it travels as its parts and is built again in the worker.
"""

from __future__ import annotations

import pickle
import socket
import struct
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions.http import HttpRequest as WorkerHttpRequest

HEADER = struct.Struct("!Q")
LARGE = 65536


@dataclass(frozen=True)
class Invoke:
    number: int
    function: str
    args: dict[str, Any]
    invocation_id: str


@dataclass(frozen=True)
class Cancel:
    """Stop an async invocation (functionTimeout, or the host no longer waits for it); a thread cannot be stopped."""

    number: int


@dataclass(frozen=True)
class Done:
    number: int
    succeeded: bool
    value: Any = None
    outputs: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class _HttpRequestParts:
    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, str]
    route_params: dict[str, str]
    body: bytes

    def build(self) -> func.HttpRequest:
        return WorkerHttpRequest(self.method, self.url, headers=self.headers, params=self.params,
                                 route_params=self.route_params, body_type="bytes", body=self.body)


def outbound_args(args: dict[str, Any]) -> dict[str, Any]:
    return {name: _parts(value) if isinstance(value, func.HttpRequest) else value for name, value in args.items()}


def inbound_args(args: dict[str, Any]) -> dict[str, Any]:
    return {name: value.build() if isinstance(value, _HttpRequestParts) else value for name, value in args.items()}


def _parts(request: func.HttpRequest) -> _HttpRequestParts:
    return _HttpRequestParts(request.method, request.url, dict(request.headers), dict(request.params),
                             dict(request.route_params), request.get_body())


def send(sock: socket.socket, message: Invoke | Cancel | Done) -> None:
    """One message; callers hold the socket's send lock (frames must not interleave)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) < LARGE:
        sock.sendall(HEADER.pack(len(data)) + data)
    else:  # a large body is not copied once more to put the header in front of it
        sock.sendall(HEADER.pack(len(data)))
        sock.sendall(data)


def receive(sock: socket.socket) -> Invoke | Cancel | Done | None:
    """The next message, or None when the other end closed."""
    head = _exactly(sock, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    data = _exactly(sock, size)
    if data is None:
        return None
    message = pickle.loads(data)  # noqa: S301 - the other end is this program's own forked process
    if not isinstance(message, Invoke | Cancel | Done):
        raise TypeError(f"unexpected message {type(message).__name__}")
    return message


def _exactly(sock: socket.socket, size: int) -> bytes | bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer
