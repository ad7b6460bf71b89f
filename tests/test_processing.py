"""Processing through process_queue.main(): outcomes, determinism, limits, and no crash on any body."""

from __future__ import annotations

import json
from datetime import UTC

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import process_queue
from shared import intake, processing, status
from shared.config import get_settings
from shared.logs import TryAgain
from shared.storage import Storage, result_blob_name
from shared.work import message_for
from tests.service import EXAMPLES

CONTENT_TYPES = ["application/hl7-v2", "application/fhir+json", "application/fhir+ndjson", "text/csv"]
CSV_HEADER = b"patient_id,test_code,result,specimen_collected_at\n"


def submit(storage: Storage, body: bytes, content_type: str, sender: str = "unit-proc") -> str:
    """Ingest (store + enqueue) as POST would, and return the report id."""
    accepted = intake.accept(storage, get_settings(), intake.Submission(sender, body, content_type))
    return accepted.record.id


def run(storage: Storage, report_id: str, sender: str = "unit-proc", dequeue_count: int = 1) -> dict:
    body = message_for(status.read(storage.reports, sender, report_id)).model_dump_json().encode()
    process_queue.main(_Message(body, dequeue_count))
    return status.read(storage.reports, sender, report_id).record().model_dump(mode="json")


class _Message:
    """What the host hands the function: the decoded body and the delivery count."""

    def __init__(self, body: bytes, dequeue_count: int) -> None:
        self._body, self.dequeue_count = body, dequeue_count
        self.id = None  # the host's message id (a real QueueMessage always has one)

    def get_body(self) -> bytes:
        return self._body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(min_size=1, max_size=2000), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bodies_end_rejected_or_processed_never_failed(app: Storage, body: bytes, content_type: str) -> None:
    record = run(app, submit(app, body, content_type))
    assert record["status"] in {"rejected", "processed"}, record
    if record["status"] == "rejected":
        assert record["errors"], "a rejection says why"
    assert record["exceptions"] == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=8), st.text(max_size=8),
                               st.sampled_from(["2026-01-02", "2026-01-02T03:04:05Z", "bad", ""])), max_size=20))
def test_structured_csv_never_fails(app: Storage, rows: list[tuple[str, str, str, str]]) -> None:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["patient_id", "test_code", "result", "specimen_collected_at"])
    writer.writerows(rows)
    record = run(app, submit(app, out.getvalue().encode("utf-8"), "text/csv"))
    assert record["status"] in {"rejected", "processed"}
    assert record["items"]["total"] == record["items"]["accepted"] + record["items"]["rejected"]


def test_processing_twice_gives_byte_identical_results(app: Storage) -> None:
    report_id = submit(app, (EXAMPLES / "report.hl7").read_bytes(), "application/hl7-v2")
    run(app, report_id)
    name = result_blob_name("unit-proc", report_id)
    first = app.container.download_blob(name).readall()
    # A redelivered message for a report mid-processing (the crash case) rewrites the same bytes.
    row = status.read(app.reports, "unit-proc", report_id)
    app.reports.update_entity({"PartitionKey": "unit-proc", "RowKey": report_id, "status": "processing"})
    app.container.delete_blob(name)
    run(app, report_id, dequeue_count=2)
    assert app.container.download_blob(name).readall() == first
    assert row is not None and json.loads(first.splitlines()[0])["report_id"] == report_id


def test_message_for_a_finished_report_is_ignored(app: Storage) -> None:
    report_id = submit(app, (EXAMPLES / "report.csv").read_bytes(), "text/csv")
    done = run(app, report_id)
    assert done["status"] == "processed" and done["attempts"] == 1
    again = run(app, report_id, dequeue_count=1)
    assert again == done


def _status_while_running(app: Storage, monkeypatch: pytest.MonkeyPatch, report_id: str, **run_args: object) -> dict:
    """The status row as a poller would see it while the processor works on the report."""
    seen: dict = {}
    real_parse = processing._parse

    def parse_and_look(raw: bytes, message: object, *rest: object) -> object:
        seen.update(status.read(app.reports, "unit-proc", report_id).record().model_dump(mode="json"))
        return real_parse(raw, message, *rest)

    monkeypatch.setattr(processing, "_parse", parse_and_look)
    run(app, report_id, **run_args)
    return seen


