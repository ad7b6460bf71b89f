"""SMART Backend Services tokens, as ReportStream issued them: a sender's signed JWT assertion in, an access token out.

The assertion is verified with PyJWT against the public key registered for the requested scope and the header's
`kid` (shared/keys.py). Each assertion's `jti` is recorded until its `exp` (table `tokenids`, partitioned by the
hour of `exp` so that old ids go by whole partitions). The access token is a short-lived JWT the service signs with
its own secret, so checking it costs no storage call; whether its key and sender still stand is cached for
AUTH_CACHE_SECONDS (shared/auth.py).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import jwt
from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableClient

from shared import expiry, keys, registry
from shared.keys import KeyRegistryError, Scope
from shared.service_secrets import ServiceSecret

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCESS_TOKEN_SECONDS = 300
# An assertion may expire at most this far ahead (ReportStream and SMART: five minutes), plus the clock skew allowed
# between the sender's clock and ours.
MAX_ASSERTION_LIFETIME = 300
CLOCK_SKEW_SECONDS = 30
MAX_JTI = 255
MAX_FORM_BYTES = 16_384
ISSUER = "lab-intake"
ACCESS_ALGORITHM = "HS256"
JTI_PARTITION_FORMAT = "%Y%m%d%H"
PURGE_JOB = "tokenids-purge"
PURGE_LOOKBACK_HOURS = 48  # a first purge, or one after a long stop, looks this far back


class TokenError(Exception):
    """A token request refused, as RFC 6749 section 5.2 names it (`invalid_client`, `invalid_request`, ...)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


def _refused(description: str) -> TokenError:
    return TokenError(401, "invalid_client", description)


@dataclass(frozen=True)
class Grant:
    access_token: str
    expires_in: int
    expires_at: int  # Unix seconds, as ReportStream's expires_at_seconds
    scope: str


@dataclass(frozen=True)
class AccessClaims:
    """What a valid access token says: the scope it was granted and the key that signed the assertion."""

    scope: Scope
    kid: str


def parse_form(body: bytes, query: dict[str, str]) -> dict[str, str]:
    """The token request's fields, from the body as senders send it (URL-encoded or, as SimpleReport does, plain
    `name=value` joined by `&`), with query parameters filling in what the body lacks, as ReportStream read them."""
    if len(body) > MAX_FORM_BYTES:
        raise TokenError(400, "invalid_request", f"The token request is over {MAX_FORM_BYTES} bytes.")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise TokenError(400, "invalid_request", "The token request body must be ASCII form fields.") from None
    fields: dict[str, str] = {}
    # JWTs, scopes and the assertion type carry no '+' or '%', so decoding leaves the unencoded form intact.
    for name, value in parse_qsl(text.strip(), keep_blank_values=True):
        fields.setdefault(name.strip(), value.strip())
    for name, value in query.items():
        fields.setdefault(name, value)
    return fields


def issue(table: TableClient, jti_table: TableClient, fields: dict[str, str], audiences: list[str]) -> Grant:
    """Verify the client assertion in `fields` and grant an access token for its scope; raises TokenError."""
    grant_type = fields.get("grant_type")
    if not grant_type:
        raise TokenError(400, "invalid_request", "grant_type is required (client_credentials).")
    if grant_type != GRANT_TYPE:
        raise TokenError(400, "unsupported_grant_type", "Only grant_type=client_credentials is supported.")
    if fields.get("client_assertion_type") != ASSERTION_TYPE:
        raise TokenError(400, "invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}.")
    assertion = fields.get("client_assertion")
    if not assertion:
        raise TokenError(400, "invalid_request", "client_assertion (the signed JWT) is required.")
    scope_text = fields.get("scope")
    if not scope_text:
        raise TokenError(400, "invalid_request", "scope is required (org.sender.report or org.*.report).")
    try:
        scope = keys.parse_scope(scope_text)
    except KeyRegistryError:
        raise TokenError(400, "invalid_scope", "scope must be org.sender.report or org.*.report.") from None
    claims, key = _verify_assertion(table, assertion, scope, audiences)
    _use_once(jti_table, scope, claims)
    now = int(time.time())
    return Grant(access_token=_sign_access(table, scope, key.kid, now), expires_in=ACCESS_TOKEN_SECONDS,
                 expires_at=now + ACCESS_TOKEN_SECONDS, scope=scope.text)


