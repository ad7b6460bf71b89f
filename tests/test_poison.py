"""Every route to the poison queue ends with the report `failed` (and replayable), and the operators' poison
commands tell the truth without changing what they read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.functions.timer import TimerRequest
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient, TextBase64EncodePolicy

import reconcile_timer
from devhost.azurite import Azurite
from devhost.process import DevHostProcess
from shared.logs import TryAgain
from shared import admin, config, poison, processing, status
from shared.storage import Storage
from shared.work import message_for
from tests.downstream import Downstream
from tests.service import EXAMPLES, Service, admin as admin_cli, poll, start_service
from tests.test_processing import run, submit

CSV = (EXAMPLES / "report.csv").read_bytes()
DISABLE_PROCESSOR = {"AzureWebJobs.process_queue.Disabled": "true"}
# The timer's own sweep would read the poison queue whenever the clock says: these tests run it themselves.
NO_TIMER = {"AzureWebJobs.reconcile_timer.Disabled": "true"}


def queue(conn: str, name: str) -> QueueClient:
    return QueueClient.from_connection_string(conn, name, message_encode_policy=TextBase64EncodePolicy(),
                                              message_decode_policy=BinaryBase64DecodePolicy())


def poison_as_the_host_does(storage: Storage, sender: str, report_id: str) -> None:
    """The host copies the work message to `reports-poison` after the last try."""
    row = status.read(storage.reports, sender, report_id)
    storage.poison.send_message(message_for(row).model_dump_json())


def clear_poison_of(storage: Storage, report_ids: set[str], message_ids: frozenset[str] = frozenset()) -> None:
    """Leave the shared Azurite's poison queue as other tests found it."""
    for item in poison.walk(storage, lease_seconds=30):
        if (item.message is not None and item.message.id in report_ids) or item.stored.id in message_ids:
            poison.delete(storage, item.stored)
        else:
            poison.restore(storage, item.stored)


# --- in process, against the session Azurite ----------------------------------------------------------------


