"""Duplicate results: a sender with detection on never has the same result delivered twice, whether it re-sends a
file, re-exports it with new message ids, or repeats a row inside one report; its cost stays flat with history."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shared import config, duplicates, expiry, intake, senders
from shared.storage import Storage
from tests.test_processing import run, submit

REAL = Path(__file__).parent / "samples" / "real"
SAMPLES: list[tuple[Path, str]] = [
    *((p, "text/csv") for p in sorted((REAL / "simplereport-csv").glob("*.csv")) if "invalid" not in p.name),
    *((p, "application/hl7-v2") for p in sorted((REAL / "reportstream" / "hl7").glob("*.hl7"))),
    *((p, "application/hl7-v2") for p in sorted((REAL / "reportstream" / "pairs").glob("*.hl7"))),
    *((p, "application/fhir+json") for p in sorted((REAL / "reportstream" / "pairs").glob("*.fhir"))),
    *((p, "application/fhir+json") for p in sorted((REAL / "simplereport-fhir").glob("*.json"))),
]


@pytest.fixture
def detecting(app: Storage) -> Iterator[str]:
    """A sender with detection on (ReportStream's allowDuplicates false)."""
    name = f"dup-{datetime.now().strftime('%H%M%S%f')}"
    senders.add(app.senders, name)
    senders.set_allow_duplicates(app.senders, name, False)
    duplicates.policy.clear()
    yield name
    duplicates.policy.clear()


def results_lines(app: Storage, sender: str, report_id: str) -> list[dict]:
    blob = app.container.download_blob(f"results/{sender}/{report_id}.ndjson").readall()
    return [json.loads(line) for line in blob.splitlines()]


@pytest.mark.parametrize("path, content_type", SAMPLES, ids=[p.name for p, _ in SAMPLES])
def test_re_sending_a_published_sample_delivers_nothing_twice(app: Storage, detecting: str, path: Path,
                                                               content_type: str) -> None:
    body = path.read_bytes()
    first = run(app, submit(app, body, content_type, detecting), detecting)
    if first["status"] != "processed":
        pytest.skip(f"{path.name} is not accepted as a whole ({first['status']})")
    again = run(app, submit(app, body, content_type, detecting), detecting)
    assert again["status"] == "rejected", again
    assert [e["code"] for e in again["errors"]] == ["report.duplicate"]
    assert again["items"]["accepted"] == 0 and again["items"]["total"] == first["items"]["total"]
    named = {w["message"].split(" of report ")[1].split(":")[0] for w in again["warnings"]
             if w["code"] == "item.duplicate"}
    assert named == {first["id"]}


def test_a_re_export_with_new_message_ids_is_caught_item_by_item(app: Storage, detecting: str) -> None:
    """Not the same bytes (so not the body's digest): each item's fingerprint finds its original."""
    body = (REAL / "simplereport-csv" / "test-results-upload-valid.csv").read_bytes()
    first = run(app, submit(app, body, "text/csv", detecting), detecting)
    lines = body.decode().splitlines()
    header = lines[0].split(",")
    at = header.index("accession_number") if "accession_number" in header else None
    rows = []
    for n, line in enumerate(lines[1:]):
        cells = line.split(",")
        if at is not None and len(cells) == len(header):
            cells[at] = f"NEW-{n}"
        rows.append(",".join(cells))
    new_row = rows[0].replace("Detected", "Not Detected") if "Detected" in rows[0] else None
    re_export = "\n".join([lines[0], *rows, *([new_row] if new_row else [])]) + "\n"
    again = run(app, submit(app, re_export.encode(), "text/csv", detecting), detecting)
    duplicates_found = [w for w in again["warnings"] if w["code"] == "item.duplicate"]
    assert len(duplicates_found) == first["items"]["accepted"]
    assert all(f"of report {first['id']}" in w["message"] for w in duplicates_found)
    if new_row:
        assert again["status"] == "processed" and again["items"]["accepted"] == 1
        [delivered] = results_lines(app, detecting, again["id"])
        assert delivered["item_index"] == first["items"]["total"]


def test_a_row_repeated_inside_one_report_is_delivered_once(app: Storage, detecting: str) -> None:
    body = (REAL / "simplereport-csv" / "test-results-upload-valid.csv").read_bytes()
    header, row = body.decode().splitlines()[:2]
    record = run(app, submit(app, f"{header}\n{row}\n{row}\n".encode(), "text/csv", detecting), detecting)
    assert record["status"] == "processed" and record["items"] == {"total": 2, "accepted": 1, "rejected": 1}
    [warning] = [w for w in record["warnings"] if w["code"] == "item.duplicate"]
    assert warning["index"] == 1 and f"repeats item 0 of report {record['id']}" in warning["message"]
    assert [line["item_index"] for line in results_lines(app, detecting, record["id"])] == [0]


def test_allow_duplicate_lets_one_report_through_and_the_default_sender_is_not_checked(
    app: Storage, detecting: str
) -> None:
    body = (REAL / "simplereport-csv" / "test-results-upload-valid-flu-only.csv").read_bytes()
    run(app, submit(app, body, "text/csv", detecting), detecting)
    settings = config.get_settings()
    allowed = intake.accept(app, settings, intake.Submission(detecting, body, "text/csv", allow_duplicate=True))
    assert run(app, allowed.record.id, detecting)["status"] == "processed"
    senders.add(app.senders, detecting + "-default")
    for _ in range(2):  # ALLOW_DUPLICATES_DEFAULT is true: ReportStream's default
        assert run(app, submit(app, body, "text/csv", detecting + "-default"), detecting + "-default")["status"] == \
            "processed"


def test_a_retried_try_is_not_a_duplicate_of_itself(app: Storage, detecting: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.core.exceptions import ServiceRequestError

    from shared.logs import TryAgain

    body = (REAL / "simplereport-csv" / "test-results-upload-valid-rsv-only.csv").read_bytes()
    report_id = submit(app, body, "text/csv", detecting)
    real_upload = app.container.upload_blob

    def results_unwritable(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("results/"):
            raise ServiceRequestError("storage unreachable")
        return real_upload(name, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(app.container, "upload_blob", results_unwritable)
        with pytest.raises(TryAgain):
            run(app, report_id, detecting)  # fingerprints recorded, then the try failed
    record = run(app, report_id, detecting, dequeue_count=2)
    assert record["status"] == "processed" and not [w for w in record["warnings"] if w["code"] == "item.duplicate"]


def test_detection_costs_one_transaction_per_49_items_flat_with_history(app: Storage, detecting: str) -> None:
    """Counted at the SDK: with 20,000 fingerprints of history in the sender's partition, recording 200 new items
    costs the body's digest read and 5 transactions, as it does with none; a whole file sent again costs one read."""
    calls: list[str] = []
    table = app.fingerprints
    for name in ("get_entity", "query_entities"):
        real = getattr(table, name)
        setattr(table, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    real_submit = duplicates.table_batch.submit

    def counting_submit(t: object, ops: list) -> object:
        calls.append("transaction")
        return real_submit(t, ops)

    try:
        duplicates.table_batch.submit = counting_submit
        items = [(i, f"{i:064x}") for i in range(200)]
        assert duplicates.find_and_record(table, detecting, "R1", "a" * 64, items, timedelta(days=365)) == {}
        empty_history = list(calls)
        history = [(i, f"{i + 10**6:064x}") for i in range(20_000)]
        for start in range(0, len(history), 2000):
            duplicates.find_and_record(table, detecting, f"H{start}", f"{start:064x}", history[start:start + 2000],
                                       timedelta(days=365))
        calls.clear()
        fresh = [(i, f"{i + 10**7:064x}") for i in range(200)]
        assert duplicates.find_and_record(table, detecting, "R2", "b" * 64, fresh, timedelta(days=365)) == {}
        assert calls == empty_history == ["get_entity"] + ["transaction"] * 5
        calls.clear()
        again = duplicates.find_and_record(table, detecting, "R3", "a" * 64, items, timedelta(days=365))
        assert calls == ["get_entity"] and len(again) == 200 and again[7] == duplicates.Original("R1", 7)
    finally:
        duplicates.table_batch.submit = real_submit
        for name in ("get_entity", "query_entities"):
            vars(table).pop(name, None)


def test_fingerprints_past_the_window_are_purged_by_day_range(app: Storage, detecting: str) -> None:
    now = datetime(2031, 3, 10, 12, tzinfo=UTC)
    old, recent = [(0, "1" * 64)], [(0, "2" * 64)]
    duplicates.find_and_record(app.fingerprints, detecting, "OLD", "c" * 64, old, timedelta(days=1),
                               now - timedelta(days=3))
    duplicates.find_and_record(app.fingerprints, detecting, "NEW", "d" * 64, recent, timedelta(days=30), now)
    day = (now - timedelta(days=2)).strftime("%Y%m%d")
    assert expiry.purge_day(app.fingerprints, detecting, day) == 2  # its item and digest
    left = {e["RowKey"] for e in app.fingerprints.query_entities("PartitionKey eq @p", parameters={"p": detecting})}
    assert f"f~{'2' * 64}" in left and f"f~{'1' * 64}" not in left
    assert not any(key.startswith(f"x~{(now - timedelta(days=2)).strftime('%Y%m%d')}") for key in left)
    # Past its window but not purged yet, a fingerprint no longer counts: the item is taken as new.
    assert duplicates.find_and_record(app.fingerprints, detecting, "LATER", "e" * 64, recent, timedelta(days=30),
                                      now + timedelta(days=31)) == {}


def test_senders_list_and_set_show_the_setting(app: Storage, detecting: str, azurite) -> None:
    from tests.service import admin

    listed = [json.loads(line) for line in admin(azurite.connection_string, "senders", "list").stdout.splitlines()]
    mine = next(s for s in listed if s["sender"] == detecting)
    assert mine["allow_duplicates"] is False
    admin(azurite.connection_string, "senders", "set", detecting, "--allow-duplicates", "true")
    listed = [json.loads(line) for line in admin(azurite.connection_string, "senders", "list").stdout.splitlines()]
    assert next(s for s in listed if s["sender"] == detecting)["allow_duplicates"] is True
