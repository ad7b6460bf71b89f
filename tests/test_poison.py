"""Every route to the poison queue ends with the report `failed` (and replayable), and the operators' poison
commands tell the truth without changing what they read."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient, TextBase64EncodePolicy

from devhost.azurite import Azurite
from devhost.process import DevHostProcess
from shared import admin, config, poison, processing, status
from shared.logs import TryAgain
from shared.storage import Storage
from shared.work import message_for
from tests.downstream import Downstream
from tests.service import EXAMPLES, Service, poll, start_service
from tests.service import admin as admin_cli
from tests.test_processing import run, submit

CSV = (EXAMPLES / "report.csv").read_bytes()
DISABLE_PROCESSOR = {"AzureWebJobs.process_queue.Disabled": "true"}
# The timer's reconciler would enqueue `received` rows whenever the clock says: these tests run it themselves.
NO_TIMER = {"AzureWebJobs.reconcile_timer.Disabled": "true"}


def queue(conn: str, name: str) -> QueueClient:
    return QueueClient.from_connection_string(conn, name, message_encode_policy=TextBase64EncodePolicy(),
                                              message_decode_policy=BinaryBase64DecodePolicy())


class _Poisoned:
    """A message as the host hands it to the poison_queue trigger."""

    def __init__(self, body: bytes, message_id: str, inserted: datetime | None, dequeue_count: int = 1) -> None:
        self._body, self.id, self.insertion_time, self.dequeue_count = body, message_id, inserted, dequeue_count

    def get_body(self) -> bytes:
        return self._body


def poison_as_the_host_does(storage: Storage, sender: str, report_id: str, message_id: str | None = None) -> None:
    """The host copies the work message to `reports-poison` after the last try; its trigger then runs."""
    import poison_queue

    row = status.read(storage.reports, sender, report_id)
    body = message_for(row).model_dump_json().encode()
    poison_queue.main(_Poisoned(body, message_id or f"m-{report_id}", datetime.now(UTC)))


def open_ids(storage: Storage) -> set[str]:
    return {w.report_id for w in poison.waiting(storage.poisoned)}


def clear_poison_of(storage: Storage, report_ids: set[str]) -> None:
    """Leave the shared Azurite's poison record as other tests found it."""
    for waiting in list(poison.waiting(storage.poisoned)):
        if waiting.report_id in report_ids:
            poison.close(storage, waiting.sender, waiting.report_id)


# --- in process, against the session Azurite ----------------------------------------------------------------


