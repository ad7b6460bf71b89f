"""Intake under failure and hostile input: nothing false stored, nothing stored told "not stored", one report per
Idempotency-Key. POST goes through ingest_http.main() against the real Azurite; storage faults are injected by
wrapping the real SDK calls."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.data.tables import TableClient

from shared import config, direct_writes, group_commit, hl7_ack, idempotency, intake, senders, status, work
from shared.clock import to_iso
from shared.lifecycle import Status
from shared.storage import Storage
from tests.service import EXAMPLES, own_sender

CSV = (EXAMPLES / "report.csv").read_bytes()
PROBLEM = "application/problem+json"


@pytest.fixture
def sender(app: Storage, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A sender of this test's own, removed with everything it stored afterwards."""
    yield from own_sender(app, request, "in-")


def post(key: str, body: bytes = CSV, **headers: str) -> func.HttpResponse:
    import ingest_http

    request = func.HttpRequest(
        "POST", "http://localhost:7071/api/reports", body=body,
        headers={"authorization": f"Bearer {key}", "content-type": "text/csv", **headers},
    )
    return asyncio.run(ingest_http.main(request))


def answer(response: func.HttpResponse) -> dict:
    return json.loads(response.get_body())


def stored_ids(app: Storage, name: str) -> list[str]:
    rows = app.reports.query_entities("PartitionKey eq @s and RowKey lt 'a'", parameters={"s": name})  # not index
    return [e["RowKey"] for e in rows]


def claim_of(app: Storage, name: str, key: str) -> dict | None:
    try:
        return dict(app.idempotency.get_entity(*idempotency._row_key(name, key)))
    except ResourceNotFoundError:
        return None


def digest_header(body: bytes, algorithm: str = "sha-256") -> str:
    hashed = hashlib.sha256(body) if algorithm == "sha-256" else hashlib.sha512(body)
    return f"{algorithm}=:{base64.b64encode(hashed.digest()).decode()}:"


# --- Content-Digest and Content-Length -----------------------------------------------------------------------


