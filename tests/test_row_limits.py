"""Every status row fits Azure Table limits (64 KiB a property, 1 MiB an entity) whatever a report does.

Azurite does not enforce the limits, so these tests look at every entity the app writes and measure it the way
Azure does (strings count as UTF-16).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import TableClient

from shared import processing, row_limits, status, table_batch
from shared.formats import ItemResult
from shared.logs import TryAgain
from shared.models import Issue
from shared.storage import Storage
from tests.service import EXAMPLES
from tests.test_processing import run, submit

CSV = (EXAMPLES / "report.csv").read_bytes()
LONG = "\U0001f9ea" * 2000  # outside the BMP: two UTF-16 code units each, so 8,000 bytes as Azure counts them


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """Every entity the app sends to table `reports` (creates, merges, upserts, alone or in a transaction)."""
    seen: list[dict] = []
    original_submit = table_batch.submit

    def submit(table: TableClient, operations: list) -> list[dict]:
        if table.table_name == "reports":
            seen.extend(dict(op[1]) for op in operations if op[0] != "delete")
            payload = table_batch.request(table, operations).content or b""
            batches.append(len(payload))
        return original_submit(table, operations)

    batches: list[int] = []

    monkeypatch.setattr(table_batch, "submit", submit)
    for name in ("create_entity", "update_entity", "upsert_entity"):
        original = getattr(TableClient, name)

        def spy(self: TableClient, entity: dict, *args: object, _original=original, **kwargs: object) -> object:
            if self.table_name == "reports":
                seen.append(dict(entity))
            return _original(self, entity, *args, **kwargs)

        monkeypatch.setattr(TableClient, name, spy)
    yield seen
    assert batches and max(batches) <= 4 * 1024 * 1024, "Azure refuses a transaction over 4 MiB"


def assert_fits(entities: list[dict]) -> None:
    assert entities, "the run wrote rows"
    for entity in entities:
        for name, value in entity.items():
            if isinstance(value, str):
                assert len(value.encode("utf-16-le")) <= 64 * 1024, f"{name} is over 64 KiB"
        size = 4 + sum(8 + 2 * len(k) + (4 + len(v.encode("utf-16-le")) if isinstance(v, str) else 8)
                       for k, v in entity.items() if v is not None)
        assert size <= 1024 * 1024


def test_hundreds_of_failed_tries_still_end_failed_within_limits(
    app: Storage, monkeypatch: pytest.MonkeyPatch, written: list[dict]
) -> None:
    report_id = submit(app, CSV, "text/csv")

    def unavailable(*args: object, **kwargs: object) -> None:
        raise ServiceRequestError(LONG)

    monkeypatch.setattr(processing, "_download", unavailable)
    for _ in range(300):
        with pytest.raises(TryAgain, match="ServiceRequestError"):
            run(app, report_id, dequeue_count=1)
    with pytest.raises(TryAgain, match="ServiceRequestError"):
        run(app, report_id, dequeue_count=5)
    assert_fits(written)
    record = status.read(app.reports, "unit-proc", report_id).record()
    assert record.status == "failed" and record.attempts == 301
    attempts = [e.attempt for e in record.exceptions]
    assert attempts[0] == 1 and attempts[-1] == 301, "the first and the latest tries are kept"
    marker = record.exceptions[1]
    assert marker.type == row_limits.EXCEPTIONS_OMITTED and marker.attempt == 2
    omitted = int(marker.message.split()[0])
    assert omitted + len(record.exceptions) - 1 == 301, "the marker counts every try left out"
    assert attempts[2:] == list(range(attempts[2], 302)), "the latest tries, in order"


def test_thousands_of_large_issues_fit(app: Storage, monkeypatch: pytest.MonkeyPatch, written: list[dict]) -> None:
    def noisy(raw: bytes, content_type: str, report_id: str) -> Iterator[ItemResult]:
        for index in range(5000):
            issue = Issue(scope="item", index=index, field=LONG, code="x.long", message=LONG)
            yield ItemResult(index=index, item=None, errors=[issue], warnings=[issue, issue])

    monkeypatch.setattr(processing, "parse_report", noisy)
    record = run(app, submit(app, CSV, "text/csv"))
    assert_fits(written)
    assert record["status"] == "rejected" and record["items"]["rejected"] == 5000
    for name, total in (("errors", 5000), ("warnings", 10000)):
        listed = record[name]
        assert listed[-1]["code"] == "report.issues_truncated"
        assert int(listed[-1]["message"].split()[0]) + len(listed) - 1 == total
        assert [i["index"] for i in listed[:-1]] == sorted(i["index"] for i in listed[:-1])


def test_fit_exceptions_keeps_first_and_latest_across_writes() -> None:
    entries: list[dict] = []
    for attempt in range(1, 121):
        entries = row_limits.fit_exceptions(entries + [{"attempt": attempt, "at": "t", "type": "E", "message": "m"}])
    assert len(entries) == row_limits.MAX_LISTED_EXCEPTIONS
    assert entries[0]["attempt"] == 1 and entries[-1]["attempt"] == 120
    assert entries[1] == {"attempt": 2, "at": "t", "type": row_limits.EXCEPTIONS_OMITTED,
                          "message": f"{120 - 49} more tries not listed"}


def test_a_row_azure_would_refuse_is_never_sent() -> None:
    with pytest.raises(row_limits.RowTooLarge):
        row_limits.check({"PartitionKey": "s", "RowKey": "r", "content_type": "x" * 40000})
    fine = {"PartitionKey": "s", "RowKey": "r", **{f"p{i}": "x" * 30000 for i in range(16)}}
    row_limits.check(fine)
    with pytest.raises(row_limits.RowTooLarge):
        row_limits.check({**fine, **{f"q{i}": "x" * 30000 for i in range(2)}})
