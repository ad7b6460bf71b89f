"""ReportStream's sender API end to end: SimpleReport's own client (tests/simplereport_client.py) and ReportStream's
token rules against the running service, over real HTTP, on a real Azurite."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import httpx
import jwt
import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from ulid import ULID

from tests.service import EXAMPLES, Service, admin, assert_problem, own_service, poll
from tests.simplereport_client import (
    CSV_CLIENT,
    FHIR_CLIENT,
    SUCCESS,
    SimpleReportClient,
    new_rsa_key,
    public_pem,
)
from tests.test_real_simplereport_fhir import wire_ndjson

REAL = Path(__file__).parent / "samples" / "real"
SR_CSV = REAL / "simplereport-csv"
SR_FHIR = REAL / "simplereport-fhir"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with own_service(AUTH_CACHE_SECONDS="1", VALIDATE_MAX_BYTES="2000000") as running:
        yield running


def register_key(service: Service, tmp_path: Path, scope: str, kid: str, public: bytes) -> dict:
    path = tmp_path / f"{uuid.uuid4().hex}.pem"
    path.write_bytes(public)
    return json.loads(admin(service.conn, "keys", "add", scope, "--kid", kid, str(path)).stdout)


@pytest.fixture(scope="module")
def sr_key(service: Service, tmp_path_factory: pytest.TempPathFactory) -> rsa.RSAPrivateKey:
    """SimpleReport as an agency would onboard it: its two senders, and its public key for `simple_report.*`."""
    key = new_rsa_key()
    service.sender(CSV_CLIENT)
    service.sender(FHIR_CLIENT)
    register_key(service, tmp_path_factory.mktemp("keys"), "simple_report.*.report", CSV_CLIENT, public_pem(key))
    return key


@pytest.fixture
def simplereport(service: Service, sr_key: rsa.RSAPrivateKey) -> Iterator[SimpleReportClient]:
    client = SimpleReportClient(service.url + "/", sr_key)
    yield client
    client.close()


# --- SimpleReport, unchanged but for the URL --------------------------------------------------------------------


def test_simplereport_fhir_upload_is_received_then_delivered(simplereport: SimpleReportClient, service: Service) -> None:
    ndjson = wire_ndjson(SR_FHIR / "test-results-upload-valid-as-fhir.ndjson").decode()
    response = simplereport.upload_fhir_response(ndjson)
    assert response.status_code == 201, response.text
    uploaded = simplereport.upload_fhir(ndjson)
    assert uploaded.overall_status == "Received" and uploaded.id is not None and not uploaded.errors
    assert response.headers["location"] == f"{service.url}/api/waters/report/{response.json()['id']}/history"
    body = response.json()
    assert body["sender"] == FHIR_CLIENT and body["httpStatus"] == 201 and body["actionName"] == "receive"

    final = simplereport.wait_final(uploaded.id)
    assert final.parse_status() == SUCCESS and final.overall_status == "Delivered"
    assert final.report_item_count == len(ndjson.strip().splitlines()) and final.errors == []
    # The same report on the native API, by either id form, for its own sender.
    ulid = str(ULID.from_uuid(uploaded.id))
    with service.client(FHIR_CLIENT) as native:
        for report_id in (ulid, str(uploaded.id)):
            record = native.get(f"/api/reports/{report_id}").json()
            assert record["id"] == ulid and record["status"] == "processed"


def test_simplereport_csv_upload_delivered_and_invalid_rows_come_back_as_errors(
    simplereport: SimpleReportClient,
) -> None:
    good = simplereport.upload_csv((SR_CSV / "test-results-upload-valid.csv").read_bytes())
    bad = simplereport.upload_csv((SR_CSV / "test-results-upload-invalid-values.csv").read_bytes())
    assert simplereport.wait_final(good.id).overall_status == "Delivered"

    final = simplereport.wait_final(bad.id)
    assert final.overall_status == "Error" and final.report_item_count == 1
    assert final.errors and {e.scope for e in final.errors} == {"item"}
    assert {tuple(e.indices or []) for e in final.errors} == {(1,)}  # 1-based item numbers, as ReportStream's
    raw = simplereport.get_submission_response(bad.id).json()
    fields = {e["field"] for e in raw["errors"]}
    assert {"patient_dob", "specimen_type"} <= fields, fields
    assert raw["errorCount"] >= len(raw["errors"]) and all(e["errorCode"] for e in raw["errors"])


def test_history_of_an_unknown_or_malformed_id_is_404(simplereport: SimpleReportClient) -> None:
    assert simplereport.get_submission_response(uuid.uuid4()).status_code == 404
    headers = {"Authorization": simplereport.access_token(), "client": CSV_CLIENT}
    assert_problem(simplereport.http.get("/api/waters/report/not-an-id/history", headers=headers), 404)


def test_payload_name_is_kept_and_reportstream_parameters_are_ignored(service: Service) -> None:
    with service.client("rs-params") as client:
        response = client.post("/api/waters?processing=async", content=(SR_CSV / "test-results-upload-valid.csv")
                               .read_bytes(), headers={"Content-Type": "text/csv", "payloadName": "results-0412.csv",
                                                       "x-functions-key": "ignored", "x-api-version": "2021-09-21"})
        assert response.status_code == 201, response.text
        assert response.json()["externalName"] == "results-0412.csv"
        report_id = response.json()["id"]
        final = poll(lambda: client.get(f"/api/waters/report/{report_id}/history").json(),
                     lambda h: h["overallStatus"] != "Received")
        assert final["externalName"] == "results-0412.csv" and final["overallStatus"] == "Delivered"
        assert client.get(f"/api/reports/{report_id}").json()["external_name"] == "results-0412.csv"


# --- POST /api/token: ReportStream's and SMART's rules ----------------------------------------------------------


def assertion(key: object, *, kid: str = CSV_CLIENT, iss: str = CSV_CLIENT, aud: str | None = None,
              exp_in: int = 300, jti: str | None = None, algorithm: str = "RS256", **extra: object) -> str:
    now = int(time.time())
    claims = {"iss": iss, "sub": iss, "aud": aud, "exp": now + exp_in, "iat": now, "jti": jti or str(uuid.uuid4()),
              **extra}
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})


def token_request(service: Service, body: str) -> httpx.Response:
    return httpx.post(f"{service.url}/api/token", content=body.encode(),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})


def form(token: str, scope: str = "simple_report.*.report") -> str:
    return (f"scope={scope}&grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}"
            f"&client_assertion={token}")


def refused(response: httpx.Response, status: int = 401, error: str = "invalid_client") -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and body["error_description"] and "access_token" not in body
    assert response.headers["cache-control"] == "no-store"
    return body


def test_token_granted_with_reportstream_shape(service: Service, sr_key: rsa.RSAPrivateKey) -> None:
    response = token_request(service, form(assertion(sr_key, aud=service.url)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300 and body["scope"] == "simple_report.*.report"
    assert body["access_token"] and response.headers["cache-control"] == "no-store"
    # URL-encoded too, and the token URL as aud.
    from urllib.parse import urlencode

    encoded = urlencode({"scope": "simple_report.*.report", "grant_type": "client_credentials",
                         "client_assertion_type": ASSERTION_TYPE,
                         "client_assertion": assertion(sr_key, aud=f"{service.url}/api/token")})
    assert token_request(service, encoded).status_code == 200


def test_replayed_jti_is_refused(service: Service, sr_key: rsa.RSAPrivateKey) -> None:
    signed = assertion(sr_key, aud=service.url)
    assert token_request(service, form(signed)).status_code == 200
    assert "used before" in refused(token_request(service, form(signed)))["error_description"]


@pytest.mark.parametrize("change, why", [
    ({"exp_in": -120}, "expired"),
    ({"exp_in": 600}, "at most 5 minutes"),
    ({"aud": "https://elsewhere.example/"}, "aud"),
    ({"kid": "unknown-kid"}, "No key"),
    ({"iss": "other_org.sender"}, "iss"),
], ids=["expired", "exp-too-far", "wrong-aud", "unknown-kid", "other-orgs-iss"])
def test_bad_assertions_get_401_and_no_token(service: Service, sr_key: rsa.RSAPrivateKey, change: dict,
                                             why: str) -> None:
    options = {"aud": service.url, **change}
    assert why in refused(token_request(service, form(assertion(sr_key, **options))))["error_description"]


def test_wrong_key_none_and_hmac_confusion_are_refused(service: Service) -> None:
    stranger = new_rsa_key()
    refused(token_request(service, form(assertion(stranger, aud=service.url))))
    unsigned = jwt.encode({"iss": CSV_CLIENT, "aud": service.url, "exp": int(time.time()) + 60, "jti": "x"}, None,
                          algorithm="none", headers={"kid": CSV_CLIENT})
    refused(token_request(service, form(unsigned)))
    # HS256 with the registered public key as the shared secret: the classic key confusion.
    public = public_pem(stranger)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": CSV_CLIENT, "typ": "JWT"}).encode())
    payload = base64.urlsafe_b64encode(json.dumps({"iss": CSV_CLIENT, "aud": service.url, "jti": "y",
                                                   "exp": int(time.time()) + 60}).encode())
    import hashlib
    import hmac

    signing_input = header.rstrip(b"=") + b"." + payload.rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac.new(public, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    refused(token_request(service, form((signing_input + b"." + signature).decode())))


def test_another_organisations_scope_is_refused(service: Service, sr_key: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    other = new_rsa_key()
    register_key(service, tmp_path, "other_lab.*.report", "other_lab", public_pem(other))
    # SimpleReport's key asking for the other organisation's scope, under its own and under the other's kid.
    refused(token_request(service, form(assertion(sr_key, aud=service.url), scope="other_lab.*.report")))
    refused(token_request(service, form(assertion(sr_key, kid="other_lab", iss="other_lab", aud=service.url),
                                        scope="other_lab.*.report")))


@pytest.mark.parametrize("body, status, error", [
    ("", 400, "invalid_request"),
    ("=&=", 400, "invalid_request"),
    ("gobbledygook==&&&&==", 400, "invalid_request"),
    (f"scope=simple_report.*.report&grant_type=password&client_assertion_type={ASSERTION_TYPE}&client_assertion=a.b.c",
     400, "unsupported_grant_type"),
    (f"scope=two.pieces&grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}&client_assertion=a.b.c",
     400, "invalid_scope"),
    ("scope=simple_report.*.report&grant_type=client_credentials", 400, "invalid_request"),
    (f"scope=simple_report.*.report&grant_type=client_credentials&client_assertion_type={ASSERTION_TYPE}"
     "&client_assertion=verylong.signed.jwtstring", 401, "invalid_client"),
], ids=["empty", "equals", "gobbledygook", "grant", "scope", "no-assertion", "malformed-jwt"])
def test_malformed_token_requests(service: Service, body: str, status: int, error: str) -> None:
    refused(token_request(service, body), status, error)


def test_es384_key_for_one_sender(service: Service, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    register_key(service, tmp_path, "es_lab.main.report", "es-1", public)
    sender_key = service.sender("es_lab.main")
    signed = assertion(key, kid="es-1", iss="es_lab.main", aud=service.url, algorithm="ES384")
    response = token_request(service, form(signed, scope="es_lab.main.report"))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    # A one-sender token needs no client header; Bearer and bare both work, on the native API too.
    csv = (SR_CSV / "test-results-upload-valid.csv").read_bytes()
    for authorization in (f"Bearer {token}", token):
        posted = httpx.post(f"{service.url}/api/reports", content=csv,
                            headers={"Authorization": authorization, "Content-Type": "text/csv"})
        assert posted.status_code == 202 and posted.json()["sender"] == "es_lab.main"
    listed = httpx.get(f"{service.url}/api/reports", headers={"Authorization": token}).json()["reports"]
    assert listed and {r["sender"] for r in listed} == {"es_lab.main"}
    assert sender_key  # the API key still works beside the token
    # RS256 with an EC key's kid is refused (the key decides the algorithm, never the header).
    refused(token_request(service, form(assertion(new_rsa_key(), kid="es-1", iss="es_lab.main", aud=service.url),
                                        scope="es_lab.main.report")))


# --- tenancy, revocation ------------------------------------------------------------------------------------------


def test_a_token_never_acts_for_another_organisation(service: Service, simplereport: SimpleReportClient,
                                                     tmp_path: Path) -> None:
    other = new_rsa_key()
    register_key(service, tmp_path, "tenant_b.*.report", "tenant_b", public_pem(other))
    service.sender("tenant_b.lab")
    response = token_request(service, form(assertion(other, kid="tenant_b", iss="tenant_b", aud=service.url),
                                           scope="tenant_b.*.report"))
    b_token = response.json()["access_token"]
    mine = simplereport.upload_csv((SR_CSV / "test-results-upload-valid.csv").read_bytes())
    csv = (SR_CSV / "test-results-upload-valid.csv").read_bytes()
    # Posting as, reading and listing another organisation's sender: refused or not found.
    for path in ("/api/waters", "/api/reports"):
        assert_problem(httpx.post(service.url + path, content=csv, headers={
            "Authorization": b_token, "client": FHIR_CLIENT, "Content-Type": "text/csv"}), 401)
    assert_problem(httpx.get(f"{service.url}/api/reports", headers={"Authorization": b_token, "client": CSV_CLIENT}),
                   401)
    for client in ({}, {"client": "tenant_b.lab"}):
        got = httpx.get(f"{service.url}/api/waters/report/{mine.id}/history",
                        headers={"Authorization": b_token, **client})
        assert_problem(got, 404)
        got = httpx.get(f"{service.url}/api/reports/{mine.id}", headers={"Authorization": b_token, **client})
        assert_problem(got, 404)
    # An organisation-wide token without `client` cannot send: it must say as whom.
    assert_problem(httpx.post(f"{service.url}/api/waters", content=csv,
                              headers={"Authorization": b_token, "Content-Type": "text/csv"}), 401)
    # An API key's `client` must be its own sender.
    with service.client("tenant_b.lab") as keyed:
        assert_problem(keyed.post("/api/waters", content=csv, headers={"Content-Type": "text/csv",
                                                                          "client": CSV_CLIENT}), 401)
        assert keyed.post("/api/waters", content=csv, headers={"Content-Type": "text/csv",
                                                               "client": "tenant_b.lab"}).status_code == 201


def test_removed_key_and_disabled_sender_stop_tokens(service: Service, tmp_path: Path) -> None:
    key = new_rsa_key()
    register_key(service, tmp_path, "revoked.*.report", "k1", public_pem(key))
    service.sender("revoked.lab")
    token = token_request(service, form(assertion(key, kid="k1", iss="revoked", aud=service.url),
                                        scope="revoked.*.report")).json()["access_token"]
    csv = (SR_CSV / "test-results-upload-valid.csv").read_bytes()

    def post() -> httpx.Response:
        return httpx.post(f"{service.url}/api/waters", content=csv,
                          headers={"Authorization": token, "client": "revoked.lab", "Content-Type": "text/csv"})

    assert post().status_code == 201
    admin(service.conn, "senders", "disable", "revoked.lab")
    poll(post, lambda r: r.status_code == 401, timeout=10)  # AUTH_CACHE_SECONDS is 1 here
    admin(service.conn, "senders", "enable", "revoked.lab")
    poll(post, lambda r: r.status_code == 201, timeout=10)
    admin(service.conn, "keys", "remove", "revoked.*.report", "--kid", "k1")
    poll(post, lambda r: r.status_code == 401, timeout=10)


def test_rotation_with_grace_keeps_the_old_key_working(service: Service) -> None:
    old = service.sender("rotating")
    rotated = json.loads(admin(service.conn, "senders", "rotate", "rotating", "--grace", "1h").stdout)
    assert rotated["old_keys_work_for_seconds"] == 3600
    for key in (old, rotated["key"]):
        assert httpx.get(f"{service.url}/api/reports", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    newest = json.loads(admin(service.conn, "senders", "rotate", "rotating").stdout)["key"]
    for key in (old, rotated["key"]):
        poll(lambda k=key: httpx.get(f"{service.url}/api/reports", headers={"Authorization": f"Bearer {k}"}),
             lambda r: r.status_code == 401, timeout=10)
    assert httpx.get(f"{service.url}/api/reports", headers={"Authorization": f"Bearer {newest}"}).status_code == 200
    bad = admin(service.conn, "senders", "rotate", "rotating", "--grace", "soon", check=False)
    assert bad.returncode == 2 and "duration" in bad.stderr


def test_keys_cli_refuses_private_weak_and_other_keys(service: Service, tmp_path: Path) -> None:
    key = new_rsa_key()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p256 = ec.generate_private_key(ec.SECP256R1())
    cases = {"private": private, "weak": public_pem(weak), "p256": p256.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "junk": b"hello"}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        done = admin(service.conn, "keys", "add", "cli_org.*.report", "--kid", name, str(path), check=False)
        assert done.returncode == 2 and done.stderr.startswith("error:"), (name, done.stderr)
    bad_scope = admin(service.conn, "keys", "add", "Not A Scope", "--kid", "k", str(path), check=False)
    assert bad_scope.returncode == 2 and "scope" in bad_scope.stderr
    # A JWK works as well as a PEM, and list / remove show what is registered.
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "key.jwk").write_text(json.dumps({"keys": [jwk]}))
    added = json.loads(admin(service.conn, "keys", "add", "cli_org.*.report", "--kid", "jwk-1",
                             str(tmp_path / "key.jwk")).stdout)
    assert added["kty"] == "RSA" and added["algorithms"] == ["RS256", "RS384"] and added["thumbprint"]
    listed = [json.loads(line) for line in admin(service.conn, "keys", "list", "cli_org.*.report").stdout.splitlines()]
    assert [(k["scope"], k["kid"]) for k in listed] == [("cli_org.*.report", "jwk-1")]
    admin(service.conn, "keys", "remove", "cli_org.*.report", "--kid", "jwk-1")
    assert admin(service.conn, "keys", "list", "cli_org.*.report").stdout == ""


# --- POST /api/validate ------------------------------------------------------------------------------------------


def storage_snapshot(conn: str) -> dict[str, object]:
    """Every blob, every table row and every queue's message count in the account."""
    tables = TableServiceClient.from_connection_string(conn)
    snapshot: dict[str, object] = {}
    for table in tables.list_tables():
        client = tables.get_table_client(table.name)
        snapshot[f"table:{table.name}"] = sorted((e["PartitionKey"], e["RowKey"], e.metadata["etag"])
                                                 for e in client.list_entities())
    blobs = BlobServiceClient.from_connection_string(conn)
    for container in blobs.list_containers():
        snapshot[f"blobs:{container.name}"] = sorted(
            (b.name, b.etag) for b in blobs.get_container_client(container.name).list_blobs())
    queues = QueueServiceClient.from_connection_string(conn)
    for queue in queues.list_queues():
        snapshot[f"queue:{queue.name}"] = queues.get_queue_client(queue.name).get_queue_properties() \
            .approximate_message_count
    return snapshot