def test_wrong_content_digest_is_400_and_nothing_stored(app: Storage, sender: tuple[str, str]) -> None:
    name, key = sender
    cut = CSV[: len(CSV) // 2]
    refused = post(key, cut, **{"content-digest": digest_header(CSV)})
    assert refused.status_code == 400 and refused.mimetype == PROBLEM
    assert "content-digest-mismatch" in answer(refused)["type"]
    assert post(key, cut, **{"content-digest": "sha-256=not-bytes"}).status_code == 400
    assert post(key, cut, **{"content-digest": "sha-256=:@@:"}).status_code == 400
    assert stored_ids(app, name) == []

    for header in (digest_header(CSV), digest_header(CSV, "sha-512"), f"md5=:AAAA:, {digest_header(CSV)}"):
        assert post(key, CSV, **{"content-digest": header}).status_code == 202, header
    assert len(stored_ids(app, name)) == 3


def test_body_shorter_than_its_content_length_is_never_stored(app: Storage, sender: tuple[str, str]) -> None:
    name, key = sender
    refused = post(key, CSV[:40], **{"content-length": str(len(CSV))})
    assert refused.status_code == 400 and "incomplete-body" in answer(refused)["type"]
    assert post(key, CSV[:40], **{"content-length": "40, 40"}).status_code == 400
    assert stored_ids(app, name) == []
    assert post(key, CSV, **{"content-length": str(len(CSV))}).status_code == 202
    assert post(key, CSV, **{"content-length": f"00{len(CSV)}"}).status_code == 202  # RFC 9110: digits, zeros too


# --- stored means 202, not stored means 503 ----------------------------------------------------------------------


def test_queue_send_failure_after_the_store_is_202_received(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = sender

    def queue_down(storage: Storage, row: status.Row) -> None:
        raise ServiceRequestError("queue unavailable")

    monkeypatch.setattr(work, "send", queue_down)
    response = post(key)
    assert response.status_code == 202
    accepted = answer(response)
    assert accepted["status"] == "received" and response.headers["Location"].endswith(accepted["id"])
    row = status.read(app.reports, name, accepted["id"])
    assert row is not None and row.status is Status.RECEIVED
    assert app.container.download_blob(f"raw/{name}/{accepted['id']}").readall() == CSV


def test_a_failure_after_the_store_still_answers_202(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails once blob and row are stored (a bug, an unexpected error), the sender is not told "nothing was
    stored": it would send the report again."""
    name, key = sender
    from shared import telemetry

    monkeypatch.setattr(telemetry, "report_accepted", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unexpected")))
    response = post(key)
    assert response.status_code == 202, response.get_body()
    assert stored_ids(app, name) == [answer(response)["id"]]
    monkeypatch.setattr(hl7_ack, "commit_ack", lambda *a: (_ for _ in ()).throw(ValueError("unexpected")))
    hl7 = (EXAMPLES / "report.hl7").read_bytes()
    acked = post(key, hl7, **{"content-type": "application/hl7-v2", "accept": "application/hl7-v2"})
    assert acked.status_code == 202 and answer(acked)["id"] in stored_ids(app, name)


def test_a_raw_blob_already_stored_by_a_retried_upload_is_stored_once(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK retries an upload whose answer was lost; with overwrite off the retry hears "already exists"."""
    name, key = sender
    put = direct_writes.put_blob

    def upload_then_lose_the_answer(*args: Any) -> None:
        put(*args)  # stored, and its answer lost: the retry below is what storage answers
        put(*args)

    monkeypatch.setattr(direct_writes, "put_blob", upload_then_lose_the_answer)
    response = post(key)
    assert response.status_code == 202, response.get_body()
    report_id = answer(response)["id"]
    assert stored_ids(app, name) == [report_id]
    assert app.container.download_blob(f"raw/{name}/{report_id}").readall() == CSV


def test_a_host_header_that_does_not_parse_still_gets_problem_json(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Host: [1]` passes the front end's check but not urlsplit: the error path must not fail on it."""
    import ingest_http

    _, key = sender
    request = func.HttpRequest("POST", "http://[1]/api/reports", body=CSV,
                               headers={"authorization": f"Bearer {key}", "content-type": "text/csv"})
    with monkeypatch.context() as patch:
        patch.setattr(senders, "authenticate_key", lambda *a: (_ for _ in ()).throw(ServiceRequestError("down")))
        response = asyncio.run(ingest_http.main(request))
    assert response.status_code == 503 and response.mimetype == PROBLEM


def test_an_unknown_outcome_without_a_key_does_not_advise_one(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = sender
    monkeypatch.setattr(status, "create", lambda *a: (_ for _ in ()).throw(ServiceResponseError("timed out")))
    monkeypatch.setattr(status, "read", lambda *a: (_ for _ in ()).throw(ServiceRequestError("down")))
    response = post(key)
    assert response.status_code == 503 and "may not have been stored" in answer(response)["detail"]
    assert "Idempotency-Key" not in answer(response)["detail"]  # none was sent


def post_while_create_times_out(monkeypatch: pytest.MonkeyPatch, key: str, idempotency_key: str, commits: bool,
                                read_fails: bool = False) -> func.HttpResponse:
    """POST while the status row's create times out, after committing (the answer was lost) or before."""
    with monkeypatch.context() as patch:
        _create_then_time_out(patch, commits)
        if read_fails:
            patch.setattr(status, "read", lambda *a, **k: (_ for _ in ()).throw(ServiceRequestError("down")))
        return post(key, **{"idempotency-key": idempotency_key})


def _create_then_time_out(monkeypatch: pytest.MonkeyPatch, commits: bool) -> None:
    original = status.create

    def create(table: TableClient, entity: dict) -> status.Row:
        if commits:
            original(table, entity)
        raise ServiceResponseError("read timed out")

    monkeypatch.setattr(status, "create", create)


def test_a_store_that_timed_out_but_committed_is_202_and_keeps_its_key(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = sender
    first = post_while_create_times_out(monkeypatch, key, "k1", commits=True)
    assert first.status_code == 202, first.get_body()
    report_id = answer(first)["id"]
    assert stored_ids(app, name) == [report_id]
    assert claim_of(app, name, "k1")["report_id"] == report_id
    again = post(key, **{"idempotency-key": "k1"})
    assert again.status_code == 202 and answer(again)["id"] == report_id
    assert again.headers["Idempotent-Replayed"] == "true"
    assert stored_ids(app, name) == [report_id]


def test_a_store_refused_by_storage_is_503_and_frees_its_key(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage answered the row's write with an error: nothing was written, so the key is free for the retry."""
    name, key = sender
    with monkeypatch.context() as patch:
        busy = HttpResponseError("server busy")
        busy.status_code = 503
        patch.setattr(status, "create", lambda *a: (_ for _ in ()).throw(busy))
        refused = post(key, **{"idempotency-key": "k2"})
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert "may not have been stored" not in answer(refused)["detail"]
    assert stored_ids(app, name) == [] and claim_of(app, name, "k2") is None
    retried = post(key, **{"idempotency-key": "k2"})
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers


def test_a_server_timeout_on_the_rows_write_keeps_the_key_as_the_write_may_still_commit(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure's 500 OperationTimedOut says the write may or may not have happened: the sender hears "may not have
    been stored", the claim stays, and once the write lands the retry with the same key finds that report."""
    name, key = sender
    late: list[tuple[TableClient, dict]] = []
    original = status.create

    def timed_out(table: TableClient, entity: dict) -> status.Row:
        late.append((table, entity))
        error = HttpResponseError("Operation could not be completed within the specified time.")
        error.status_code = 500
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(status, "create", timed_out)
        first = post(key, **{"idempotency-key": "k5"})
    assert first.status_code == 503 and "may not have been stored" in answer(first)["detail"]
    assert claim_of(app, name, "k5") is not None
    original(*late[0])  # the write lands after all
    again = post(key, **{"idempotency-key": "k5"})
    assert again.status_code == 202 and answer(again)["id"] == late[0][1]["RowKey"]
    assert stored_ids(app, name) == [late[0][1]["RowKey"]]


def test_a_store_that_timed_out_and_commits_later_is_stored_once(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's write timed out and the read-back found nothing: the write may still land, so the claim stays and
    the answer says the outcome is unknown. When the write lands after all, the retry finds that same report."""
    name, key = sender
    late: list[tuple[TableClient, dict]] = []
    with monkeypatch.context() as patch:
        def create(table: TableClient, entity: dict) -> status.Row:
            late.append((table, entity))
            raise ServiceResponseError("read timed out")

        patch.setattr(status, "create", create)
        unknown = post(key, **{"idempotency-key": "k-late"})
    assert unknown.status_code == 503 and "may not have been stored" in answer(unknown)["detail"]
    claim = claim_of(app, name, "k-late")
    assert claim is not None and stored_ids(app, name) == []
    table, entity = late[0]
    status.create(table, entity)  # the timed-out write commits now
    retried = post(key, **{"idempotency-key": "k-late"})
    assert retried.status_code == 202 and answer(retried)["id"] == claim["report_id"]
    assert retried.headers["Idempotent-Replayed"] == "true" and stored_ids(app, name) == [claim["report_id"]]


def test_an_unknown_outcome_keeps_the_claim(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = sender
    unknown = post_while_create_times_out(monkeypatch, key, "k3", commits=True, read_fails=True)
    assert unknown.status_code == 503 and "may not have been stored" in answer(unknown)["detail"]
    claim = claim_of(app, name, "k3")
    assert claim is not None and stored_ids(app, name) == [claim["report_id"]]
    retried = post(key, **{"idempotency-key": "k3"})
    assert retried.status_code == 202 and answer(retried)["id"] == claim["report_id"], "stored once, found again"


# --- claims -------------------------------------------------------------------------------------------------------


def _plant_claim(app: Storage, name: str, key: str, age_seconds: float) -> str:
    """A claim as a request that is storing (or died storing) would leave it, `age_seconds` old."""
    pk, rk = idempotency._row_key(name, key)
    created = to_iso(datetime.now(UTC) - timedelta(seconds=age_seconds))
    app.idempotency.create_entity({"PartitionKey": pk, "RowKey": rk, "report_id": "01JUNKJUNKJUNKJUNKJUNKJUNK",
                                   "sha256": hashlib.sha256(CSV).hexdigest(), "content_type": "text/csv",
                                   "created_at": created})
    return created


def test_a_claim_is_not_taken_over_while_its_request_could_still_run(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, key = sender
    monkeypatch.setattr(idempotency, "DUPLICATE_WAIT_SECONDS", 0.2)
    settings = config.get_settings()
    assert settings.function_timeout_seconds == 600  # host.json functionTimeout
    _plant_claim(app, name, "slow", age_seconds=settings.function_timeout_seconds - 5)
    busy = post(key, **{"idempotency-key": "slow"})
    assert busy.status_code == 409 and "Retry-After" in busy.headers
    assert stored_ids(app, name) == []

    _plant_claim(app, name, "dead", age_seconds=idempotency.takeover_after_seconds(settings) + 5)
    taken = post(key, **{"idempotency-key": "dead"})
    assert taken.status_code == 202
    assert claim_of(app, name, "dead")["report_id"] == answer(taken)["id"]


def test_same_key_same_body_other_content_type_is_422(app: Storage, sender: tuple[str, str]) -> None:
    name, key = sender
    assert post(key, **{"idempotency-key": "ct"}).status_code == 202
    assert post(key, **{"idempotency-key": "ct", "content-type": "text/CSV"}).status_code == 202, "same type"
    other = post(key, **{"idempotency-key": "ct", "content-type": "application/fhir+ndjson"})
    assert other.status_code == 422 and other.mimetype == PROBLEM
    assert len(stored_ids(app, name)) == 1


def test_a_waiting_duplicate_gives_its_thread_back_within_about_a_second(
    app: Storage, sender: tuple[str, str]
) -> None:
    """A duplicate of a request still storing answers 409 + Retry-After after a short wait: a long one would pin one
    of the host's worker threads per duplicate."""
    name, key = sender
    _plant_claim(app, name, "pinned", age_seconds=1)
    began = time.monotonic()
    busy = post(key, **{"idempotency-key": "pinned"})
    assert busy.status_code == 409 and "Retry-After" in busy.headers
    assert time.monotonic() - began < 2.5  # was 5 s


def test_claims_expire_by_day_range_never_by_scan(app: Storage, sender: tuple[str, str]) -> None:
    """Each claim is written with an entry naming its expiry day, in the same transaction; the daily purge reads
    that day's range in each sender's partition."""
    from shared import expiry

    name, key = sender
    assert post(key, **{"idempotency-key": "old-key"}).status_code == 202
    claim = claim_of(app, name, "old-key")
    day = claim[expiry.EXPIRES]
    expected = (datetime.now(UTC) + timedelta(days=config.get_settings().idempotency_days)).strftime("%Y%m%d")
    assert day == expected
    pk, rk = idempotency._row_key(name, "old-key")
    assert app.idempotency.get_entity(pk, f"x~{day}~{rk}")
    assert expiry.purge_day(app.idempotency, pk, day) == 1
    assert claim_of(app, name, "old-key") is None
    again = post(key, **{"idempotency-key": "old-key"})
    assert again.status_code == 202 and "Idempotent-Replayed" not in again.headers  # remembered no longer



# --- intake's order: body and message in parallel, then the row (docs/intake.md) ----------------------------------


def queued_messages(app: Storage) -> list[dict]:
    return [json.loads(m.content) for m in app.queue.peek_messages(max_messages=32)]


def test_three_storage_calls_and_a_queued_row_always_has_its_message(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No second write of the row: it is created `queued` once the message is out (it was blob, row, message, then
    the row again)."""
    name, key = sender
    app.queue.clear_messages()
    writes: list[str] = []
    for method in ("update_entity", "upsert_entity", "create_entity"):
        real = getattr(app.reports, method)
        monkeypatch.setattr(app.reports, method, lambda *a, _r=real, _m=method, **k: writes.append(_m) or _r(*a, **k))
    response = post(key)
    accepted = answer(response)
    assert response.status_code == 202 and accepted["status"] == "queued"
    assert writes == [], "the row is written once, in its creating transaction"
    assert [m["id"] for m in queued_messages(app)] == [accepted["id"]]
    app.queue.clear_messages()


@pytest.mark.parametrize("crash_at", ["upload", "row"])
def test_intake_killed_between_its_steps_acknowledges_nothing_and_its_message_is_dropped(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    """The process dies after the message went out but before the row: no 202, no report; the processor waits for
    the row while the intake could still be running, then drops the message (the sender retries with its own
    report)."""
    from ulid import ULID

    from shared import processing

    name, key = sender
    app.queue.clear_messages()

    class Killed(BaseException):
        pass

    target = (intake, "_upload") if crash_at == "upload" else (intake, "_create_row")
    monkeypatch.setattr(*target, lambda *a, **k: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        post(key)
    monkeypatch.undo()
    [orphan] = queued_messages(app)
    assert stored_ids(app, name) == []
    body = json.dumps(orphan).encode()
    assert processing.process(app, config.get_settings(), body, 1) == "deferred"  # its intake may still run
    app.queue.clear_messages()
    stale = {**orphan, "id": str(ULID.from_datetime(datetime.now(UTC) - timedelta(hours=1)))}
    assert processing.process(app, config.get_settings(), json.dumps(stale).encode(), 1) == "unknown"
    assert queued_messages(app) == []


def test_an_intake_storing_beside_others_uploads_first_and_a_failed_upload_sends_no_message(
    app: Storage, sender: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With other intakes storing, the body goes before the message in the request's own thread (no second lane):
    an upload that fails leaves no message behind, and nothing is acknowledged."""
    name, key = sender
    sent: list[str] = []
    monkeypatch.setattr(work, "send", lambda storage, row: sent.append(row.id))
    monkeypatch.setattr(intake, "_upload", lambda *a, **k: (_ for _ in ()).throw(ServiceRequestError("down")))
    with group_commit.coming(app.reports, "another-sender") as other:  # another intake is storing at this moment
        assert other.alone
        response = post(key)
    assert response.status_code == 503 and sent == [] and stored_ids(app, name) == []
    alone_again = post(key)  # alone, the upload runs beside the send: the message goes out, the row does not
    assert alone_again.status_code == 503 and len(sent) == 1 and stored_ids(app, name) == []
