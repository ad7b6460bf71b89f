"""Group commit of new status rows (shared/group_commit.py): rows of one sender that arrive while one is written go
together in the next transaction, and each report's outcome is still its own. Through ingest_http.main() against
the real Azurite; the first row's write is held until the others wait behind it, so the grouping is certain."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError, ServiceResponseError
from azure.data.tables import TableClient

from shared import group_commit, index, status
from shared.storage import Storage
from tests.service import EXAMPLES, own_sender

CSV = (EXAMPLES / "report.csv").read_bytes()


@pytest.fixture
def sender(app: Storage, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    yield from own_sender(app, request, "gc-")


def post(key: str) -> func.HttpResponse:
    import ingest_http

    return asyncio.run(ingest_http.main(func.HttpRequest(
        "POST", "http://localhost:7071/api/reports", body=CSV,
        headers={"authorization": f"Bearer {key}", "content-type": "text/csv"})))


def partition(app: Storage, name: str) -> dict[str, dict[str, Any]]:
    return {e["RowKey"]: dict(e) for e in app.reports.query_entities("PartitionKey eq @s", parameters={"s": name})}


class Held:
    """The first row written alone is held until `release()`: it has the lead, so rows arriving meanwhile wait."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.writing = threading.Event()
        self.release = release

    def __call__(self) -> None:
        self.release()


def hold_first_write(monkeypatch: pytest.MonkeyPatch, app: Storage, name: str, behind: int) -> Held:
    """The first row written alone waits until `behind` rows wait for it; calling the result waits for that."""
    monkeypatch.setattr(group_commit, "GATHER_SECONDS", 0.0)  # the first row goes alone, at once
    release = threading.Event()
    original = status.create

    def held(table: TableClient, entity: dict[str, Any]) -> status.Row:
        held_first.writing.set()
        release.wait(60)
        return original(table, entity)

    monkeypatch.setattr(status, "create", held)

    def wait_then_release() -> None:
        deadline = time.monotonic() + 60
        while group_commit.waiting(app.reports, name) < behind:
            assert time.monotonic() < deadline, f"{group_commit.waiting(app.reports, name)} rows waiting"
            time.sleep(0.01)
        release.set()

    held_first = Held(wait_then_release)
    return held_first


def record_transactions(monkeypatch: pytest.MonkeyPatch, fail: BaseException | None = None) -> list[int]:
    """Rows per multi-row transaction; with `fail`, each commits and then loses its answer."""
    sizes: list[int] = []
    original = status.create_many

    def create_many(table: TableClient, entities: list[dict[str, Any]]) -> list[status.Row]:
        if len(entities) > 1:
            sizes.append(len(entities))
        rows = original(table, entities)
        if fail is not None and len(entities) > 1:
            raise fail
        return rows

    monkeypatch.setattr(status, "create_many", create_many)
    return sizes


def post_together(key: str, count: int, release: Held) -> list[func.HttpResponse]:
    with ThreadPoolExecutor(count) as pool:
        answers = [pool.submit(post, key) for _ in range(count)]
        release()
        return [a.result(timeout=120) for a in answers]