def test_validate_answers_valid_or_error_and_stores_nothing(service: Service, simplereport: SimpleReportClient) -> None:
    token = simplereport.access_token()  # the signing secret exists before the snapshot
    key = service.sender("validator")
    before = storage_snapshot(service.conn)
    answers = {}
    for name, content_type, path in (
        ("csv-valid", "text/csv", SR_CSV / "test-results-upload-valid.csv"),
        ("csv-invalid", "text/csv", SR_CSV / "test-results-upload-invalid-values.csv"),
        ("fhir", "application/fhir+ndjson", SR_FHIR / "test-results-upload-valid-as-fhir.ndjson"),
    ):
        body = wire_ndjson(path) if path.suffix == ".ndjson" else path.read_bytes()
        for authorization in (f"Bearer {key}", token):
            response = httpx.post(f"{service.url}/api/validate", content=body, headers={
                "Authorization": authorization, "Content-Type": content_type, "client": FHIR_CLIENT
                if authorization == token else "validator"})
            assert response.status_code == 200, response.text
            answers[name] = response.json()
    assert answers["csv-valid"]["overallStatus"] == "Valid" and answers["csv-valid"]["errorCount"] == 0
    assert answers["fhir"]["overallStatus"] == "Valid" and answers["fhir"]["reportItemCount"] >= 1
    invalid = answers["csv-invalid"]
    assert invalid["overallStatus"] == "Error" and invalid["errorCount"] >= 30 and invalid["id"] is None
    assert all(e["indices"] == [1] for e in invalid["errors"])
    assert storage_snapshot(service.conn) == before

    assert_problem(httpx.post(f"{service.url}/api/validate", content=b"x" * 2_000_001,
                              headers={"Authorization": f"Bearer {key}", "Content-Type": "text/csv"}), 413)
    assert_problem(httpx.post(f"{service.url}/api/validate", content=b"a,b\n",
                              headers={"Authorization": f"Bearer {key}", "Content-Type": "text/plain"}), 415)
    assert_problem(httpx.post(f"{service.url}/api/validate", content=b"a,b\n", headers={"Content-Type": "text/csv"}),
                   401)
    assert storage_snapshot(service.conn) == before


