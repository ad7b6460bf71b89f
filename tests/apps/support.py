"""Helpers for the devhost tests: unique names, polling with deadlines, queue clients, the event log."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from azure.storage.queue import QueueClient

from devhost.process import DevHostProcess

APPS = Path(__file__).resolve().parent
T = TypeVar("T")


def unique(prefix: str) -> str:
    """A queue name no other test uses (lower case, hyphens, ≤ 63 chars)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def serving(app_dir: Path, env: dict[str, str]) -> Iterator[DevHostProcess]:
    """A module fixture's devhost: started, yielded, then stopped with a clean exit (0); never left running, and
    its log removed."""
    host = DevHostProcess(app_dir=app_dir, env=env)
    host.start()
    try:
        yield host
        assert host.stop() == 0
    finally:
        host.kill()
        host.close()


def wait_until(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def raw_queue(storage: str, name: str) -> QueueClient:
    """A client that sends and receives message text exactly as stored (no base64 policy)."""
    return QueueClient.from_connection_string(storage, name)


def message_count(storage: str, name: str) -> int:
    """Messages in the queue, hidden (locked) ones included: a peek cannot see a locked message, so only this (or
    a receive) tells a deleted message from one that is merely invisible."""
    try:
        return raw_queue(storage, name).get_queue_properties().approximate_message_count
    except Exception:  # noqa: BLE001 - a queue that does not exist holds nothing
        return 0


def peek_all(storage: str, name: str) -> list[Any]:
    client = raw_queue(storage, name)
    try:
        return list(client.peek_messages(max_messages=32))
    except Exception:  # noqa: BLE001 - a queue that does not exist holds nothing
        return []


def max_concurrency(events: list[dict[str, Any]]) -> int:
    """Highest number of start-without-end at any point, from start/end events in file order."""
    running = peak = 0
    for e in events:
        if e.get("event") == "start":
            running += 1
            peak = max(peak, running)
        elif e.get("event") == "end":
            running -= 1
    return peak
