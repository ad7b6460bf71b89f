"""Stand-ins for identity-based storage tests: a self-signed certificate for HTTPS Azurite, and App Service's
managed identity endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`) handing out tokens Azurite accepts."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

STORAGE_RESOURCE = "https://storage.azure.com"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
TOKEN_SECONDS = 3600


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files in `folder`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "azurite-cert.pem", folder / "azurite-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_jwt(audience: str, subject: str) -> str:
    """A token shaped like Microsoft Entra's. `--oauth basic` checks audience, issuer and lifetime only."""
    now = int(time.time())
    claims = {"aud": audience, "iss": f"https://sts.windows.net/{TENANT}/", "iat": now, "nbf": now - 60,
              "exp": now + TOKEN_SECONDS, "oid": subject, "sub": subject, "tid": TENANT}
    return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(claims)}."


@dataclass
class IdentityEndpoint:
    """App Service's local token service (api-version 2019-08-01): GET ?resource=...[&client_id=...] with header
    X-IDENTITY-HEADER → {"access_token", "expires_on", "resource", "token_type"}. Records who asked for what."""

    header: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    requests: list[dict[str, str]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/msi/token"

    @property
    def env(self) -> dict[str, str]:
        """What App Service sets in a Function App's environment."""
        return {"IDENTITY_ENDPOINT": self.url, "IDENTITY_HEADER": self.header}

    def start(self) -> IdentityEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                endpoint.requests.append({**query, "header_ok": str(self.headers.get("X-IDENTITY-HEADER") ==
                                                                    endpoint.header)})
                if url.path != "/msi/token" or self.headers.get("X-IDENTITY-HEADER") != endpoint.header:
                    return self._send(401, {"statusCode": 401, "message": "bad identity header"})
                if query.get("api-version") != "2019-08-01" or query.get("resource") not in (
                        STORAGE_RESOURCE, STORAGE_RESOURCE + "/"):
                    return self._send(400, {"statusCode": 400, "message": "unsupported request"})
                subject = query.get("client_id", "system-assigned")
                token = unsigned_jwt(query["resource"], subject)
                self._send(200, {"access_token": token, "expires_on": str(int(time.time()) + TOKEN_SECONDS),
                                 "resource": query["resource"], "token_type": "Bearer", "client_id": subject})

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, name="identity-endpoint", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
