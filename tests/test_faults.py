"""Fault injection: nothing a sender got a 202 for is lost, and nothing is delivered twice with different content.

Each scenario counts reports from POST to terminal status and prints `sent / acknowledged / terminal / lost`.
Run alone with `./scripts/test -m faults`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from azure.storage.blob import BlobServiceClient

from devhost.azurite import Azurite, connection_string, free_port
from devhost.process import DevHostProcess
from tests.downstream import Downstream
from tests.service import (
    EXAMPLES,
    FAULT_LINES,
    TERMINAL,
    Service,
    add_sender,
    admin,
    app_env,
    poll,
    start_service,
)

pytestmark = pytest.mark.faults

HL7 = (EXAMPLES / "report.hl7").read_bytes()
CSV = (EXAMPLES / "report.csv").read_bytes()
DISABLE_PROCESSOR = {"AzureWebJobs.process_queue.Disabled": "true"}


@dataclass
class Tally:
    """What happened to every report a scenario sent."""

    scenario: str
    sent: int = 0
    answers: dict[int, int] = field(default_factory=dict)
    acknowledged: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    note: str = ""  # what else the scenario measured, for the summary
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, response: httpx.Response | None) -> None:
        code = response.status_code if response is not None else 0
        with self.lock:
            self.sent += 1
            self.answers[code] = self.answers.get(code, 0) + 1
            if code == 202:
                self.acknowledged.append(response.json()["id"])

    @property
    def terminal(self) -> int:
        return sum(1 for s in self.statuses.values() if s in TERMINAL)

    @property
    def lost(self) -> int:
        return len(self.acknowledged) - self.terminal

    def line(self) -> str:
        answers = ", ".join(f"{code or 'no answer'}: {n}" for code, n in sorted(self.answers.items()))
        return (f"{self.scenario}: sent {self.sent} / acknowledged {len(self.acknowledged)} / terminal "
                f"{self.terminal} / lost {self.lost}   (answers {answers})" + (f"; {self.note}" if self.note else ""))


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Tally]]:
    made: list[Tally] = []

    def make(scenario: str) -> Tally:
        made.append(Tally(scenario))
        return made[-1]

    yield make
    for t in made:
        request.config.stash.setdefault(FAULT_LINES, []).append(t.line())


def post_many(service: Service, sender: str, count: int, tally: Tally, body: bytes = CSV,
              content_type: str = "text/csv", workers: int = 16) -> None:
    key = service.sender(sender)

    def one(_: int) -> None:
        with httpx.Client(base_url=service.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            try:
                tally.record(client.post("/api/reports", content=body, headers={"Content-Type": content_type}))
            except httpx.TransportError:
                tally.record(None)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(count)))


def statuses(service: Service, sender: str) -> dict[str, str]:
    """Every report of `sender` by id, through the list API: the listing, plus `?status=received` for reports not
    yet queued (those are in the status index only)."""
    found: dict[str, str] = {}
    with service.client(sender) as client:
        for only in ({}, {"status": "received"}):
            cursor = None
            while True:
                params = {"limit": 1000, **only, **({"cursor": cursor} if cursor else {})}
                page = client.get("/api/reports", params=params).json()
                found.update({r["id"]: r["status"] for r in page["reports"]})
                cursor = page["next_cursor"]
                if not cursor:
                    break
    return found


def wait_all_terminal(service: Service, sender: str, tally: Tally, timeout: float = 180) -> None:
    def done(found: dict[str, str]) -> bool:
        tally.statuses = {i: found.get(i, "missing") for i in tally.acknowledged}
        return tally.lost == 0

    poll(lambda: statuses(service, sender), done, timeout=timeout, every=0.5)


def result_blobs(conn: str, sender: str) -> list[str]:
    container = BlobServiceClient.from_connection_string(conn).get_container_client("reports")
    return [b.name for b in container.list_blobs(name_starts_with=f"results/{sender}/")]


def test_processor_disabled_while_hundreds_arrive(
    azurite: Azurite, start_devhost: Callable[..., DevHostProcess], tally: Callable[[str], Tally]
) -> None:
    t = tally("processor disabled, then enabled")
    service = start_service(azurite, start_devhost, **DISABLE_PROCESSOR)
    post_many(service, "fault-disabled", 300, t)
    assert t.answers == {202: 300}
    assert set(statuses(service, "fault-disabled").values()) == {"queued"}
    service.host.stop()

    service = Service(azurite, start_service(azurite, start_devhost).host, service.keys)
    wait_all_terminal(service, "fault-disabled", t)
    assert set(t.statuses.values()) == {"processed"}
    assert len(result_blobs(azurite.connection_string, "fault-disabled")) == 300


def test_host_killed_mid_backlog(
    azurite: Azurite, start_devhost: Callable[..., DevHostProcess], tally: Callable[[str], Tally],
    downstream: Downstream,
) -> None:
    t = tally("devhost SIGKILLed mid-backlog, restarted")
    # A short lock so messages held by the killed host come back in seconds, not the host's 10 minutes.
    env = {"DELIVERY_URL": downstream.url, "DEVHOST_QUEUE_LOCK_SECONDS": "3"}
    service = start_service(azurite, start_devhost, **DISABLE_PROCESSOR)
    post_many(service, "fault-kill", 300, t, body=HL7, content_type="application/hl7-v2")
    service.host.stop()

    service = Service(azurite, start_service(azurite, start_devhost, **env).host, service.keys)
    poll(lambda: len(downstream.keys()), lambda n: n >= 60, timeout=120)
    service.host.kill()
    killed_at = len(set(downstream.keys()))
    assert killed_at < 300, "the kill must land mid-backlog"

    service = Service(azurite, start_service(azurite, start_devhost, **env).host, service.keys)
    wait_all_terminal(service, "fault-kill", t)
    assert set(t.statuses.values()) == {"processed"}
    assert sorted(set(downstream.keys())) == sorted(t.acknowledged), "downstream saw every report"
    bodies: dict[str, set[bytes]] = {}
    for received in downstream.received:
        bodies.setdefault(received.idempotency_key, set()).add(received.body)
    assert all(len(b) == 1 for b in bodies.values()), "a retried delivery carries the same content"
    assert sorted(result_blobs(azurite.connection_string, "fault-kill")) == sorted(
        f"results/fault-kill/{i}.ndjson" for i in t.acknowledged
    )


def test_storage_restarted_during_a_stream_of_posts(
    persistent_azurite: Azurite, start_devhost: Callable[..., DevHostProcess], tally: Callable[[str], Tally]
) -> None:
    t = tally("Azurite stopped and restarted during POSTs")
    service = start_service(persistent_azurite, start_devhost, DEVHOST_QUEUE_LOCK_SECONDS="3")
    service.sender("fault-storage")
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            post_many(service, "fault-storage", 8, t, workers=8)

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        poll(lambda: len(t.acknowledged), lambda n: n >= 40, timeout=60)
        persistent_azurite.stop()
        poll(lambda: t.answers.get(503, 0), lambda n: n >= 8, timeout=60)
        persistent_azurite.start()
        acknowledged_before = len(t.acknowledged)
        poll(lambda: len(t.acknowledged), lambda n: n >= acknowledged_before + 40, timeout=60)
    finally:
        stop.set()
        sender.join()
    assert set(t.answers) <= {202, 503}, t.answers
    assert t.answers.get(503, 0) > 0
    wait_all_terminal(service, "fault-storage", t)
    assert set(t.statuses.values()) <= TERMINAL


OUTAGE_SECONDS = 60


def test_a_one_minute_downstream_outage_delivers_everything_and_fails_nothing(
    azurite: Azurite, start_devhost: Callable[..., DevHostProcess], tally: Callable[[str], Tally],
    downstream: Downstream,
) -> None:
    """A downstream maintenance window used to spend the reports' processing tries (5 × visibilityTimeout) and end
    them `failed`. Now the delivery waits with growing delays (capped at 5 s here) without spending a try."""
    t = tally(f"downstream 503 for {OUTAGE_SECONDS} s, then recovers")
    downstream.default = 503
    service = start_service(azurite, start_devhost, DELIVERY_URL=downstream.url,
                            DELIVERY_RETRY_FIRST_SECONDS="1", DELIVERY_RETRY_MAX_SECONDS="5")
    began = time.monotonic()
    post_many(service, "fault-flaky", 20, t)
    waiting = poll(lambda: statuses(service, "fault-flaky"),
                   lambda s: len(s) == 20 and set(s.values()) == {"processing"}, timeout=60)
    assert waiting
    with service.client("fault-flaky") as client:
        history = client.get(f"/api/waters/report/{t.acknowledged[0]}/history").json()
    assert history["overallStatus"] == "Waiting to Deliver"
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - began)))  # the outage itself: a fixed window
    downstream.default = 200
    recovered = time.monotonic()
    wait_all_terminal(service, "fault-flaky", t)
    assert set(t.statuses.values()) == {"processed"}
    tries = [downstream.keys().count(i) for i in t.acknowledged]
    for report_id in t.acknowledged:
        record = service.report("fault-flaky", report_id).json()
        assert record["delivery"]["status"] == "delivered"
        assert record["attempts"] == 1 and record["exceptions"] == [], "no processing try was spent"
    t.note = (f"{len(t.acknowledged)} delivered {time.monotonic() - recovered:.1f} s after the downstream came back; "
              f"{min(tries)}-{max(tries)} delivery tries each; none failed")


def test_downstream_down_for_good_gives_up_after_the_window_then_replayed(
    azurite: Azurite, start_devhost: Callable[..., DevHostProcess], tally: Callable[[str], Tally],
    downstream: Downstream,
) -> None:
    t = tally("downstream 503 past DELIVERY_RETRY_HOURS, then replayed")
    downstream.default = 503
    service = start_service(azurite, start_devhost, DELIVERY_URL=downstream.url, DELIVERY_RETRY_HOURS="0.002",
                            DELIVERY_RETRY_FIRST_SECONDS="1", DELIVERY_RETRY_MAX_SECONDS="2")
    post_many(service, "fault-down", 10, t)
    wait_all_terminal(service, "fault-down", t, timeout=90)
    assert set(t.statuses.values()) == {"failed"}
    for report_id in t.acknowledged:
        record = service.report("fault-down", report_id).json()
        assert downstream.keys().count(report_id) >= 3, "tried until the window closed"
        assert record["attempts"] == 1 and record["delivery"]["status"] == "failed"
        assert record["errors"][-1]["code"] == "delivery.gave_up"
    listed = poll(lambda: admin(service.conn, "poison", "list").stdout,
                  lambda out: all(i in out for i in t.acknowledged), timeout=30)
    assert len(listed.strip().splitlines()) >= 10

    downstream.default = 200
    admin(service.conn, "poison", "replay", "--all")
    t.statuses = {}
    wait_all_terminal(service, "fault-down", t)
    poll(lambda: statuses(service, "fault-down"), lambda s: set(s.values()) == {"processed"}, timeout=60)
    for report_id in t.acknowledged:
        assert service.report("fault-down", report_id).json()["delivery"]["status"] == "delivered"


def test_crash_between_store_and_enqueue_is_reconciled(
    azurite: Azurite, start_devhost: Callable[..., DevHostProcess], tally: Callable[[str], Tally],
) -> None:
    """The queue endpoint is unreachable for this host (blob and table work): the enqueue fails after the store."""
    t = tally("enqueue fails after store; reconciler recovers")
    blob, _, table = azurite.ports
    broken_queue = connection_string(blob, free_port(), table)
    ingest_only = start_devhost(env=app_env(broken_queue, **DISABLE_PROCESSOR))
    key = add_sender(azurite.connection_string, "fault-enqueue")
    service = Service(azurite, ingest_only, {"fault-enqueue": key})
    post_many(service, "fault-enqueue", 5, t, workers=5)
    assert t.answers == {202: 5}, "stored, so acknowledged (a 503 would make the sender store each again)"
    stuck = statuses(service, "fault-enqueue")
    assert sorted(stuck) == sorted(t.acknowledged) and set(stuck.values()) == {"received"}
    ingest_only.stop()

    processor = start_service(azurite, start_devhost, RECONCILE_AFTER_SECONDS="0")
    service = Service(azurite, processor.host, service.keys)
    response = httpx.post(f"{service.url}/admin/functions/reconcile_timer", json={"input": ""})
    assert response.status_code == 202
    wait_all_terminal(service, "fault-enqueue", t, timeout=60)
    assert set(t.statuses.values()) == {"processed"}


def test_tally_counts_lost_reports() -> None:
    """The scenarios' own arithmetic: an acknowledged report with no terminal status counts as lost."""
    t = Tally("self-check", acknowledged=["a", "b"], statuses={"a": "processed", "b": "queued"})
    assert (t.terminal, t.lost) == (1, 1)
