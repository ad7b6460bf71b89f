"""The listing index (shared/index.py): entries always match their row, writes stay within Azure's transaction
limits, cursors refuse what the API never returned, the reconciler and look-ups by id find reports through the
activity marks, and `admin index rebuild` indexes an older deployment's rows (idempotent, resumable)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import UpdateMode
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from shared import (
    activity,
    checkpoints,
    index,
    listing,
    problems,
    reconcile,
    reindex,
    senders,
    status,
    status_entity,
    table_batch,
)
from shared.clock import to_iso
from shared.config import get_settings
from shared.errors import Kind, Refused
from shared.lifecycle import Status
from shared.models import StatusRecord
from shared.storage import Storage, raw_blob_name
from tests.history import historical
from tests.service import admin

IDS = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2900, 1, 1),
                   timezones=st.just(UTC)).map(lambda d: str(ULID.from_datetime(d)))


@given(IDS, IDS)
def test_index_keys_sort_the_reverse_way(a: str, b: str) -> None:
    assert (index.newest_key(a) < index.newest_key(b)) == (a > b) or a == b
    ta, tb = (to_iso(ULID.from_str(x).datetime) for x in (a, b))
    assert (index.updated_key(ta, a) < index.updated_key(tb, b)) == ((ta, a) > (tb, b)) or ta == tb
    assert index.KEY.match(index.status_key("processed", ta, a))


def new_row(app: Storage, sender: str, size: int = 10) -> status.Row:
    report_id, now = str(ULID()), to_iso(datetime.now(UTC))
    record = StatusRecord(id=report_id, sender=sender, status=Status.RECEIVED.value, content_type="text/csv",
                          size_bytes=size, sha256="0" * 64, received_at=now, updated_at=now)
    return status.create(app.reports, status_entity.new_entity(record, raw_blob_name(sender, report_id)))


def entries_of(app: Storage, row: status.Row) -> dict[str, dict]:
    found = app.reports.query_entities("PartitionKey eq @pk and RowKey gt @lo and RowKey lt @hi",
                                       parameters={"pk": row.sender, "lo": index.ROWS_END, "hi": "~"})
    return {str(e["RowKey"]): dict(e) for e in found if e[index.ENTRY_ID] == row.id}


def assert_entries_match(app: Storage, row: status.Row) -> None:
    current = status.read(app.reports, row.sender, row.id)
    assert current is not None
    entries = entries_of(app, current)
    assert sorted(entries) == sorted(index.keys(current.entity))
    for entry in entries.values():
        assert status_entity.entity_to_record(entry) == current.record()


def test_every_write_keeps_the_entries_equal_to_the_row(app: Storage) -> None:
    row = new_row(app, "ix-writes")
    assert_entries_match(app, row)
    row = status.write(app.reports, row, {"status": Status.QUEUED})
    assert_entries_match(app, row)
    row = status.write(app.reports, row, {"status": Status.PROCESSED, "items": {"total": 1, "accepted": 1,
                                                                                 "rejected": 0}})
    assert_entries_match(app, row)
    assert len(entries_of(app, row)) == 3  # the old `updated` and `status` entries are gone


def test_a_received_row_is_listed_by_status_only_until_it_is_queued(app: Storage) -> None:
    """Intake writes the row with its status entry alone (two entity writes, not four), the other entries come
    with the `queued` change; the reconciler and `?status=received` read that entry."""
    assert index.STATUS_ONLY == {Status.RECEIVED.value}
    row = new_row(app, "ix-received")
    assert_entries_match(app, row)
    assert list(entries_of(app, row)) == [index.status_key("received", row.entity["updated_at"], row.id)]

    def listed(**params: object) -> list[str]:
        return [r.id for r in listing.list_reports(app.reports, listing.Query(sender=row.sender, **params)).reports]

    assert listed(status=Status.RECEIVED) == [row.id]
    assert listed() == [] and listed(since=row.entity["received_at"]) == []
    row = status.write(app.reports, row, {"status": Status.QUEUED})
    assert_entries_match(app, row)
    assert listed() == [row.id] and listed(since=row.entity["received_at"]) == [row.id]
    assert listed(status=Status.RECEIVED) == [] and listed(status=Status.QUEUED) == [row.id]


def test_a_stale_write_changes_neither_row_nor_entries(app: Storage) -> None:
    row = new_row(app, "ix-stale")
    status.write(app.reports, row, {"status": Status.QUEUED})
    before = entries_of(app, row)
    with pytest.raises(ResourceModifiedError):
        status.write(app.reports, row, {"status": Status.FAILED})  # `row` holds the old ETag
    assert status.read(app.reports, row.sender, row.id).status is Status.QUEUED
    assert entries_of(app, row) == before


def test_a_lost_entry_does_not_block_the_row(app: Storage) -> None:
    row = new_row(app, "ix-lost")
    app.reports.delete_entity(row.sender, index.status_key("received", row.entity["updated_at"], row.id))
    row = status.write(app.reports, row, {"status": Status.QUEUED})
    assert_entries_match(app, row)


def test_the_largest_row_fits_one_transaction(app: Storage) -> None:
    """Azure: at most 100 operations and 4 MiB per transaction, 64 KiB per property (Azurite checks none)."""
    row = new_row(app, "ix-large")
    big = "é" * 32_000  # 64 KB as UTF-16: the most a property can hold
    changes = {"status": Status.FAILED, "errors": [{"scope": "report", "code": "x", "message": big}],
               "warnings": [{"scope": "report", "code": "x", "message": big}],
               "exceptions": [{"attempt": 1, "at": "t", "type": "X", "message": big}]}
    merged = {**row.entity, **{k: json.dumps(v) if k != "status" else v.value for k, v in changes.items()}}
    ops = [("update", merged, {"mode": UpdateMode.MERGE}), *index.operations(row.entity, merged)]
    assert len(ops) <= 100
    assert len(table_batch.request(app.reports, ops).content) < 4 * 1024 * 1024


@pytest.mark.parametrize("cursor", [
    "!!", "x" * 201, "AAAA", listing.encode_cursor("n~0000"), listing.encode_cursor("s~failed~" + "0" * 15 + "~" + "0" * 26),
    listing.encode_cursor("u~" + "9" * 15 + "~" + "0" * 26),
])
def test_cursors_the_api_never_returned_are_400(cursor: str) -> None:
    query = listing.Query(sender="x", since="2026-01-01T00:00:00Z", cursor=cursor)
    with pytest.raises(Refused) as caught:
        listing.list_reports(None, query)  # type: ignore[arg-type] - refused before any storage call
    assert caught.value.kind is Kind.BAD_REQUEST and problems.of(caught.value).status == 400


def stuck(app: Storage, sender: str, minutes_ago: int) -> status.Row:
    """A report stored `minutes_ago` whose queue message was never sent."""
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    report_id = str(ULID.from_datetime(moment))
    record = StatusRecord(id=report_id, sender=sender, status=Status.RECEIVED.value, content_type="text/csv",
                          size_bytes=3, sha256="0" * 64, received_at=to_iso(moment), updated_at=to_iso(moment))
    activity.record(app.activity, sender, report_id)
    return status.create(app.reports, status_entity.new_entity(record, raw_blob_name(sender, report_id)))


def test_reconcile_finds_stuck_reports_of_active_senders_and_moves_its_checkpoint(app: Storage) -> None:
    checkpoints.clear(app.checkpoints, reconcile.JOB, [""])
    row = stuck(app, "ix-rec", minutes_ago=5)
    app.queue.clear_messages()
    now = datetime.now(UTC)
    assert reconcile.reconcile(app, get_settings(), now) == 1
    assert reconcile.reconcile(app, get_settings(), now) == 0
    assert status.read(app.reports, row.sender, row.id).status is Status.QUEUED
    mark = checkpoints.get(app.checkpoints, reconcile.JOB)
    # The checkpoint stays a functionTimeout (plus clock skew) behind: an intake may still be writing until then.
    settled = reconcile.settled_after(get_settings())
    assert settled == timedelta(seconds=get_settings().function_timeout_seconds) + reconcile.CLOCK_SKEW
    assert mark is not None and mark <= to_iso(now - settled)


def test_replay_by_id_finds_the_sender(app: Storage, azurite) -> None:
    row = stuck(app, "ix-replay", minutes_ago=0)
    app.container.upload_blob(raw_blob_name("ix-replay", row.id), b"x", overwrite=True)  # replay needs the body
    done = admin(azurite.connection_string, "poison", "replay", "--id", row.id)
    assert f"replayed {row.id} (ix-replay)" in done.stdout
    missing = admin(azurite.connection_string, "poison", "replay", "--id", str(ULID()), check=False)
    assert missing.returncode == 2 and "no report" in missing.stderr


def legacy_rows(app: Storage, sender: str, count: int, received: int = 0) -> list[str]:
    """Rows as the app wrote them before the index: no entries, no marks."""
    end = datetime.now(UTC) - timedelta(days=3)
    rows = [historical(sender, end - timedelta(minutes=count - n), n) for n in range(count)]
    for row in rows[:received]:
        row["status"] = Status.RECEIVED.value
    for row in rows:
        del row[index.VERSION_FIELD]
    for start in range(0, count, 100):
        table_batch.submit(app.reports, [("create", row) for row in rows[start : start + 100]])
    return [str(row["RowKey"]) for row in rows]


def test_index_rebuild_is_resumable_and_idempotent(app: Storage, azurite, monkeypatch: pytest.MonkeyPatch) -> None:
    senders.add(app.senders, "ix-legacy")
    ids = legacy_rows(app, "ix-legacy", 250, received=1)
    assert listing.list_reports(app.reports, listing.Query(sender="ix-legacy")).reports == []
    monkeypatch.setattr(reindex, "PAGE", 100)

    class Stop(Exception):
        pass

    def stop_after_first_page(line: str) -> None:
        if line.startswith("ix-legacy: 100 rows read"):
            raise Stop

    with pytest.raises(Stop):
        reindex.rebuild(app, stop_after_first_page)
    lines: list[str] = []
    reindex.rebuild(app, lines.append)
    assert "ix-legacy: done (150 rows read, 150 indexed)" in lines  # resumed after the first page

    def listed() -> list[str]:
        return [r.id for r in listing.list_reports(app.reports, listing.Query(sender="ix-legacy", limit=1000)).reports]

    assert listed() == sorted(ids[1:], reverse=True)  # the `received` one is in the status index only
    assert activity.senders_at(app.activity, ids[0]) >= {"ix-legacy"}
    assert reconcile.reconcile(app, get_settings()) >= 1  # the old `received` one: the rebuild pointed it there
    assert status.read(app.reports, "ix-legacy", ids[0]).status is Status.QUEUED
    assert listed() == sorted(ids, reverse=True)

    again = admin(azurite.connection_string, "index", "rebuild")
    assert "ix-legacy: done in an earlier run" in again.stderr
    restarted = admin(azurite.connection_string, "index", "rebuild", "--restart")
    assert "ix-legacy: done (250 rows read, 0 indexed)" in restarted.stderr
    assert json.loads(restarted.stdout)["rows_indexed"] == 0


def test_rotating_a_sender_registered_before_key_lists_still_revokes_its_key(app: Storage) -> None:
    old = senders.add(app.senders, "ix-keys")
    app.senders.upsert_entity({"PartitionKey": "sender", "RowKey": "ix-keys", "enabled": True, "created_at": "t"},
                              mode=UpdateMode.REPLACE)  # as registered before rows listed their keys
    new = senders.rotate(app.senders, "ix-keys")
    assert senders.authenticate_key(app.senders, old) is None
    assert senders.authenticate_key(app.senders, new) == "ix-keys"
    assert senders.key_hashes(app.senders, senders._get(app.senders, "ix-keys")) == [senders.key_hash(new)]