# --- used token ids expire by partition ------------------------------------------------------------------------


def test_used_token_ids_are_purged_by_hour_partition_never_by_scan(app) -> None:
    from datetime import datetime, timedelta

    from shared import checkpoints, tokens

    now = datetime(2031, 5, 4, 10, 30, tzinfo=UTC)
    hours = {name: (now + timedelta(hours=delta)).strftime(tokens.JTI_PARTITION_FORMAT)
             for name, delta in (("old", -3), ("last", -1), ("current", 0), ("next", 1))}
    for partition in hours.values():
        app.tokenids.upsert_entity({"PartitionKey": partition, "RowKey": "a" * 64, "exp": 0})
    checkpoints.clear(app.checkpoints, tokens.PURGE_JOB, [""])
    try:
        assert tokens.purge_used(app.tokenids, app.checkpoints, now) == 2
        left = {e["PartitionKey"] for p in hours.values()
                for e in app.tokenids.query_entities("PartitionKey eq @p", parameters={"p": p})}
        assert left == {hours["current"], hours["next"]}  # ids that may still be presented stay
        assert checkpoints.get(app.checkpoints, tokens.PURGE_JOB) == hours["last"]
        assert tokens.purge_used(app.tokenids, app.checkpoints, now + timedelta(minutes=20)) == 0  # nothing new
        assert tokens.purge_used(app.tokenids, app.checkpoints, now + timedelta(hours=1)) == 1  # `current` passed
    finally:
        for partition in hours.values():
            for entity in app.tokenids.query_entities("PartitionKey eq @p", parameters={"p": partition}):
                app.tokenids.delete_entity(partition, entity["RowKey"])
        checkpoints.clear(app.checkpoints, tokens.PURGE_JOB, [""])