def test_rows_that_arrive_while_one_is_written_go_together_and_each_is_stored_with_its_index(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = sender
    sizes = record_transactions(monkeypatch)
    answers = post_together(key, 6, hold_first_write(monkeypatch, app, name, behind=5))
    assert [a.status_code for a in answers] == [202] * 6
    assert sizes == [5]  # one alone, then the five that waited in one transaction
    stored = partition(app, name)
    for report_id in (json.loads(a.get_body())["id"] for a in answers):
        row = stored[report_id]
        assert row["status"] == "queued"
        assert all(k in stored and stored[k][index.ENTRY_ID] == report_id for k in index.keys(row))
    assert len(stored) == 6 * 4  # each row and its three index entries, nothing else


def test_a_row_refused_for_its_own_sake_does_not_sink_the_others(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One waiting row's id is taken: its transaction fails, nothing of it is stored, and each row is then written
    alone: the others are stored, the one whose id was taken gets its own ResourceExistsError."""
    name, _ = sender
    taken = _entity(name, "01JTAKEN000000000000000000")
    status.create(app.reports, taken)
    sizes = record_transactions(monkeypatch)
    release = hold_first_write(monkeypatch, app, name, behind=3)
    entities = [_entity(name, f"01JGROUP00000000000000000{n}") for n in range(3)] + [dict(taken)]
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(group_commit.create, app.reports, entities[0])
        assert release.writing.wait(60)  # the first holds the lead before the others join
        others = [pool.submit(group_commit.create, app.reports, e) for e in entities[1:]]
        release()
        outcomes = [first, *others]
        assert [o.result(60).id for o in outcomes[:3]] == [e["RowKey"] for e in entities[:3]]
        with pytest.raises(ResourceExistsError):
            outcomes[3].result(60)
    assert sizes == [3]
    stored = partition(app, name)
    assert all(e["RowKey"] in stored for e in entities)


def test_a_transaction_whose_answer_is_lost_is_read_back_by_each_of_its_reports(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer says nothing of any row in it: each intake reads its own row back, finds it, and answers 202."""
    name, key = sender
    sizes = record_transactions(monkeypatch, fail=ServiceResponseError("read timed out"))
    answers = post_together(key, 4, hold_first_write(monkeypatch, app, name, behind=3))
    assert sizes == [3]
    assert [a.status_code for a in answers] == [202] * 4
    ids = [json.loads(a.get_body())["id"] for a in answers]
    stored = partition(app, name)
    assert len(set(ids)) == 4 and all(i in stored for i in ids)


def test_a_transaction_holds_at_most_100_operations(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, _ = sender
    sizes = record_transactions(monkeypatch)
    release = hold_first_write(monkeypatch, app, name, behind=30)
    entities = [_entity(name, f"01JLIMIT00000000000000{n:04d}") for n in range(31)]
    with ThreadPoolExecutor(31) as pool:
        first = pool.submit(group_commit.create, app.reports, entities[0])
        assert release.writing.wait(60)
        others = [pool.submit(group_commit.create, app.reports, e) for e in entities[1:]]
        release()
        rows = [o.result(60) for o in [first, *others]]
    assert [r.id for r in rows] == [e["RowKey"] for e in entities]
    per_row = status.creation_size(entities[0])
    assert per_row == 4 and sum(sizes) == 30 and max(sizes) * per_row <= 100 and len(sizes) == 2
    assert len(partition(app, name)) == 31 * 4


def _entity(sender: str, report_id: str) -> dict[str, Any]:
    from shared.lifecycle import Status
    from shared.models import StatusRecord
    from shared.status_entity import new_entity

    now = "2026-12-02T00:00:00.000000Z"
    record = StatusRecord(id=report_id, sender=sender, status=Status.QUEUED, content_type="text/csv", size_bytes=1,
                          sha256="0" * 64, received_at=now, updated_at=now)
    return new_entity(record, f"raw/{sender}/{report_id}")


def test_a_row_waits_briefly_for_rows_already_on_their_way_and_not_at_all_when_alone(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows announced (their intake is storing body and message) are gathered into the transaction about to be
    sent, up to GATHER_SECONDS; a row with none on their way is sent at once."""
    name, _ = sender
    monkeypatch.setattr(group_commit, "GATHER_SECONDS", 30.0)  # long enough to see that it waits for the others
    sizes = record_transactions(monkeypatch)
    started = time.monotonic()
    group_commit.create(app.reports, _entity(name, "01JALONE000000000000000000"))
    assert time.monotonic() - started < 5 and sizes == []  # alone: no wait, no multi-row transaction

    entities = [_entity(name, f"01JGATHER0000000000000000{n}") for n in range(3)]
    announcements = [group_commit.coming(app.reports, name) for _ in entities]
    for announced in announcements:
        announced.__enter__()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(group_commit.create, app.reports, entities[0], announcements[0])
        time.sleep(0.3)
        assert not first.done()  # waiting for the two rows still on their way
        rest = [pool.submit(group_commit.create, app.reports, e, a) for e, a in zip(entities[1:], announcements[1:])]
        rows = [f.result(30) for f in [first, *rest]]
    assert sizes == [3] and [r.id for r in rows] == [e["RowKey"] for e in entities]

    # An announced row that never comes (its upload failed) holds nobody up once its intake has given up.
    lost = group_commit.coming(app.reports, name)
    lost.__enter__()
    with ThreadPoolExecutor(1) as single:
        waiting = single.submit(group_commit.create, app.reports, _entity(name, "01JAFTER000000000000000000"))
        time.sleep(0.3)
        assert not waiting.done()
        lost.__exit__(None, None, None)
        assert waiting.result(30).id == "01JAFTER000000000000000000"
