"""Helpers for tests of the real app: a running service (Azurite + devhost), senders, polling."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest

from devhost.azurite import REPO_ROOT, Azurite
from devhost.process import DevHostProcess

if TYPE_CHECKING:
    from shared.storage import Storage

SAMPLES = Path(__file__).parent / "samples"
PROBLEM = "application/problem+json"
EXAMPLES = REPO_ROOT / "docs" / "examples"
T = TypeVar("T")
# Lines the fault scenarios leave for the end-of-run summary (see conftest's pytest_terminal_summary).
FAULT_LINES = pytest.StashKey[list]()

# Short host timings so that retry and poison paths run in seconds (the real host allows the same overrides).
FAST_HOST = {
    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:00.500",
    "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.500",
}


def app_env(connection_string: str, **extra: str) -> dict[str, str]:
    """Every setting the app reads, explicitly, so a developer's local.settings.json cannot leak into a test."""
    env = {
        "AzureWebJobsStorage": connection_string,
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "MAX_REPORT_BYTES": "50000000",
        "DELIVERY_URL": "",
        "PUBLIC_BASE_URL": "",
        "RECONCILE_AFTER_SECONDS": "60",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        **FAST_HOST,
    }
    env.update(extra)
    return env


def admin(connection_string: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `python -m shared.admin ...` as an operator would."""
    env = {**os.environ, "AzureWebJobsStorage": connection_string}
    done = subprocess.run(
        [sys.executable, "-m", "shared.admin", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"admin {args} failed ({done.returncode}): {done.stderr}")
    return done


def add_sender(connection_string: str, name: str) -> str:
    return json.loads(admin(connection_string, "senders", "add", name).stdout)["key"]


def own_sender(app: Storage, request: pytest.FixtureRequest, prefix: str) -> Iterator[tuple[str, str]]:
    """A sender of this test's own (name, key); its rows, index entries and blobs are removed afterwards, so no
    reconciler elsewhere finds them."""
    from shared import senders

    name = prefix + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    yield name, senders.add(app.senders, name)
    for entity in app.reports.query_entities("PartitionKey eq @s", parameters={"s": name}, select=["RowKey"]):
        app.reports.delete_entity(name, entity["RowKey"])
    for blob in app.container.list_blob_names(name_starts_with=f"raw/{name}/"):
        app.container.delete_blob(blob)


def poll(fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 60.0, every: float = 0.1) -> T:
    """Call `fetch` until `done(result)`, or fail after `timeout` seconds with the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result):
            return result
        if time.monotonic() > deadline:
            shown = f"{result!r}: {result.text[:2000]}" if isinstance(result, httpx.Response) else repr(result)[:2000]
            raise AssertionError(f"gave up after {timeout}s; last result: {shown}")
        time.sleep(every)


TERMINAL = {"processed", "rejected", "failed"}


@dataclass
class Service:
    """The app under devhost against an Azurite, with HTTP clients per sender."""

    azurite: Azurite
    host: DevHostProcess
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.host.url

    @property
    def conn(self) -> str:
        return self.azurite.connection_string

    def sender(self, name: str) -> str:
        if name not in self.keys:
            self.keys[name] = add_sender(self.conn, name)
        return self.keys[name]

    def client(self, sender: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.sender(sender)}"} if sender else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def post(self, sender: str, body: bytes, content_type: str, **headers: str) -> httpx.Response:
        with self.client(sender) as client:
            return client.post("/api/reports", content=body, headers={"Content-Type": content_type, **headers})

    def report(self, sender: str, report_id: str) -> httpx.Response:
        with self.client(sender) as client:
            return client.get(f"/api/reports/{report_id}")

    def wait_terminal(self, sender: str, report_id: str, timeout: float = 60.0) -> dict:
        response = poll(lambda: self.report(sender, report_id), lambda r: r.status_code == 200, timeout)
        record = response.json()
        assert record["status"] in TERMINAL
        return record


def start_service(azurite: Azurite, start_devhost: Callable[..., DevHostProcess], **env: str) -> Service:
    host = start_devhost(REPO_ROOT, env=app_env(azurite.connection_string, **env))
    return Service(azurite, host)


@contextmanager
def own_service(**env: str) -> Iterator[Service]:
    """A service with its own Azurite (for a test module that needs settings of its own)."""
    with Azurite() as azurite:
        with DevHostProcess(REPO_ROOT, env=app_env(azurite.connection_string, **env)) as host:
            yield Service(azurite, host)


def assert_problem(response: httpx.Response, status: int) -> dict:
    """An RFC 9457 problem+json answer with this status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    return body
