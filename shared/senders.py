"""The sender registry: senders, their API keys (stored only as SHA-256), and authenticating a request's key.

Table `senders` holds two kinds of rows: PartitionKey `sender` / RowKey name (the sender itself), and
PartitionKey `key` / RowKey sha256(key) (one per active key), so authenticating costs one point read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared.clock import now_iso

SENDER_PARTITION = "sender"
KEY_PARTITION = "key"
KEY_PREFIX = "lri_"
SENDER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class SenderError(ValueError):
    """An admin request about senders that cannot be done (bad name, already exists, unknown)."""


@dataclass(frozen=True)
class Sender:
    name: str
    enabled: bool
    created_at: str
    keys: int


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class _AcceptedKeys:
    """Keys that authenticated recently, by hash, so a busy sender does not cost a table read per report.

    Only successes are kept, for AUTH_CACHE_SECONDS: a rotated or disabled key stops working within that time.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> str | None:
        entry = self._entries.get(digest)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, digest: str, sender: str, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (sender, time.monotonic() + seconds)


_accepted = _AcceptedKeys()


def authenticate(table: TableClient, authorization: str | None, cache_seconds: float = 0) -> str | None:
    """The sender name for a `Bearer` key that is known, active and whose sender is enabled; else None."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > 512:
        return None
    digest = key_hash(key)
    cached = _accepted.get(digest)
    if cached is not None:
        return cached
    sender = _lookup(table, digest)
    if sender is not None:
        _accepted.put(digest, sender, cache_seconds)
    return sender


def _lookup(table: TableClient, digest: str) -> str | None:
    try:
        row = table.get_entity(KEY_PARTITION, digest)
    except ResourceNotFoundError:
        return None
    # The lookup already matched the hash; the constant-time comparison keeps that true should the lookup change.
    if not hmac.compare_digest(str(row.get("RowKey", "")), digest):
        return None
    if not row.get("active", False) or not row.get("sender_enabled", False):
        return None
    return str(row["sender"])


def _check_name(name: str) -> str:
    if not SENDER_NAME.match(name):
        raise SenderError(
            f"invalid sender name {name!r}: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return name


def _key_rows(table: TableClient, name: str) -> list[dict]:
    return list(
        table.query_entities(
            "PartitionKey eq @pk and sender eq @name", parameters={"pk": KEY_PARTITION, "name": name}
        )
    )


def _issue_key(table: TableClient, name: str, enabled: bool) -> str:
    key = new_key()
    table.create_entity(
        {
            "PartitionKey": KEY_PARTITION,
            "RowKey": key_hash(key),
            "sender": name,
            "active": True,
            "sender_enabled": enabled,
            "created_at": now_iso(),
        }
    )
    return key


def add(table: TableClient, name: str) -> str:
    """Register a sender and return its first API key (shown once, stored only as a hash)."""
    _check_name(name)
    try:
        table.create_entity({"PartitionKey": SENDER_PARTITION, "RowKey": name, "enabled": True, "created_at": now_iso()})
    except ResourceExistsError:
        raise SenderError(f"sender {name!r} already exists (use `senders rotate {name}` for a new key)") from None
    return _issue_key(table, name, enabled=True)


def _get(table: TableClient, name: str) -> dict:
    try:
        return table.get_entity(SENDER_PARTITION, _check_name(name))
    except ResourceNotFoundError:
        raise SenderError(f"no sender named {name!r}") from None


def rotate(table: TableClient, name: str) -> str:
    """Issue a new key and revoke every earlier one of this sender."""
    row = _get(table, name)
    old = _key_rows(table, name)
    key = _issue_key(table, name, enabled=bool(row.get("enabled", True)))
    for entity in old:
        table.delete_entity(KEY_PARTITION, entity["RowKey"])
    return key


def set_enabled(table: TableClient, name: str, enabled: bool) -> None:
    row = _get(table, name)
    row["enabled"] = enabled
    table.update_entity(row, mode=UpdateMode.MERGE)
    # The flag is copied onto each key row so that authenticating stays a single read.
    for entity in _key_rows(table, name):
        table.update_entity(
            {"PartitionKey": KEY_PARTITION, "RowKey": entity["RowKey"], "sender_enabled": enabled}, mode=UpdateMode.MERGE
        )


def list_senders(table: TableClient) -> list[Sender]:
    counts: dict[str, int] = {}
    for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": KEY_PARTITION}):
        if entity.get("active"):
            counts[entity["sender"]] = counts.get(entity["sender"], 0) + 1
    return [
        Sender(e["RowKey"], bool(e.get("enabled")), str(e.get("created_at", "")), counts.get(e["RowKey"], 0))
        for e in table.query_entities("PartitionKey eq @pk", parameters={"pk": SENDER_PARTITION})
    ]