def test_a_large_report_shows_processing_while_it_runs(app: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = b"".join(b"P%d,T1,pos,2026-01-01\n" % i for i in range(processing.MARK_PROCESSING_OVER_BYTES // 20))
    report_id = submit(app, CSV_HEADER + rows, "text/csv")
    seen = _status_while_running(app, monkeypatch, report_id)
    assert seen["status"] == "processing" and seen["attempts"] == 1
    assert status.read(app.reports, "unit-proc", report_id).record().attempts == 1


def test_a_small_report_goes_from_queued_to_processed_in_one_write(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    report_id = submit(app, (EXAMPLES / "report.csv").read_bytes(), "text/csv")
    seen = _status_while_running(app, monkeypatch, report_id)
    assert seen["status"] == "queued" and seen["attempts"] == 0
    done = status.read(app.reports, "unit-proc", report_id).record()
    assert done.status == "processed" and done.attempts == 1


def test_a_try_that_crashed_unrecorded_still_counts(app: Storage) -> None:
    # The first delivery died with its process (nothing written); the host's count says this is the second try.
    report_id = submit(app, (EXAMPLES / "report.csv").read_bytes(), "text/csv")
    assert run(app, report_id, dequeue_count=2)["attempts"] == 2


def test_more_than_10000_items_is_rejected(app: Storage) -> None:
    body = CSV_HEADER + b"".join(b"P%d,T1,pos,2026-01-01\n" % i for i in range(processing.MAX_ITEMS + 1))
    record = run(app, submit(app, body, "text/csv"))
    assert record["status"] == "rejected"
    assert [e["code"] for e in record["errors"]] == ["report.too_many_items"]


def test_exactly_10000_items_is_fine(app: Storage) -> None:
    body = CSV_HEADER + b"".join(b"P%d,T1,pos,2026-01-01\n" % i for i in range(processing.MAX_ITEMS))
    record = run(app, submit(app, body, "text/csv"))
    assert record["status"] == "processed" and record["items"]["accepted"] == processing.MAX_ITEMS


def test_errors_are_capped_at_100_with_a_count_of_the_rest(app: Storage) -> None:
    body = CSV_HEADER + b"P0,T1,pos,2026-01-01\n" + b"".join(b"P%d,T1,pos,not-a-date\n" % i for i in range(150))
    record = run(app, submit(app, body, "text/csv"))
    assert record["status"] == "processed"
    assert record["items"] == {"total": 151, "accepted": 1, "rejected": 150}
    assert len(record["errors"]) == 101
    assert record["errors"][-1]["code"] == "report.issues_truncated" and "50" in record["errors"][-1]["message"]


def test_digest_mismatch_fails_permanently(app: Storage) -> None:
    report_id = submit(app, (EXAMPLES / "report.csv").read_bytes(), "text/csv")
    app.container.upload_blob(f"raw/unit-proc/{report_id}", b"tampered", overwrite=True)
    record = run(app, report_id)
    assert record["status"] == "failed" and [e["code"] for e in record["errors"]] == ["report.digest_mismatch"]


def test_transient_failure_is_recorded_and_reraised_then_failed_on_the_last_try(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.exceptions import ServiceRequestError

    report_id = submit(app, (EXAMPLES / "report.csv").read_bytes(), "text/csv")

    def unavailable(*args: object, **kwargs: object) -> None:
        raise ServiceRequestError("connection refused")

    monkeypatch.setattr(processing, "_download", unavailable)
    for attempt in (1, 2):
        with pytest.raises(TryAgain, match="ServiceRequestError"):
            run(app, report_id, dequeue_count=attempt)
    record = status.read(app.reports, "unit-proc", report_id).record()
    assert record.status == "processing" and [e.attempt for e in record.exceptions] == [1, 2]
    with pytest.raises(TryAgain, match="ServiceRequestError"):
        run(app, report_id, dequeue_count=5)
    record = status.read(app.reports, "unit-proc", report_id).record()
    assert record.status == "failed" and len(record.exceptions) == 3 and record.completed_at


def test_storage_throttling_is_waited_out_without_spending_a_try(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure.core.exceptions import HttpResponseError

    report_id = submit(app, (EXAMPLES / "report.csv").read_bytes(), "text/csv")
    app.queue.clear_messages()
    busy = HttpResponseError("Server Busy")
    busy.status_code = 503
    with monkeypatch.context() as patch:
        patch.setattr(processing, "_download", lambda *a: (_ for _ in ()).throw(busy))
        record = run(app, report_id)  # no exception: the host deletes the message, no try is spent
    assert record["status"] == "queued" and record["attempts"] == 0 and record["exceptions"] == []
    assert not app.queue.peek_messages()  # sent again, hidden for its delay
    assert app.queue.get_queue_properties().approximate_message_count == 1
    hidden = next(iter(app.queue.receive_messages(visibility_timeout=1, max_messages=1)), None)
    assert hidden is None, "hidden for the first delay (10 s)"
    app.queue.clear_messages()


def test_deferral_delays_double_up_to_the_cap_and_stop_at_the_window() -> None:
    from datetime import datetime, timedelta

    from shared import deferral
    from shared.clock import to_iso
    from shared.config import load_settings
    from shared.models import QueueMessage

    settings = load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true", "DELIVERY_RETRY_HOURS": "1"})
    now = datetime(2030, 1, 1, tzinfo=UTC)
    message = QueueMessage(id="r", sender="s", blob="b", sha256="0", content_type="text/csv")
    delays = [deferral.delay_seconds(settings, message.model_copy(update={"deferrals": n}), now) for n in range(9)]
    assert delays == [10, 20, 40, 80, 160, 320, 640, 900, 900]
    late = message.model_copy(update={"deferred_since": to_iso(now - timedelta(minutes=59, seconds=30)),
                                      "deferrals": 8})
    assert deferral.delay_seconds(settings, late, now) <= 31 and not deferral.window_closed(settings, late, now)
    assert deferral.window_closed(settings, late, now + timedelta(seconds=31))


def test_a_second_copy_of_the_work_stands_down_while_the_first_may_run(app: Storage) -> None:
    """Two messages for one report (a duplicate, a forced replay): the row's ETag decides who works. A message that
    finds another message's recent `processing` mark acknowledges itself; a redelivery of the marking message (its
    try crashed) takes over."""
    rows = b"".join(b"P%d,T1,pos,2026-01-01\n" % i for i in range(processing.MARK_PROCESSING_OVER_BYTES // 20))
    report_id = submit(app, CSV_HEADER + rows, "text/csv")
    row = status.read(app.reports, "unit-proc", report_id)
    body = message_for(row).model_dump_json().encode()
    status.write(app.reports, row, {"status": "processing", processing.WORKER: "message-A"})
    settings = get_settings()
    assert processing.process(app, settings, body, 1, "message-B") == "ignored"
    assert status.read(app.reports, "unit-proc", report_id).status.value == "processing"
    assert processing.process(app, settings, body, 2, "message-A") == "rejected"  # it ran (over the item cap)


def test_a_last_try_that_fails_before_delivering_leaves_no_delivery_pending(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report waiting to be delivered (delivery `pending`) whose last try fails for another reason ends `failed`
    with its delivery `failed` too, as the poison give-up records it: it will not be delivered unless replayed."""
    from azure.core.exceptions import ServiceRequestError

    report_id = submit(app, (EXAMPLES / "report.csv").read_bytes(), "text/csv")
    row = status.read(app.reports, "unit-proc", report_id)
    status.write(app.reports, row, {"status": "processing", "delivery": {"status": "pending", "at": None,
                                                                          "http_status": 503}})
    monkeypatch.setattr(processing, "_download", lambda *a, **k: (_ for _ in ()).throw(ServiceRequestError("down")))
    with pytest.raises(TryAgain):
        run(app, report_id, dequeue_count=5)
    record = status.read(app.reports, "unit-proc", report_id).record()
    assert record.status == "failed" and record.delivery is not None and record.delivery.status == "failed"
    assert record.delivery.http_status == 503