def test_a_failed_final_write_is_given_up_by_the_poison_trigger_then_replayed(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    report_id = submit(app, CSV, "text/csv")
    with monkeypatch.context() as patch:
        patch.setattr(processing, "_download", lambda *a: (_ for _ in ()).throw(ServiceRequestError("down")))
        patch.setattr(processing.status, "update", lambda *a, **k: (_ for _ in ()).throw(ServiceRequestError("down")))
        with pytest.raises(TryAgain, match="ServiceRequestError"):
            run(app, report_id, dequeue_count=5)  # the last try: its `failed` write fails too
    assert status.read(app.reports, "unit-proc", report_id).status.value == "queued"
    try:
        poison_as_the_host_does(app, "unit-proc", report_id)
        record = status.read(app.reports, "unit-proc", report_id).record()
        assert record.status == "failed" and record.completed_at
        assert record.exceptions[-1].type == poison.GIVEN_UP and "poison" in record.exceptions[-1].message
        assert report_id in open_ids(app)
        poison_as_the_host_does(app, "unit-proc", report_id)  # the trigger retried, or a second copy
        assert status.read(app.reports, "unit-proc", report_id).record() == record, "given up once"
        assert [w.report_id for w in poison.waiting(app.poisoned)].count(report_id) == 1, "one entry per report"

        assert admin.main(["poison", "replay", "--id", report_id]) == 0
        assert report_id not in open_ids(app)
        assert run(app, report_id)["status"] == "processed"
    finally:
        clear_poison_of(app, {report_id})


def test_a_message_that_is_no_work_message_is_recorded_and_harms_nothing(app: Storage) -> None:
    """The host poisons a message that is not base64 (or not ours) as it is: it is kept for the record (its first
    bytes), waits for no replay, and the reports around it are recorded as usual."""
    report_id = submit(app, CSV, "text/csv")
    try:
        assert poison.record(app, b'{"v":1,"id":"not base64"}', "junk-1", None) == "unreadable"
        poison_as_the_host_does(app, "unit-proc", report_id)
        assert status.read(app.reports, "unit-proc", report_id).status.value == "failed"
        assert report_id in open_ids(app) and "not base64" not in {w.report_id for w in poison.waiting(app.poisoned)}
    finally:
        clear_poison_of(app, {report_id})


def test_a_forged_work_message_is_kept_as_it_came_never_as_keys(app: Storage) -> None:
    """A message shaped like a work message whose sender or id could not be a table key (or that is too long to be
    ours) is recorded as unreadable: it opens nothing and fails no write."""
    forged = {"v": 1, "id": "01KB00000000000000000000AA", "sender": "lab/one#", "blob": "raw/x/y",
              "sha256": "0" * 64, "content_type": "text/csv"}
    assert poison.record(app, json.dumps(forged).encode(), "forged-1", None) == "unreadable"
    long_type = {**forged, "sender": "lab-one", "content_type": "text/csv;" + "x" * 40_000}
    assert poison.record(app, json.dumps(long_type).encode(), "forged-2", None) == "unreadable"
    assert not {w.sender for w in poison.waiting(app.poisoned)} & {"lab/one#", "lab-one"}


def test_the_poison_trigger_never_lets_its_message_fall_to_a_queue_nobody_reads(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While recording fails (storage in trouble), tries raise a value-free TryAgain; the last try puts the message
    back on the poison queue for later instead of letting the host move it to `reports-poison-poison`."""
    import poison_queue

    report_id = submit(app, CSV, "text/csv")
    body = message_for(status.read(app.reports, "unit-proc", report_id)).model_dump_json().encode()
    monkeypatch.setattr(poison, "RETRY_LATER_SECONDS", 1)
    with monkeypatch.context() as patch:
        patch.setattr(app.poisoned, "upsert_entity",
                      lambda *a, **k: (_ for _ in ()).throw(ServiceRequestError(f"down {report_id}")))
        with pytest.raises(TryAgain) as raised:
            poison_queue.main(_Poisoned(body, "m-retry", datetime.now(UTC), dequeue_count=1))
        assert report_id not in str(raised.value) and "ServiceRequestError" in str(raised.value)
        poison_queue.main(_Poisoned(body, "m-retry", datetime.now(UTC), dequeue_count=5))  # the last try: no raise

    def ours() -> object:
        found = [m for m in app.poison.receive_messages(max_messages=32, visibility_timeout=1)
                 if report_id in base64.b64decode(m.content).decode()]
        return found[0] if found else None

    back = poll(ours, lambda m: m is not None, timeout=10)
    app.poison.delete_message(back)


def test_ten_thousand_waiting_reports_keep_listing_and_health_to_one_query(
    app: Storage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old sweep received every poison message on every pass (500: 21 s). Now health counts one page of the
    record, `poison list` stops at its limit, and nothing walks the queue."""
    from shared import table_batch

    seeded = [f"01J{n:023d}" for n in range(10_000)]
    for start in range(0, len(seeded), 100):
        table_batch.submit(app.poisoned, [("upsert", {"PartitionKey": poison.OPEN, "RowKey": f"bulk~{rid}",
                                                      "arrived_at": "2026-12-01T00:00:00.000Z",
                                                      "message": message_json("bulk", rid)})
                                          for rid in seeded[start:start + 100]])
    pages: list[int] = []
    real_query = app.poisoned.query_entities

    def counting(*args: object, **kwargs: object) -> object:
        pages.append(1)
        return real_query(*args, **kwargs)

    try:
        monkeypatch.setattr(app.poisoned, "query_entities", counting)
        assert poison.depth(app) >= poison.DEPTH_PAGE and len(pages) == 1
        assert admin.cmd_poison_list(app, limit=20) == 0
        out, err = capsys.readouterr()
        assert len(out.splitlines()) == 20 and "more than 20 waiting" in err
    finally:
        monkeypatch.undo()
        for start in range(0, len(seeded), 100):
            table_batch.submit(app.poisoned, [("delete", {"PartitionKey": poison.OPEN, "RowKey": f"bulk~{rid}"})
                                              for rid in seeded[start:start + 100]])


def message_json(sender: str, report_id: str) -> str:
    return json.dumps({"v": 1, "id": report_id, "sender": sender, "blob": f"raw/{sender}/{report_id}",
                       "sha256": "0" * 64, "content_type": "text/csv"})


def test_a_poison_message_from_before_a_replay_leaves_the_replayed_report_alone(app: Storage) -> None:
    report_id = submit(app, CSV, "text/csv")
    row = status.read(app.reports, "unit-proc", report_id)
    message = message_for(row)
    row = status.write(app.reports, row, {"status": "failed"})
    admin.replay_report(app, row)  # the operator replays: the row now is newer than the old poison message
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert not poison.give_up(app, message, poisoned_at=an_hour_ago)
    assert status.read(app.reports, "unit-proc", report_id).status.value == "queued"
    assert poison.give_up(app, message, poisoned_at=datetime.now(UTC))
    assert status.read(app.reports, "unit-proc", report_id).status.value == "failed"


def test_a_replay_whose_send_fails_is_left_received_and_the_reconciler_sends_it(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replay marked the report `queued` before sending: a failed send left it `queued` with no message, for ever."""
    from shared import reconcile, work

    report_id = submit(app, CSV, "text/csv")
    row = status.write(app.reports, status.read(app.reports, "unit-proc", report_id), {"status": "failed"})
    app.queue.clear_messages()
    with monkeypatch.context() as patch:
        patch.setattr(work, "send", lambda *a: (_ for _ in ()).throw(ServiceRequestError("queue down")))
        with pytest.raises(admin.AdminError, match="reconciler will send it"):
            admin.replay_report(app, row)
    assert status.read(app.reports, "unit-proc", report_id).status.value == "received"
    monkeypatch.setenv("RECONCILE_AFTER_SECONDS", "0")
    config.get_settings.cache_clear()
    assert reconcile.reconcile(app, config.get_settings()) >= 1
    assert status.read(app.reports, "unit-proc", report_id).status.value == "queued"
    assert run(app, report_id)["status"] == "processed"


def test_a_report_at_work_is_not_replayed_beside_itself(app: Storage) -> None:
    """`replay --id` twice on a report still processing ran three copies at once."""
    report_id = submit(app, CSV, "text/csv")
    row = status.read(app.reports, "unit-proc", report_id)  # queued: its message is on the queue
    with pytest.raises(admin.AdminError, match="--force"):
        admin.replay_report(app, row)
    row = status.write(app.reports, row, {"status": "processing"})
    with pytest.raises(admin.AdminError, match="--force"):
        admin.replay_report(app, row)
    with pytest.raises(admin.AdminError, match="may still be running"):
        admin.replay_report(app, row, force=True)
    # Once its invocation can no longer be running (functionTimeout past its last write), --force replays it.
    row.written_at = datetime.now(UTC) - timedelta(hours=1)
    admin.replay_report(app, row, force=True)
    assert status.read(app.reports, "unit-proc", report_id).status.value == "queued"
    app.queue.clear_messages()


def test_replay_tells_the_truth_about_items_and_delivery(
    app: Storage, monkeypatch: pytest.MonkeyPatch, downstream: Downstream
) -> None:
    monkeypatch.setenv("DELIVERY_URL", downstream.url)
    config.get_settings.cache_clear()
    downstream.default = 400
    report_id = submit(app, CSV, "text/csv")
    refused = run(app, report_id)
    assert refused["status"] == "failed" and refused["delivery"]["status"] == "failed"
    assert refused["items"] == {"total": 3, "accepted": 3, "rejected": 0}, "the body parsed: its counts are known"

    admin.replay_report(app, status.read(app.reports, "unit-proc", report_id))
    queued = status.read(app.reports, "unit-proc", report_id).record().model_dump(mode="json")
    assert queued["status"] == "queued" and queued["completed_at"] is None and queued["errors"] == []
    assert queued["delivery"]["status"] == "pending"

    downstream.default = 200
    done = run(app, report_id)
    assert done["status"] == "processed" and done["delivery"]["status"] == "delivered" and done["completed_at"]
    assert done["items"] == refused["items"]


def test_last_try_failing_after_parsing_keeps_the_item_counts(app: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    report_id = submit(app, CSV, "text/csv")
    real_upload = app.container.upload_blob

    def results_unwritable(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("results/"):
            raise ServiceRequestError("storage unreachable")
        return real_upload(name, *args, **kwargs)

    monkeypatch.setattr(app.container, "upload_blob", results_unwritable)
    with pytest.raises(TryAgain, match="ServiceRequestError"):
        run(app, report_id, dequeue_count=5)
    record = status.read(app.reports, "unit-proc", report_id).record()
    assert record.status == "failed" and record.items is not None and record.items.accepted == 3


# --- through devhost: the host poisons a message without calling the app ---------------------------------------


@pytest.fixture(scope="module")
def fresh_azurite() -> Iterator[Azurite]:
    """An Azurite for this module's devhost tests alone, so poison counts are theirs (each leaves it empty)."""
    with Azurite() as azurite:
        yield azurite


def test_message_poisoned_without_running_ends_failed_and_replays(
    fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess]
) -> None:
    service = start_service(fresh_azurite, start_devhost, **DISABLE_PROCESSOR, **NO_TIMER)
    report_id = service.post("lab-p", CSV, "text/csv").json()["id"]
    stuck = service.post("lab-p", CSV, "text/csv").json()["id"]
    service.host.stop()
    work = queue(service.conn, "reports")
    # Each delivery of these messages "crashed the worker": five receives, nothing recorded.
    for _ in range(5):
        for message in work.receive_messages(max_messages=32, visibility_timeout=30):
            work.update_message(message.id, pop_receipt=message.pop_receipt, visibility_timeout=0)

    service = Service(fresh_azurite, start_service(fresh_azurite, start_devhost, **NO_TIMER).host, service.keys)
    # The host poisons both without running the app; its poison trigger records them and gives them up.
    for one in (report_id, stuck):
        record = poll(lambda rid=one: service.report("lab-p", rid), lambda r: r.status_code == 200, timeout=90).json()
        assert record["status"] == "failed" and record["completed_at"]
        assert [e["type"] for e in record["exceptions"]] == [poison.GIVEN_UP]
    poisoned = queue(service.conn, "reports-poison")
    poll(lambda: poisoned.peek_messages(max_messages=32), lambda m: m == [], timeout=30)  # taken by the trigger

    listed = [admin_cli(service.conn, "poison", "list") for _ in range(2)]
    assert listed[0].stdout == listed[1].stdout, "listing changes nothing"
    assert report_id in listed[0].stdout and "failed" in listed[0].stdout
    health = httpx.get(f"{service.url}/api/health").json()
    assert health["poison_depth"] == 2

    replayed = admin_cli(service.conn, "poison", "replay", "--all").stdout
    assert report_id in replayed and stuck in replayed
    for one in (report_id, stuck):
        done = service.wait_terminal("lab-p", one)
        assert done["status"] == "processed" and done["exceptions"][0]["type"] == poison.GIVEN_UP
    assert admin_cli(service.conn, "poison", "list").stdout == ""
    assert httpx.get(f"{service.url}/api/health").json()["poison_depth"] == 0


def test_many_copies_of_a_finished_reports_message_wait_as_one_and_are_cleared(
    fresh_azurite: Azurite, start_devhost: Callable[..., DevHostProcess]
) -> None:
    service = start_service(fresh_azurite, start_devhost, **NO_TIMER)
    report_id = service.post("lab-q", CSV, "text/csv").json()["id"]
    done = service.wait_terminal("lab-q", report_id)
    poisoned = queue(service.conn, "reports-poison")
    storage = Storage.from_connection_string(service.conn)
    row = status.read(storage.reports, "lab-q", report_id)
    for _ in range(40):  # e.g. duplicates of work that finished through another copy
        poisoned.send_message(message_for(row).model_dump_json())
    day = datetime.now(UTC).strftime("%Y%m%d")

    def recorded() -> int:
        return sum(1 for e in storage.poisoned.query_entities("PartitionKey eq @d", parameters={"d": day})
                   if e.get("report_id") == report_id)

    poll(recorded, lambda n: n == 40, timeout=60)  # every poison message is in the day's record
    assert poisoned.peek_messages(max_messages=32) == []

    listed = admin_cli(service.conn, "poison", "list")
    assert listed.stdout.count(report_id) == 1 and "processed" in listed.stdout
    cleared = admin_cli(service.conn, "poison", "replay", "--all")
    assert cleared.stdout.count(f"cleared {report_id}") == 1 and "already processed" in cleared.stdout
    assert admin_cli(service.conn, "poison", "list").stdout == ""
    assert service.report("lab-q", report_id).json() == done, "a finished report is left as it was"


def test_the_poison_record_is_kept_for_ninety_days_then_dropped_by_day(app: Storage) -> None:
    from shared import checkpoints

    now = datetime(2031, 8, 1, 3, tzinfo=UTC)
    old_day = (now - timedelta(days=poison.RECORD_DAYS + 1)).strftime("%Y%m%d")
    kept_day = (now - timedelta(days=poison.RECORD_DAYS - 1)).strftime("%Y%m%d")
    for day in (old_day, kept_day):
        app.poisoned.upsert_entity({"PartitionKey": day, "RowKey": "010203000000~m1", "report_id": "r"})
    checkpoints.clear(app.checkpoints, poison.PURGE_JOB, [""])
    try:
        assert poison.purge_record(app.poisoned, app.checkpoints, now) == 1
        assert list(app.poisoned.query_entities("PartitionKey eq @d", parameters={"d": old_day})) == []
        assert len(list(app.poisoned.query_entities("PartitionKey eq @d", parameters={"d": kept_day}))) == 1
        assert poison.purge_record(app.poisoned, app.checkpoints, now) == 0  # once a day
    finally:
        app.poisoned.delete_entity(kept_day, "010203000000~m1")
        checkpoints.clear(app.checkpoints, poison.PURGE_JOB, [""])
