"""Senders' public keys (table `keys`), registered per ReportStream scope, for SMART Backend Services tokens.

PartitionKey = scope (`org.sender.report` or `org.*.report`), RowKey = the key's `kid`: a token request names both,
so finding its key is one point read. Only public keys are stored; the private key never leaves the sender.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import PyJWK
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.exceptions import PyJWKError, PyJWKSetError

from shared.clock import now_iso
from shared.senders import NAME_PART, SENDER_NAME

# A scope names an organisation and one of its senders, or all of them: `org.sender.report`, `org.*.report`.
SCOPE = re.compile(rf"^(?P<org>{NAME_PART})\.(?P<sender>\*|{NAME_PART})\.report$")
KID = re.compile(r"^[\x21-\x7e]{1,200}$")  # printable ASCII; '/', '\\', '#', '?' are refused below (RowKey rules)
MIN_RSA_BITS = 2048
# Larger keys buy nothing and cost every token check; the stored JWK must also fit a table property (64 KiB).
MAX_RSA_BITS = 8192
# The algorithms a key of each kind may sign with. Chosen from the stored key, never from the token's header, so a
# token cannot pick HMAC with the public key as its secret, or `none`.
RSA_ALGORITHMS = ("RS256", "RS384")
EC_ALGORITHMS = ("ES384",)


class KeyRegistryError(ValueError):
    """A key or scope an operator gave cannot be registered, or is not there to remove."""


@dataclass(frozen=True)
class Scope:
    org: str
    sender: str | None  # None for an organisation-wide scope (`org.*.report`)

    @property
    def text(self) -> str:
        return f"{self.org}.{self.sender or '*'}.report"

    def allows(self, sender: str) -> bool:
        """Whether a token of this scope may act as `sender` (a full `org.sender` name, or the organisation's own).
        A name no sender could have (too long, or not a table key) is never allowed: it goes on to be a partition."""
        if not SENDER_NAME.match(sender):
            return False
        if self.sender is not None:
            return sender == f"{self.org}.{self.sender}"
        return sender == self.org or sender.startswith(self.org + ".")

    @property
    def single_sender(self) -> str | None:
        return f"{self.org}.{self.sender}" if self.sender is not None else None


def parse_scope(text: str) -> Scope:
    match = SCOPE.match(text or "")
    if match is None:
        raise KeyRegistryError(f"invalid scope {text!r}: use org.sender.report or org.*.report (lower case)")
    sender = match["sender"]
    return Scope(match["org"], None if sender == "*" else sender)


def check_kid(kid: str) -> str:
    if not KID.match(kid or "") or any(c in kid for c in "/\\#?"):
        raise KeyRegistryError("invalid kid: 1-200 printable ASCII characters, without / \\ # ?")
    return kid


@dataclass(frozen=True)
class PublicKey:
    scope: str
    kid: str
    kty: str
    algorithms: tuple[str, ...]
    jwk: dict[str, Any]
    created_at: str

    def verifier(self) -> PyJWK:
        return PyJWK(self.jwk)


def load_public_key(data: bytes) -> list[dict[str, Any]]:
    """The public keys in a PEM file, a JWK or a JWKS, as JWK dicts; refuses private keys' secrets, weak or other keys."""
    text = data.decode("utf-8", errors="replace").strip()
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text.split("\n", 1)[0]:
            raise KeyRegistryError("that is a private key: register the public key only (the private key stays with the "
                            "sender)")
        try:
            key = load_pem_public_key(text.encode())
        except ValueError as exc:
            raise KeyRegistryError(f"not a PEM public key ({exc})") from None
        return [_to_jwk(key)]
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        raise KeyRegistryError("the key file is neither a PEM public key nor JWK/JWKS JSON") from None
    documents = parsed["keys"] if isinstance(parsed, dict) and isinstance(parsed.get("keys"), list) else [parsed]
    found = []
    for document in documents:
        if not isinstance(document, dict):
            raise KeyRegistryError("a JWK must be a JSON object")
        if any(private in document for private in ("d", "p", "q", "dp", "dq", "qi", "k")):
            raise KeyRegistryError("the JWK holds private key material: register the public key only")
        try:
            key = PyJWK(document).key
        except (PyJWKError, PyJWKSetError, ValueError, TypeError) as exc:
            raise KeyRegistryError(f"not a usable JWK ({exc})") from None
        found.append(_to_jwk(key))
    if not found:
        raise KeyRegistryError("the JWKS holds no keys")
    return found


def _to_jwk(key: object) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise KeyRegistryError(f"an RSA key must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits; this one has "
                                   f"{key.key_size}")
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key))
        return jwk
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise KeyRegistryError(f"an EC key must be on P-384 (ES384); this one is on {key.curve.name}")
        jwk = json.loads(ECAlgorithm.to_jwk(key))
        return jwk
    raise KeyRegistryError("only RSA (2048 bits or more) and EC P-384 public keys are accepted")


def _algorithms(jwk: dict[str, Any]) -> tuple[str, ...]:
    return RSA_ALGORITHMS if jwk["kty"] == "RSA" else EC_ALGORITHMS


def add(table: TableClient, scope_text: str, kid: str, data: bytes) -> PublicKey:
    """Register the key in `data` (PEM, JWK or a one-key JWKS) for `scope` under `kid`."""
    scope = parse_scope(scope_text)
    check_kid(kid)
    jwks = load_public_key(data)
    if len(jwks) != 1:
        raise KeyRegistryError(f"the JWKS holds {len(jwks)} keys: register them one at a time, each with its own kid")
    jwk = {k: v for k, v in jwks[0].items() if k not in ("kid", "alg", "use", "key_ops")}
    entity = {"PartitionKey": scope.text, "RowKey": kid, "kty": jwk["kty"], "jwk": json.dumps(jwk),
              "created_at": now_iso()}
    try:
        table.create_entity(entity)
    except ResourceExistsError:
        raise KeyRegistryError(f"scope {scope.text} already has a key with kid {kid!r}: remove it first, or add the new "
                        "key under a new kid (both work until you remove the old one)") from None
    return _from_entity(entity)


def get(table: TableClient, scope: str, kid: str) -> PublicKey | None:
    try:
        return _from_entity(table.get_entity(scope, kid))
    except ResourceNotFoundError:
        return None


def remove(table: TableClient, scope_text: str, kid: str) -> None:
    scope = parse_scope(scope_text)
    if get(table, scope.text, kid) is None:
        raise KeyRegistryError(f"scope {scope.text} has no key with kid {kid!r}")
    table.delete_entity(scope.text, kid)


def list_keys(table: TableClient, scope_text: str | None = None) -> list[PublicKey]:
    """Every registered key (the table stays small: one row per sender key), or one scope's."""
    if scope_text:
        rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": parse_scope(scope_text).text})
    else:
        rows = table.list_entities()
    return [_from_entity(row) for row in rows if SCOPE.match(str(row["PartitionKey"]))]


def _from_entity(entity: dict[str, Any]) -> PublicKey:
    jwk = json.loads(str(entity["jwk"]))
    return PublicKey(scope=str(entity["PartitionKey"]), kid=str(entity["RowKey"]), kty=str(jwk["kty"]),
                     algorithms=_algorithms(jwk), jwk=jwk, created_at=str(entity.get("created_at", "")))


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK thumbprint, so an operator can tell keys apart without printing them."""
    members = ("crv", "kty", "x", "y") if key.kty == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: key.jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


