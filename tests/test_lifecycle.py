"""The report lifecycle through devhost: processor stopped, storage down, retries, poison, replay, reconcile."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient

from devhost.azurite import Azurite
from devhost.process import DevHostProcess
from shared.lifecycle import TERMINAL
from tests.downstream import Downstream
from tests.service import EXAMPLES, Service, admin, poll, start_service

CSV = (EXAMPLES / "report.csv").read_bytes()
HL7 = (EXAMPLES / "report.hl7").read_bytes()
DISABLE_PROCESSOR = {"AzureWebJobs.process_queue.Disabled": "true"}


@pytest.fixture
def fresh_azurite() -> Iterator[Azurite]:
    """A clean in-memory Azurite per test, so queue and poison counts are this test's alone."""
    with Azurite() as azurite:
        yield azurite


def poison_bodies(conn: str) -> list[bytes]:
    queue = QueueClient.from_connection_string(conn, "reports-poison", message_decode_policy=BinaryBase64DecodePolicy())
    return [m.content for m in queue.peek_messages(max_messages=32)]


def test_reports_wait_while_the_processor_is_disabled(
    fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess]
) -> None:
    service = start_service(fresh_azurite, start_devhost, **DISABLE_PROCESSOR)
    ids = [service.post("lab-a", CSV, "text/csv").json()["id"] for _ in range(5)]
    for report_id in ids:
        pending = service.report("lab-a", report_id)
        assert pending.status_code == 202
        assert pending.json()["status"] == "queued"
        assert int(pending.headers["retry-after"]) >= 1
    assert httpx.get(service.url + "/api/health").json()["queue_depth"] == 5
    service.host.stop()

    service = Service(fresh_azurite, start_service(fresh_azurite, start_devhost).host, service.keys)
    for report_id in ids:
        assert service.wait_terminal("lab-a", report_id)["status"] == "processed"


def test_storage_down_means_503_and_nothing_acknowledged(
    persistent_azurite: Azurite, start_devhost: Callable[..., DevHostProcess]
) -> None:
    # A message taken just as storage went away cannot be released; it comes back when its lease lapses
    # (10 minutes on the real host), shortened here.
    service = start_service(persistent_azurite, start_devhost, DEVHOST_QUEUE_LOCK_SECONDS="3")
    accepted = service.post("lab-a", CSV, "text/csv")
    assert accepted.status_code == 202
    persistent_azurite.stop()

    down = service.post("lab-a", CSV, "text/csv")
    assert down.status_code == 503, down.text
    assert down.headers["content-type"].startswith("application/problem+json")
    assert int(down.headers["retry-after"]) >= 1
    assert httpx.get(service.url + "/api/health").status_code == 503

    persistent_azurite.start()
    assert service.wait_terminal("lab-a", accepted.json()["id"])["status"] == "processed"
    with service.client("lab-a") as client:
        listed = client.get("/api/reports").json()["reports"]
    assert [r["id"] for r in listed] == [accepted.json()["id"]]


def test_missing_raw_blob_fails_permanently(
    fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess]
) -> None:
    service = start_service(fresh_azurite, start_devhost, **DISABLE_PROCESSOR)
    report_id = service.post("lab-a", CSV, "text/csv").json()["id"]
    BlobServiceClient.from_connection_string(service.conn).get_container_client("reports").delete_blob(
        f"raw/lab-a/{report_id}"
    )
    service.host.stop()
    service = Service(fresh_azurite, start_service(fresh_azurite, start_devhost).host, service.keys)
    record = service.wait_terminal("lab-a", report_id)
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert [e["code"] for e in record["errors"]] == ["report.raw_missing"]