def test_a_failed_final_write_is_given_up_by_the_timer_then_replayed(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    report_id = submit(app, CSV, "text/csv")
    with monkeypatch.context() as patch:
        patch.setattr(processing, "_download", lambda *a: (_ for _ in ()).throw(ServiceRequestError("down")))
        patch.setattr(processing.status, "update", lambda *a, **k: (_ for _ in ()).throw(ServiceRequestError("down")))
        with pytest.raises(TryAgain, match="ServiceRequestError"):
            run(app, report_id, dequeue_count=5)  # the last try: its `failed` write fails too
    assert status.read(app.reports, "unit-proc", report_id).status.value == "queued"
    poison_as_the_host_does(app, "unit-proc", report_id)
    try:
        reconcile_timer.main(TimerRequest())
        record = status.read(app.reports, "unit-proc", report_id).record()
        assert record.status == "failed" and record.completed_at
        assert record.exceptions[-1].type == poison.GIVEN_UP and "poison" in record.exceptions[-1].message
        reconcile_timer.main(TimerRequest())
        assert status.read(app.reports, "unit-proc", report_id).record() == record, "given up once"

        assert admin.main(["poison", "replay", "--id", report_id]) == 0
        assert run(app, report_id)["status"] == "processed"
    finally:
        clear_poison_of(app, {report_id})


def test_a_message_that_is_not_base64_does_not_stop_the_sweep(
    app: Storage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The host poisons a message that is not base64 as it is; the SDK's decoding would fail every batch holding
    it, and the reports behind it would never end `failed`."""
    raw = QueueClient.from_connection_string(config.get_settings().storage.connection_string, "reports-poison")
    junk = raw.send_message('{"v":1,"id":"not base64"}')
    report_id = submit(app, CSV, "text/csv")
    poison_as_the_host_does(app, "unit-proc", report_id)  # pending, its message behind the junk one
    try:
        reconcile_timer.main(TimerRequest())
        assert status.read(app.reports, "unit-proc", report_id).status.value == "failed"
        assert admin.main(["poison", "list"]) == 0
        listed = capsys.readouterr().out
        assert "(unreadable)" in listed and report_id in listed
    finally:
        clear_poison_of(app, {report_id}, frozenset({junk.id}))


def test_replay_all_reaches_messages_behind_more_than_a_batch_of_skipped_ones(
    app: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipped messages given back at once came round again in the same walk: a batch of nothing but them ended
    it, so the message behind them was never replayed (and the command waited out its deadline)."""
    monkeypatch.setattr(poison, "WALK_LEASE_SECONDS", 5)  # the deadline, should the walk stop short
    raw = QueueClient.from_connection_string(config.get_settings().storage.connection_string, "reports-poison")
    junk = frozenset(raw.send_message(f'{{"unreadable": {n}}}').id for n in range(2 * poison.PEEK_LIMIT + 1))
    report_id = submit(app, CSV, "text/csv")
    poison_as_the_host_does(app, "unit-proc", report_id)  # behind every unreadable one
    assert poison.give_up(app, message_for(status.read(app.reports, "unit-proc", report_id)), None)
    try:
        assert admin.main(["poison", "replay", "--all"]) == 1  # skipped ones are reported
        assert status.read(app.reports, "unit-proc", report_id).status.value == "queued"
        walked = list(poison.walk(app, 5))  # every visible message: the skipped ones were given back
        for item in walked:
            poison.restore(app, item.stored)
        assert junk <= {item.stored.id for item in walked}
        assert report_id not in {item.message.id for item in walked if item.message is not None}
    finally:
        clear_poison_of(app, {report_id}, junk)


def test_a_sweep_reads_the_row_of_a_settled_message_once(app: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that finished keeps its poison message until an operator clears it: later passes skip its row."""
    report_id = submit(app, CSV, "text/csv")
    run(app, report_id)  # processed
    poison_as_the_host_does(app, "unit-proc", report_id)
    reads: list[str] = []
    real_read = status.read
    monkeypatch.setattr(status, "read", lambda table, sender, rid: reads.append(rid) or real_read(table, sender, rid))
    try:
        assert poison.sweep(app) == 0
        assert reads.count(report_id) == 1
        assert poison.sweep(app) == 0
        assert reads.count(report_id) == 1, "settled on the first pass"
    finally:
        clear_poison_of(app, {report_id})


def test_a_poison_message_from_before_a_replay_leaves_the_replayed_report_alone(app: Storage) -> None:
    report_id = submit(app, CSV, "text/csv")
    row = status.read(app.reports, "unit-proc", report_id)
    message = message_for(row)
    row = status.write(app.reports, row, {"status": "failed"})
    admin.replay_report(app, row)  # the operator replays: the row now is newer than the old poison message
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    assert not poison.give_up(app, message, poisoned_at=an_hour_ago)
    assert status.read(app.reports, "unit-proc", report_id).status.value == "queued"
    assert poison.give_up(app, message, poisoned_at=datetime.now(timezone.utc))
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
    row.written_at = datetime.now(timezone.utc) - timedelta(hours=1)
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
    poisoned = queue(service.conn, "reports-poison")
    poll(lambda: len(poisoned.peek_messages(max_messages=32)), lambda n: n == 2, timeout=90)
    assert service.report("lab-p", report_id).json()["status"] == "queued", "the app never ran"

    assert "2 report(s) in the poison queue marked failed" in admin_cli(service.conn, "reconcile").stdout
    record = poll(lambda: service.report("lab-p", report_id), lambda r: r.status_code == 200, timeout=90).json()
    assert record["status"] == "failed" and record["completed_at"]
    assert [e["type"] for e in record["exceptions"]] == [poison.GIVEN_UP]

    listed = [admin_cli(service.conn, "poison", "list") for _ in range(2)]
    assert listed[0].stdout == listed[1].stdout, "listing changes nothing, not even dequeue counts"
    assert report_id in listed[0].stdout and "failed" in listed[0].stdout

    replayed = admin_cli(service.conn, "poison", "replay", "--all").stdout
    assert report_id in replayed and stuck in replayed
    for one in (report_id, stuck):
        done = service.wait_terminal("lab-p", one)
        assert done["status"] == "processed" and done["exceptions"][0]["type"] == poison.GIVEN_UP
    assert poisoned.peek_messages(max_messages=32) == []


def test_poison_list_peeks_and_replay_all_clears_finished_reports(
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

    listed = admin_cli(service.conn, "poison", "list")
    assert len(listed.stdout.splitlines()) == poison.PEEK_LIMIT
    assert "about 40 in the queue" in listed.stderr
    assert all(m.dequeue_count == 0 for m in poisoned.peek_messages(max_messages=32)), "peek only"

    # A sweep holds some right now, for longer than the CLI takes to start: replay --all must wait for them.
    held = list(poisoned.receive_messages(max_messages=10, visibility_timeout=12))
    assert len(held) == 10
    cleared = admin_cli(service.conn, "poison", "replay", "--all")
    assert cleared.stdout.count(f"cleared {report_id}") == 40 and "already processed" in cleared.stdout
    assert poisoned.peek_messages(max_messages=32) == []
    assert service.report("lab-q", report_id).json() == done, "a finished report is left as it was"
