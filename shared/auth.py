"""Who is calling: a sender's API key or an access token from POST /api/token, and the `client` header that names
the sender an organisation-wide token acts for. Raises AuthError; the HTTP edge turns it into a 401."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared import keys, registry, senders, tokens
from shared.keys import Scope
from shared.storage import Storage


class AuthError(Exception):
    """The request does not authenticate, or its `client` is not one its credential may act for."""


@dataclass(frozen=True)
class Principal:
    """The caller. `sender` is who it sends as: the API key's sender, a sender token's, or the one an
    organisation-wide token names in `client` (None when it names none). An organisation-wide token reads the
    reports of every sender of its organisation, as ReportStream's did (SimpleReport reads its FHIR uploads'
    history naming its CSV sender)."""

    sender: str | None
    scope: Scope | None = None  # set for access tokens

    def may_read(self, sender: str) -> bool:
        if self.scope is not None and self.scope.single_sender is None:
            return self.scope.allows(sender)
        return sender == self.sender

    def candidates(self, active: Callable[[], set[str]]) -> list[str]:
        """The senders whose reports this caller may read that could hold a report: its own sender first, then,
        for an organisation-wide token, the organisation's senders that `active()` says sent at the time."""
        own = [self.sender] if self.sender is not None else []
        if self.scope is None or self.scope.single_sender is not None:
            return own
        return own + sorted(name for name in active() if name != self.sender and self.may_read(name))

    def require_sender(self) -> str:
        if self.sender is None:
            raise AuthError("An organisation-wide token must name its sender in the `client` header "
                            "(e.g. client: org.sender).")
        return self.sender


class _Standing:
    """Whether an access token's key is still registered and its sender enabled, remembered for AUTH_CACHE_SECONDS
    so a busy sender's token costs no storage call per request (a removed key or disabled sender stops working
    within that time). Only successes are kept."""

    def __init__(self) -> None:
        self._cache: registry.TimedCache[tuple[str, str, str], bool] = registry.TimedCache()

    def check(self, storage: Storage, claims: tokens.AccessClaims, sender: str | None, seconds: float) -> bool:
        entry = (claims.scope.text, claims.kid, sender or "")
        if self._cache.get(entry):
            return True
        if keys.get(storage.keys, claims.scope.text, claims.kid) is None:
            return False
        if sender is not None and not senders.is_enabled(storage.senders, sender):
            return False
        self._cache.put(entry, True, seconds)
        return True

    def clear(self) -> None:
        self._cache.clear()


standing = registry.cache(_Standing())


def credential(authorization: str | None) -> str | None:
    """The key or token in `Authorization: Bearer <x>`, or in a bare `Authorization: <x>` as ReportStream accepted
    (and SimpleReport sends); None for anything else."""
    value = (authorization or "").strip()
    if not value or len(value) > 8192:
        return None
    scheme, _, rest = value.partition(" ")
    if not rest:
        return scheme
    return rest.strip() if scheme.lower() == "bearer" and rest.strip() else None


def authenticate(storage: Storage, authorization: str | None, client: str | None, cache_seconds: float,
                 sending: bool = True) -> Principal:
    """The caller of a request. When `sending`, the sender it acts as must be registered and enabled; a read only
    needs a credential that stands (which reports it may see is Principal.may_read's to say)."""
    found = credential(authorization)
    if found is None:
        raise AuthError("A sender API key or access token is required: Authorization: Bearer <key or token>.")
    client = (client or "").strip() or None
    if tokens.looks_like_jwt(found):
        return _token_principal(storage, found, client, cache_seconds, sending)
    sender = senders.authenticate_key(storage.senders, found, cache_seconds)
    if sender is None:
        raise AuthError("The API key is unknown, revoked or disabled.")
    if client is not None and client != sender:
        raise AuthError("The client header must name the API key's own sender.")
    return Principal(sender=sender)


def _token_principal(storage: Storage, token: str, client: str | None, cache_seconds: float,
                     sending: bool) -> Principal:
    claims = tokens.verify_access(storage.keys, token)
    if claims is None:
        raise AuthError("The access token is invalid or has expired: request a new one from /api/token.")
    sender = claims.scope.single_sender
    if client is not None:
        if not claims.scope.allows(client):
            raise AuthError(f"The client header names a sender outside the token's scope {claims.scope.text}.")
        sender = client
    if not standing.check(storage, claims, sender if sending else None, cache_seconds):
        raise AuthError("The access token's key was removed, or its sender is unknown or disabled.")
    return Principal(sender=sender, scope=claims.scope)