def test_intake_answers_while_processing_holds_every_worker_thread(
    fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess], downstream: Downstream
) -> None:
    """Intake and status run on threads of their own (HTTP_THREADS), not on the worker's pool that processing uses:
    with that pool at one thread, held by a delivery the downstream does not answer, a sender still gets its 202
    and can poll."""
    downstream.release = threading.Event()
    service = start_service(fresh_azurite, start_devhost, DELIVERY_URL=downstream.url, DELIVERY_TIMEOUT_SECONDS="60",
                            PYTHON_THREADPOOL_THREAD_COUNT="1")
    try:
        first = service.post("lab-a", HL7, "application/hl7-v2").json()["id"]
        poll(downstream.keys, lambda keys: first in keys, timeout=30)  # the only worker thread waits on delivery
        with service.client("lab-a", timeout=10) as client:
            second = client.post("/api/reports", content=CSV, headers={"Content-Type": "text/csv"})
            assert second.status_code == 202, second.text
            polled = client.get(f"/api/reports/{first}")
        assert polled.status_code == 202 and polled.json()["status"] not in TERMINAL  # still being delivered
    finally:
        downstream.release.set()
    assert service.wait_terminal("lab-a", first)["status"] == "processed"
    assert service.wait_terminal("lab-a", second.json()["id"])["status"] == "processed"


def test_a_downstream_down_past_the_window_fails_then_replays(
    fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess], downstream: Downstream
) -> None:
    """A transient downstream failure waits (growing delays, no processing try spent) until DELIVERY_RETRY_HOURS
    have passed; then the report is `failed` and its message is in the poison queue for the operators."""
    downstream.default = 503
    service = start_service(fresh_azurite, start_devhost, DELIVERY_URL=downstream.url, DELIVERY_RETRY_HOURS="0.001",
                            DELIVERY_RETRY_FIRST_SECONDS="1", DELIVERY_RETRY_MAX_SECONDS="1")
    report_id = service.post("lab-a", HL7, "application/hl7-v2").json()["id"]

    record = service.wait_terminal("lab-a", report_id)
    assert record["status"] == "failed"
    assert record["attempts"] == 1 and record["exceptions"] == []
    assert record["errors"][-1]["code"] == "delivery.gave_up"
    assert record["delivery"]["status"] == "failed" and record["delivery"]["http_status"] == 503
    assert downstream.keys().count(report_id) >= 2 and set(downstream.keys()) == {report_id}
    # Its message went to the poison queue, where the poison_queue trigger records it for the operators.
    listed = poll(lambda: admin(service.conn, "poison", "list").stdout, lambda out: report_id in out, timeout=30)
    assert "failed" in listed and len(listed.strip().splitlines()) == 1

    downstream.default = 200
    replay = admin(service.conn, "poison", "replay", "--all")
    assert report_id in replay.stdout
    record = service.wait_terminal("lab-a", report_id)
    assert record["status"] == "processed"
    assert record["delivery"]["status"] == "delivered" and record["errors"] == []
    assert record["attempts"] == 2
    assert poison_bodies(service.conn) == []
    bodies = {r.body for r in downstream.received}
    assert len(bodies) == 1, "every try carries byte-identical content"


def test_downstream_refusal_is_permanent(
    fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess], downstream: Downstream
) -> None:
    downstream.default = 400
    service = start_service(fresh_azurite, start_devhost, DELIVERY_URL=downstream.url)
    report_id = service.post("lab-a", CSV, "text/csv").json()["id"]
    record = service.wait_terminal("lab-a", report_id)
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["delivery"] == {"status": "failed", "at": record["delivery"]["at"], "http_status": 400}
    assert [e["code"] for e in record["errors"]] == ["delivery.refused"]

    # Replay by id works with no poison message at all.
    downstream.default = 200
    admin(service.conn, "poison", "replay", "--id", report_id)
    record = service.wait_terminal("lab-a", report_id)
    assert record["status"] == "processed" and record["delivery"]["status"] == "delivered"


def test_replay_refuses_finished_reports(fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess]) -> None:
    service = start_service(fresh_azurite, start_devhost)
    report_id = service.post("lab-a", CSV, "text/csv").json()["id"]
    service.wait_terminal("lab-a", report_id)
    done = admin(service.conn, "poison", "replay", "--id", report_id, check=False)
    assert done.returncode == 2 and "processed" in done.stderr