def test_reportstreams_own_python_example_works_unchanged_but_for_the_host(service: Service, tmp_path: Path) -> None:
    """prime-router/examples/generate-jwt-python: kid `default`, iss = sub = the organisation, aud the bare host,
    no iat; then `authorization:bearer` (lower case) and `client:<organisation>` on an HL7 v2 upload."""
    key = new_rsa_key()
    register_key(service, tmp_path, "healthy-labs.*.report", "default", public_pem(key))
    service.sender("healthy-labs")
    host = service.url.split("://", 1)[1]
    now = int(time.time())
    token = jwt.encode({"iss": "healthy-labs", "sub": "healthy-labs", "aud": host, "exp": now + 300,
                        "jti": str(uuid.uuid4())}, key, algorithm="RS256", headers={"kid": "default"})
    response = httpx.post(f"{service.url}/api/token", content=form(token, scope="healthy-labs.*.report").encode(),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    access = response.json()["access_token"]
    hl7 = (EXAMPLES / "report.hl7").read_bytes()
    posted = httpx.post(f"{service.url}/api/waters", content=hl7, headers={
        "authorization": f"bearer {access}", "client": "healthy-labs", "content-type": "application/hl7-v2"})
    assert posted.status_code == 201, posted.text
    final = poll(lambda: httpx.get(posted.headers["location"], headers={"authorization": f"bearer {access}"}).json(),
                 lambda h: h["overallStatus"] != "Received")
    assert final["overallStatus"] == "Delivered" and final["reportItemCount"] == 2 and final["bodyFormat"] == "HL7"
