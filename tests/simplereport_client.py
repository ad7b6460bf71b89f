"""SimpleReport's ReportStream client, request for request, as its source builds them (CDCgov/prime-simplereport:
`DataHubClient.java`, `DataHubClientConfiguration`, `TestResultUploadService.getRSAuthToken`,
`TokenAuthentication.createRSAJWT`, `service/model/reportstream/*.java`), written in Python for the tests.

What it sends: a JWT with kid = iss = sub = `simple_report.csvuploader`, aud = the configured base URL, a random
jti and a 5-minute exp, signed RS256 with a PKCS#1 RSA key; a token form body concatenated without URL-encoding;
the access token bare in `Authorization`; `client`, `x-api-version` and `x-functions-key` on every request.
What it reads back: `access_token`, and UploadResponse's `id` (a UUID), `overallStatus` (its six-value enum),
`timestamp`, `reportItemCount` (a Java int: null reads as 0) and `errors`/`warnings` (`scope`, `message`,
`indices`); unknown fields are ignored, as Spring's default ObjectMapper does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SCOPE = "simple_report.*.report"
CSV_CLIENT = "simple_report.csvuploader"
FHIR_CLIENT = "simple_report.fullelr-bulkuploader"
API_VERSION = "2021-09-21"
# SimpleReport's ReportStreamStatus enum: anything else fails Jackson's deserialisation of UploadResponse.
STATUSES = {"Error", "Received", "Not Delivering", "Waiting to Deliver", "Partially Delivered", "Delivered"}
# UploadResponse.parseStatus: what SimpleReport shows its users.
SUCCESS, PENDING, FAILURE = "SUCCESS", "PENDING", "FAILURE"


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pkcs1_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The form SimpleReport's PEMParser needs (`BEGIN RSA PRIVATE KEY`)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class FeedbackMessage:
    scope: str
    message: str
    indices: list[int] | None


@dataclass
class UploadResponse:
    id: uuid.UUID | None
    overall_status: str
    timestamp: datetime
    report_item_count: int
    errors: list[FeedbackMessage]
    warnings: list[FeedbackMessage]

    @classmethod
    def read(cls, body: dict) -> UploadResponse:
        status = body["overallStatus"]
        if status not in STATUSES:
            raise ValueError(f"SimpleReport cannot read overallStatus {status!r}")

        def messages(name: str) -> list[FeedbackMessage]:
            return [FeedbackMessage(m["scope"], m["message"], m.get("indices")) for m in body.get(name) or []]

        return cls(
            id=uuid.UUID(body["id"]) if body.get("id") is not None else None,
            overall_status=status,
            timestamp=datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00")),
            report_item_count=body.get("reportItemCount") or 0,
            errors=messages("errors"),
            warnings=messages("warnings"),
        )

    def parse_status(self) -> str:
        if self.overall_status == "Delivered":
            return SUCCESS
        if self.overall_status in ("Received", "Waiting to Deliver", "Partially Delivered"):
            return PENDING
        return FAILURE


class SimpleReportClient:
    """DataHubClient with its Feign interceptor, pointed at `datahub_url` (the only thing a sender changes)."""

    def __init__(self, datahub_url: str, signing_key: rsa.RSAPrivateKey, api_key: str = "super-secret-api-key") -> None:
        self.datahub_url = datahub_url
        # SimpleReport reads its key from PKCS#1 PEM text; doing the same keeps the test honest about the format.
        self.signing_key = serialization.load_pem_private_key(pkcs1_pem(signing_key), password=None)
        self.api_key = api_key
        self.http = httpx.Client(base_url=datahub_url.rstrip("/"), timeout=30)

    def close(self) -> None:
        self.http.close()

    def _headers(self, content_type: str) -> dict[str, str]:
        client = FHIR_CLIENT if "application/fhir+ndjson" in content_type else CSV_CLIENT
        return {"Content-Type": content_type, "client": client, "x-api-version": API_VERSION,
                "x-functions-key": self.api_key}

    def create_jwt(self) -> str:
        now = int(time.time())
        claims = {"iss": CSV_CLIENT, "sub": CSV_CLIENT, "aud": self.datahub_url, "jti": str(uuid.uuid4()),
                  "exp": now + 300, "iat": now}
        return jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": CSV_CLIENT, "typ": "JWT"})

    def token_body(self, assertion: str | None = None) -> str:
        # Concatenated as TestResultUploadService does: no URL-encoding of any value.
        return (f"scope={SCOPE}&grant_type=client_credentials"
                "&client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                f"&client_assertion={assertion or self.create_jwt()}")

    def fetch_access_token_response(self, body: str | None = None) -> httpx.Response:
        return self.http.post("/api/token", content=(body or self.token_body()).encode(),
                              headers=self._headers("application/x-www-form-urlencoded"))

    def access_token(self) -> str:
        response = self.fetch_access_token_response()
        response.raise_for_status()
        return response.json()["access_token"]

    def upload_fhir_response(self, ndjson: str) -> httpx.Response:
        headers = {**self._headers("application/fhir+ndjson"), "Authorization": self.access_token()}
        return self.http.post("/api/waters", content=ndjson.strip().encode(), headers=headers)

    def upload_fhir(self, ndjson: str) -> UploadResponse:
        response = self.upload_fhir_response(ndjson)
        response.raise_for_status()
        return UploadResponse.read(response.json())

    def upload_csv(self, csv: bytes) -> UploadResponse:
        """The CSV path as ReportStream's token senders used it: /api/waters, text/csv, the CSV uploader client."""
        headers = {**self._headers("text/csv"), "Authorization": self.access_token()}
        response = self.http.post("/api/waters", content=csv, headers=headers)
        response.raise_for_status()
        return UploadResponse.read(response.json())

    def get_submission_response(self, report_id: uuid.UUID) -> httpx.Response:
        headers = {**self._headers("application/text"), "Authorization": self.access_token()}
        return self.http.get(f"/api/waters/report/{report_id}/history", headers=headers)

    def get_submission(self, report_id: uuid.UUID) -> UploadResponse:
        response = self.get_submission_response(report_id)
        response.raise_for_status()
        return UploadResponse.read(response.json())

    def wait_final(self, report_id: uuid.UUID, timeout: float = 60) -> UploadResponse:
        deadline = time.monotonic() + timeout
        while True:
            result = self.get_submission(report_id)
            if result.parse_status() != PENDING:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"report {report_id} still {result.overall_status} after {timeout}s")
            time.sleep(0.2)
