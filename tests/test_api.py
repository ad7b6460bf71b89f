"""The HTTP API end to end: a sender posts over real HTTP to devhost, backed by a real Azurite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.service import EXAMPLES, Service, admin, assert_problem, own_service, poll

HL7 = (EXAMPLES / "report.hl7").read_bytes()
CSV = (EXAMPLES / "report.csv").read_bytes()
FHIR = (EXAMPLES / "report.json").read_bytes()
NDJSON = (EXAMPLES / "report.ndjson").read_bytes()
SIMPLEREPORT = (EXAMPLES / "simplereport.csv").read_bytes()


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with own_service(MAX_REPORT_BYTES="100000") as running:
        yield running


@pytest.mark.parametrize(
    "body, content_type, total",
    [(HL7, "application/hl7-v2", 2), (CSV, "text/csv; charset=utf-8", 3), (FHIR, "application/fhir+json", 1),
     (NDJSON, "application/fhir+ndjson", 2), (SIMPLEREPORT, "text/csv", 6)],
    ids=["hl7", "csv", "fhir", "ndjson", "simplereport"],
)
def test_each_format_goes_from_202_to_processed(service: Service, body: bytes, content_type: str, total: int) -> None:
    response = service.post("lab-a", body, content_type)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued"
    assert accepted["sender"] == "lab-a"
    assert accepted["size_bytes"] == len(body)
    assert accepted["content_type"] == content_type
    assert set(accepted) == {"id", "status", "sender", "content_type", "size_bytes", "sha256", "received_at", "status_url"}
    assert response.headers["location"] == f"{service.url}/api/reports/{accepted['id']}" == accepted["status_url"]
    assert int(response.headers["retry-after"]) >= 1

    record = service.wait_terminal("lab-a", accepted["id"])
    assert record["status"] == "processed", record
    assert record["items"] == {"total": total, "accepted": total, "rejected": 0}
    assert record["attempts"] == 1 and record["exceptions"] == [] and record["completed_at"]
    assert record["sha256"] == accepted["sha256"]


def test_unusable_content_is_rejected_with_errors(service: Service) -> None:
    accepted = service.post("lab-a", b"patient_id,result\nP1,pos\n", "text/csv").json()
    record = service.wait_terminal("lab-a", accepted["id"])
    assert record["status"] == "rejected"
    assert record["errors"] and record["errors"][0]["code"] == "csv.missing_column"


def test_partly_bad_report_is_processed_with_item_errors(service: Service) -> None:
    body = CSV + b"RL-1004,PT-4414,TX,94500-6,SARS,Detected,,not-a-date,Lab\n"
    accepted = service.post("lab-a", body, "text/csv").json()
    record = service.wait_terminal("lab-a", accepted["id"])
    assert record["status"] == "processed"
    assert record["items"] == {"total": 4, "accepted": 3, "rejected": 1}
    assert [(e["index"], e["code"]) for e in record["errors"]] == [(3, "csv.bad_date")]


# --- authentication ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic abc", "Bearer"])
def test_missing_or_unknown_key_is_401_problem(service: Service, authorization: str | None) -> None:
    headers = {"Content-Type": "text/csv"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for method, path in (("POST", "/api/reports"), ("GET", "/api/reports"), ("GET", "/api/reports/01ABC")):
        response = httpx.request(method, service.url + path, content=CSV, headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_rotated_and_disabled_keys_are_refused(service: Service) -> None:
    old = service.sender("lab-rot")
    new = json.loads(admin(service.conn, "senders", "rotate", "lab-rot").stdout)["key"]
    post = lambda key: httpx.post(  # noqa: E731
        service.url + "/api/reports", content=CSV, headers={"Authorization": f"Bearer {key}", "Content-Type": "text/csv"}
    )
    # An accepted key is trusted for AUTH_CACHE_SECONDS (5) without a table read: refusal comes within that.
    assert_problem(poll(lambda: post(old), lambda r: r.status_code != 202, timeout=10), 401)
    assert post(new).status_code == 202
    admin(service.conn, "senders", "disable", "lab-rot")
    assert_problem(poll(lambda: post(new), lambda r: r.status_code != 202, timeout=10), 401)
    listed = [json.loads(line) for line in admin(service.conn, "senders", "list").stdout.splitlines()]
    assert {"sender": "lab-rot", "enabled": False, "active_keys": 1}.items() <= next(
        s for s in listed if s["sender"] == "lab-rot"
    ).items()
    assert all(len(line) < 200 and "lri_" not in line for line in map(json.dumps, listed)), "keys never listed"
    again = admin(service.conn, "senders", "add", "lab-rot", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    admin(service.conn, "senders", "enable", "lab-rot")
    assert post(new).status_code == 202


# --- cheap checks ------------------------------------------------------------------------------------------------


def test_unsupported_content_type_is_415(service: Service) -> None:
    assert_problem(service.post("lab-a", b"hello", "text/plain"), 415)
    assert_problem(service.post("lab-a", b"{}", "application/json"), 415)


def test_empty_body_is_400(service: Service) -> None:
    assert_problem(service.post("lab-a", b"", "text/csv"), 400)


def test_over_the_size_limit_is_413(service: Service) -> None:
    # This service runs with MAX_REPORT_BYTES=100000.
    assert service.post("lab-a", CSV + b"#" * (100_000 - len(CSV)), "text/csv").status_code == 202
    assert_problem(service.post("lab-a", CSV + b"#" * (100_001 - len(CSV)), "text/csv"), 413)


def test_bad_idempotency_key_is_400(service: Service) -> None:
    assert_problem(service.post("lab-a", CSV, "text/csv", **{"Idempotency-Key": "x" * 256}), 400)


# --- idempotency -------------------------------------------------------------------------------------------------


def test_idempotent_retry_replays_the_original_answer(service: Service) -> None:
    first = service.post("lab-a", CSV, "text/csv", **{"Idempotency-Key": "batch-2026-11-20"})
    again = service.post("lab-a", CSV, "text/csv", **{"Idempotency-Key": "batch-2026-11-20"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    # Another sender's identical key is its own.
    other = service.post("lab-b", CSV, "text/csv", **{"Idempotency-Key": "batch-2026-11-20"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_same_key_different_body_is_422(service: Service) -> None:
    service.post("lab-a", CSV, "text/csv", **{"Idempotency-Key": "k-422"})
    assert_problem(service.post("lab-a", HL7, "application/hl7-v2", **{"Idempotency-Key": "k-422"}), 422)


def test_concurrent_duplicates_create_one_report(service: Service) -> None:
    service.sender("lab-c")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: service.post("lab-c", CSV, "text/csv", **{"Idempotency-Key": "same"}), range(16)))
    assert all(a.status_code == 202 for a in answers), [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(1 for a in answers if "idempotent-replayed" not in a.headers) == 1
    with service.client("lab-c") as client:
        listed = client.get("/api/reports").json()["reports"]
    assert len(listed) == 1


# --- answers and URLs --------------------------------------------------------------------------------------------


def test_hl7_commit_ack_on_accept(service: Service) -> None:
    response = service.post("lab-a", HL7, "application/hl7-v2", Accept="application/hl7-v2")
    assert response.status_code == 202
    assert response.headers["content-type"].startswith("application/hl7-v2")
    assert response.headers["location"] and response.headers["retry-after"]
    segments = response.content.decode().strip("\r").split("\r")
    assert segments[0].startswith("MSH|^~\\&|")
    assert segments[1] == "MSA|CA|CH-20261120-0001"


def test_location_honours_forwarded_headers(service: Service) -> None:
    response = service.post(
        "lab-a", CSV, "text/csv", **{"X-Forwarded-Proto": "https", "X-Forwarded-Host": "intake.example.org"}
    )
    assert response.headers["location"].startswith("https://intake.example.org/api/reports/")
    bad = service.post("lab-a", CSV, "text/csv", **{"X-Forwarded-Host": "evil.example/phish?x=1"})
    assert bad.headers["location"].startswith(service.url)


# --- reading status ----------------------------------------------------------------------------------------------


def test_other_senders_reports_are_404_and_never_listed(service: Service) -> None:
    mine = service.post("lab-a", CSV, "text/csv").json()["id"]
    theirs = service.report("lab-b", mine)
    unknown = service.report("lab-b", "01KZZZZZZZZZZZZZZZZZZZZZZZ")
    assert_problem(theirs, 404)
    assert theirs.json() == assert_problem(unknown, 404)
    assert_problem(service.report("lab-b", "not-an-id"), 404)
    with service.client("lab-b") as client:
        ids = [r["id"] for r in client.get("/api/reports", params={"limit": 1000}).json()["reports"]]
    assert mine not in ids


def test_list_is_newest_first_with_paging_and_filters(service: Service) -> None:
    ids = [service.post("lab-list", CSV, "text/csv").json()["id"] for _ in range(7)]
    rejected = service.post("lab-list", b"nope\n", "text/csv").json()["id"]
    service.wait_terminal("lab-list", rejected)
    for report_id in ids:
        service.wait_terminal("lab-list", report_id)
    with service.client("lab-list") as client:
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/reports", params=params).json()
            assert len(page["reports"]) <= 3
            seen += [r["id"] for r in page["reports"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids + [rejected], reverse=True)

        only_rejected = client.get("/api/reports", params={"status": "rejected"}).json()["reports"]
        assert [r["id"] for r in only_rejected] == [rejected]

        last = client.get(f"/api/reports/{rejected}").json()["updated_at"]
        since = client.get("/api/reports", params={"since": last}).json()["reports"]
        assert rejected in [r["id"] for r in since]
        assert all(r["updated_at"] >= last for r in since)
        future = client.get("/api/reports", params={"since": "2999-01-01T00:00:00Z"}).json()
        assert future == {"reports": [], "next_cursor": None}


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"status": "done"}, {"since": "yesterday"},
               {"cursor": "../../etc"}],
)
def test_bad_list_query_is_400(service: Service, params: dict) -> None:
    with service.client("lab-a") as client:
        assert_problem(client.get("/api/reports", params=params), 400)


def test_health_reports_queue_depths(service: Service) -> None:
    response = httpx.get(service.url + "/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert isinstance(body["queue_depth"], int) and isinstance(body["poison_depth"], int)


def test_queued_report_rows_and_blobs_match(service: Service) -> None:
    """What the 202 promises is really stored: the raw blob (byte for byte) and the status row."""
    from azure.storage.blob import BlobServiceClient

    accepted = service.post("lab-a", HL7, "application/hl7-v2").json()
    blobs = BlobServiceClient.from_connection_string(service.conn).get_container_client("reports")
    assert blobs.download_blob(f"raw/lab-a/{accepted['id']}").readall() == HL7
    record = service.wait_terminal("lab-a", accepted["id"])
    lines = blobs.download_blob(f"results/lab-a/{accepted['id']}.ndjson").readall().decode().splitlines()
    assert len(lines) == record["items"]["accepted"] == 2
    first = json.loads(lines[0])
    assert first["report_id"] == accepted["id"] and first["message_id"] == "CH-20261120-0001"
    assert first["source_format"] == "hl7v2"
    poll(lambda: httpx.get(service.url + "/api/health").json(), lambda h: h["queue_depth"] == 0, timeout=30)
