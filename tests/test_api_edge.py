"""The HTTP API against hostile input, cut-off uploads, and its own OpenAPI document (fuzzed with schemathesis)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from azure.storage.blob import ContainerClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared import openapi
from tests.service import EXAMPLES, FAULT_LINES, Service, assert_problem, own_service, poll

CSV = (EXAMPLES / "report.csv").read_bytes()


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with own_service(MAX_REPORT_BYTES="100000") as running:
        yield running


def stored_blobs(service: Service, sender: str) -> list[str]:
    container = ContainerClient.from_connection_string(service.conn, "reports")
    return [b.name for b in container.list_blobs(name_starts_with=f"raw/{sender}/")]


def listed(service: Service, sender: str) -> list[dict]:
    with service.client(sender) as client:
        return client.get("/api/reports", params={"limit": 1000}).json()["reports"]


def no_traceback(service: Service) -> None:
    assert "Traceback" not in service.host.logs()


# --- a cut-off upload is never stored ----------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_cut_off_upload_is_never_stored(service: Service, framing: str) -> None:
    sender = f"lab-cut-{framing}"
    key = service.sender(sender)
    head = (f"POST /api/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: text/csv\r\n")
    half = CSV[: len(CSV) // 2]
    refusals = lambda: service.host.logs().count("not passed to 'Functions.ingest_http'")  # noqa: E731
    before = refusals()
    with socket.create_connection(("127.0.0.1", service.host.port), timeout=10) as sock:
        if framing == "content-length":
            sock.sendall(f"{head}Content-Length: {len(CSV)}\r\n\r\n".encode() + half)
        else:
            sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + b"%x\r\n" % len(half) + half + b"\r\n")
    # Wait until the host has dealt with the dropped connection: refused it, or (the bug) stored half a report.
    handled = poll(lambda: (refusals() - before, stored_blobs(service, sender)), lambda r: r[0] or r[1], timeout=30)
    assert handled == (1, [])
    assert listed(service, sender) == []
    # The sender's retry of the whole report is the only one stored.
    assert service.post(sender, CSV, "text/csv").status_code == 202
    assert len(stored_blobs(service, sender)) == 1


# --- malformed query parameters and headers are 4xx ----------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"cursor": "Z" * 26},  # the right alphabet and length, but over 128 bits
    {"cursor": "8" + "0" * 25},
    {"since": "9999-12-31T23:59:59-14:00"},  # valid, but past year 9999 once in UTC
    {"since": "0001-01-01T00:00:00+14:00"},
    {"limit": "²"}, {"limit": "٥"}, {"limit": "+5"}, {"limit": " 5"}, {"limit": "5.0"}, {"limit": "9" * 40},
])
def test_malformed_list_query_is_400(service: Service, params: dict) -> None:
    with service.client("lab-q") as client:
        assert_problem(client.get("/api/reports", params=params), 400)
    no_traceback(service)


def test_old_since_still_filters_nothing_out(service: Service) -> None:
    report_id = service.post("lab-since", CSV, "text/csv").json()["id"]
    with service.client("lab-since") as client:
        found = client.get("/api/reports", params={"since": "0999-01-01T00:00:00Z"}).json()["reports"]
    assert [r["id"] for r in found] == [report_id]


@pytest.mark.parametrize("content_type", ["text/csv; x=" + "a" * 16384, "text/csv; charset=\xe9", "text/csv, text/plain"])
def test_odd_content_type_is_415_and_nothing_stored(service: Service, content_type: str) -> None:
    with service.client("lab-ct") as client:
        response = client.post("/api/reports", content=CSV, headers={"Content-Type": content_type.encode("latin-1")})
    assert_problem(response, 415)
    assert stored_blobs(service, "lab-ct") == []
    no_traceback(service)


@pytest.mark.parametrize("authorization", [b"Bearer " + b"k" * 16384, b"Bearer \xff\xfe", b"bearer", b"Bearer \tx", b"Basic Zm9vOmJhcg=="])
def test_odd_authorization_is_401(service: Service, authorization: bytes) -> None:
    response = httpx.post(f"{service.url}/api/reports", content=CSV,
                          headers={"Content-Type": "text/csv", "Authorization": authorization})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("key", [b"k" * 16384, b"caf\xe9", b"", b"tab\tinside"])
def test_odd_idempotency_key_is_400(service: Service, key: bytes) -> None:
    with service.client("lab-ik") as client:
        response = client.post("/api/reports", content=CSV,
                               headers={"Content-Type": "text/csv", "Idempotency-Key": key})
    assert_problem(response, 400)
    assert stored_blobs(service, "lab-ik") == []


@pytest.mark.parametrize("host", ["intake.example.org,evil.example", "good.com;evil", "a'b", "a*b.example:80"])
def test_location_never_carries_a_bad_host(service: Service, host: str) -> None:
    # Each passes the front end's Host check (Kestrel allows these characters) but is no valid host[:port].
    response = service.post("lab-loc", CSV, "text/csv", Host=host)
    assert response.status_code == 202, response.text
    report_id = response.json()["id"]
    assert response.headers["location"] == f"/api/reports/{report_id}" == response.json()["status_url"]


@pytest.mark.parametrize("value", ['"><script>alert(1)</script>', "good.com@evil.com"])
def test_hostile_host_is_400_at_the_edge(service: Service, value: str) -> None:
    key = service.sender("lab-loc")
    with socket.create_connection(("127.0.0.1", service.host.port), timeout=10) as sock:
        sock.sendall(f"POST /api/reports HTTP/1.1\r\nHost: {value}\r\nAuthorization: Bearer {key}\r\n"
                     f"Content-Type: text/csv\r\nContent-Length: {len(CSV)}\r\n\r\n".encode() + CSV)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"script" not in answer and b"evil" not in answer


@pytest.mark.parametrize("forwarded", ["good.com@evil.com", "intake.example:99999", "intake.example:0"])
def test_bad_forwarded_host_falls_back_to_the_request_host(service: Service, forwarded: str) -> None:
    response = service.post("lab-loc", CSV, "text/csv", **{"X-Forwarded-Host": forwarded,
                                                            "X-Forwarded-Proto": "javascript"})
    assert response.headers["location"].startswith(f"{service.url}/api/reports/")


# --- the OpenAPI document, and the service fuzzed from it --------------------------------------------------------


def test_openapi_document_is_served_anonymously(service: Service) -> None:
    response = httpx.get(f"{service.url}/api/openapi.json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/api/reports", "/api/reports/{id}", "/api/health", "/api/openapi.json",
                                 "/api/token", "/api/waters", "/api/waters/report/{id}/history", "/api/validate"}
    post = doc["paths"]["/api/reports"]["post"]
    assert set(post["requestBody"]["content"]) == {"application/hl7-v2", "application/fhir+json",
                                                   "application/fhir+ndjson", "text/csv"}
    assert {"202", "400", "401", "413", "415", "422", "503"} <= set(post["responses"])
    unauthorized = doc["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    limit = next(p for p in doc["paths"]["/api/reports"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)


def test_openapi_document_passes_an_independent_validator() -> None:
    from openapi_spec_validator import validate

    validate(openapi.document())  # raises on the first violation of OpenAPI 3.1


def _constrained(method: str, path: str) -> bool:
    operation = openapi.document()["paths"][path][method.lower()]
    return "requestBody" in operation or any(set(p["schema"]) - {"type"} for p in operation.get("parameters", []))


# Every operation of the document, known at collection time; each test fuzzes one against the served document.
OPERATIONS = [(method.upper(), path) for path, ops in openapi.document()["paths"].items() for method in ops]
# Invalid requests only where the document constrains something (a body, or a parameter with bounds or a pattern).
FUZZED = [(mode, method, path) for method, path in OPERATIONS for mode in (GenerationMode.POSITIVE,
          GenerationMode.NEGATIVE) if mode is GenerationMode.POSITIVE or _constrained(method, path)]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
EXAMPLES_PER_MODE = 25
CASES: list[str] = []


@pytest.fixture(scope="module")
def served_schema(service: Service) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{service.url}/api/openapi.json")


@pytest.mark.parametrize("mode, method, path", FUZZED, ids=[f"{m.value} {o} {p}" for m, o, p in FUZZED])
def test_service_conforms_to_its_openapi_document(service: Service, served_schema, method: str, path: str,
                                                   mode: GenerationMode, request: pytest.FixtureRequest) -> None:
    """Generated requests, as a real sender (its own key): never a 5xx, every answer as the document says."""
    operation = served_schema[path][method]
    auth = {"Authorization": f"Bearer {service.sender('lab-fuzz')}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def run(case: schemathesis.Case) -> None:
        CASES.append(f"{case.method} {case.path}")
        case.call_and_validate(base_url=service.url, headers=auth, timeout=30, checks=CHECKS)

    run()
    lines = request.config.stash.setdefault(FAULT_LINES, [])
    lines[:] = [line for line in lines if not line.startswith("schemathesis:")]
    lines.append(f"schemathesis: {len(CASES)} generated requests, {len(OPERATIONS)} operations, no 5xx, all conform")