def _verify_assertion(table: TableClient, assertion: str, scope: Scope, audiences: list[str]) -> tuple[dict[str, Any], keys.PublicKey]:
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.InvalidTokenError:
        raise _refused("client_assertion is not a signed JWT.") from None
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _refused("The assertion's header has no kid.")
    key = keys.get(table, scope.text, kid) if keys.KID.match(kid) else None
    if key is None:
        raise _refused(f"No key with that kid is registered for scope {scope.text}.")
    if header.get("alg") not in key.algorithms:
        raise _refused(f"The assertion must be signed with {' or '.join(key.algorithms)} for this key.")
    try:
        claims = jwt.decode(
            assertion, key.verifier().key, algorithms=list(key.algorithms), audience=audiences,
            options={"require": ["iss", "exp", "jti", "aud"]}, leeway=CLOCK_SKEW_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise _refused("The assertion has expired.") from None
    except jwt.InvalidAudienceError:
        raise _refused("The assertion's aud must be this service's token URL or base URL.") from None
    except jwt.InvalidTokenError as exc:
        raise _refused(f"The assertion is not valid: {_describe(exc)}.") from None
    _check_claims(claims, scope)
    return claims, key


def _describe(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.InvalidSignatureError):
        return "its signature does not match the registered key"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"claim {exc.claim} is required"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "it is not valid yet (iat or nbf in the future)"
    return "it cannot be read or verified"


def _check_claims(claims: dict[str, Any], scope: Scope) -> None:
    iss = claims.get("iss")
    if not isinstance(iss, str) or not (iss == scope.org or iss.startswith(scope.org + ".")):
        raise _refused(f"The assertion's iss must be the organisation {scope.org} or one of its senders.")
    sub = claims.get("sub")
    if sub is not None and sub != iss:
        raise _refused("The assertion's sub must equal its iss.")
    if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] > time.time() + MAX_ASSERTION_LIFETIME + CLOCK_SKEW_SECONDS:
        raise _refused(f"The assertion's exp must be at most {MAX_ASSERTION_LIFETIME // 60} minutes ahead.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI:
        raise _refused(f"The assertion's jti must be a string of 1 to {MAX_JTI} characters.")


def _use_once(jti_table: TableClient, scope: Scope, claims: dict[str, Any]) -> None:
    """Record the assertion's id until it expires; a second use of it is refused. The row is keyed by a hash, so
    whatever the sender put in jti never becomes a key, and partitioned by the hour of `exp` so expired ids are
    deleted a partition at a time (shared/tokens.purge_used)."""
    expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
    row_key = hashlib.sha256(f"{scope.org}\n{claims['iss']}\n{claims['jti']}".encode()).hexdigest()
    try:
        jti_table.create_entity({"PartitionKey": expires.strftime(JTI_PARTITION_FORMAT), "RowKey": row_key,
                                 "exp": int(claims["exp"])})
    except ResourceExistsError:
        raise _refused("The assertion's jti was used before: sign a new assertion for each token request.") from None


def purge_used(jti_table: TableClient, checkpoint_table: TableClient, now: datetime) -> int:
    """Delete the used-id partitions of the hours that have passed since the last purge (each holds ids that expired
    in that hour). Row keys are hex digests, which the key range says. Returns how many ids went."""
    newest = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return expiry.drop_partitions(jti_table, checkpoint_table, PURGE_JOB, JTI_PARTITION_FORMAT, timedelta(hours=1),
                                  newest, timedelta(hours=PURGE_LOOKBACK_HOURS), rows=("0", "g"))


# --- access tokens ----------------------------------------------------------------------------------------------


# The service signs access tokens with its own secret (HS256): checking one costs no storage call.
signing_secret = registry.cache(ServiceSecret("token-signing"))


def _sign_access(table: TableClient, scope: Scope, kid: str, now: int) -> str:
    claims = {"iss": ISSUER, "sub": scope.text, "scope": scope.text, "kid": kid, "iat": now,
              "exp": now + ACCESS_TOKEN_SECONDS, "jti": secrets.token_urlsafe(12)}
    return jwt.encode(claims, signing_secret.get(table), algorithm=ACCESS_ALGORITHM)


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and value.startswith("eyJ")


def verify_access(table: TableClient, token: str) -> AccessClaims | None:
    """The claims of an access token this service issued and that has not expired; None otherwise."""
    try:
        claims = jwt.decode(token, signing_secret.get(table), algorithms=[ACCESS_ALGORITHM], issuer=ISSUER,
                            options={"require": ["exp", "scope", "kid"]})
        return AccessClaims(scope=keys.parse_scope(str(claims["scope"])), kid=str(claims["kid"]))
    except (jwt.InvalidTokenError, KeyRegistryError):
        return None
