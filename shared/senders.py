"""The sender registry: senders, their API keys (stored only as SHA-256), and authenticating a request's key.

Table `senders` holds two kinds of rows: PartitionKey `sender` / RowKey name (the sender itself, with the hashes
of its active keys in `keys`), and PartitionKey `key` / RowKey sha256(key) (one per active key), so authenticating
costs one point read and rotating or disabling a sender reads only its own row.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient, UpdateMode

from shared import registry
from shared.clock import now_iso, parse_iso, to_iso

SENDER_PARTITION = "sender"
KEY_PARTITION = "key"
KEY_PREFIX = "lri_"
# `name` or, as ReportStream named senders, `org.name` (the organisation is the part before the dot); each part as
# ReportStream names them (lower case, digits, '-', '_'). Access-token scopes (shared/keys.py) are built of the same.
NAME_PART = r"[a-z0-9][a-z0-9_-]{0,62}"
SENDER_NAME = re.compile(rf"^{NAME_PART}(?:\.{NAME_PART})?$")


class SenderError(ValueError):
    """An admin request about senders that cannot be done (bad name, already exists, unknown)."""


@dataclass(frozen=True)
class Sender:
    name: str
    enabled: bool
    created_at: str
    keys: int
    allow_duplicates: bool | None = None  # None: the ALLOW_DUPLICATES_DEFAULT setting applies


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


# Keys that authenticated recently (hash -> sender), so a busy sender does not cost a table read per report. Only
# successes are kept, for AUTH_CACHE_SECONDS: a rotated or disabled key stops working within that time.
_accepted: registry.TimedCache[str, str] = registry.timed_cache()


def authenticate_key(table: TableClient, key: str, cache_seconds: float = 0) -> str | None:
    """The sender of an API key that is known, active (not past a rotation's grace) and whose sender is enabled."""
    if not key or len(key) > 512:
        return None
    digest = key_hash(key)
    cached = _accepted.get(digest)
    if cached is not None:
        return cached
    found = _lookup(table, digest)
    if found is None:
        return None
    sender, expires_at = found
    if expires_at is not None:
        # A key in its rotation grace is trusted from the cache no longer than its grace lasts.
        cache_seconds = min(cache_seconds, (parse_iso(expires_at) - datetime.now(UTC)).total_seconds())
    _accepted.put(digest, sender, cache_seconds)
    return sender


def _lookup(table: TableClient, digest: str) -> tuple[str, str | None] | None:
    """(sender, end of the key's grace or None) for an active key; None for an unknown, revoked or expired one."""
    try:
        row = table.get_entity(KEY_PARTITION, digest)
    except ResourceNotFoundError:
        return None
    # The lookup already matched the hash; the constant-time comparison keeps that true should the lookup change.
    if not hmac.compare_digest(str(row.get("RowKey", "")), digest):
        return None
    if not row.get("active", False) or not row.get("sender_enabled", False):
        return None
    expires_at = row.get("expires_at") or None
    if expires_at is not None and parse_iso(str(expires_at)) <= datetime.now(UTC):
        return None
    return str(row["sender"]), (str(expires_at) if expires_at else None)


def is_enabled(table: TableClient, name: str) -> bool:
    """Whether a sender of that name is registered and enabled (for access tokens, which name it)."""
    if not SENDER_NAME.match(name):
        return False
    try:
        return bool(table.get_entity(SENDER_PARTITION, name).get("enabled", False))
    except ResourceNotFoundError:
        return False


def _check_name(name: str) -> str:
    if not SENDER_NAME.match(name):
        raise SenderError(
            f"invalid sender name {name!r}: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or "
            "digit, or two such names joined by a dot (org.sender, as ReportStream named senders)"
        )
    return name


def key_hashes(table: TableClient, row: dict[str, Any]) -> list[str]:
    """The hashes of a sender's active keys, from its row. A sender registered before rows kept that list gets it
    once, from a query of the key partition (`admin index rebuild` does this for every sender)."""
    if "keys" in row:
        return list(json.loads(str(row["keys"])))
    found = table.query_entities(
        "PartitionKey eq @pk and sender eq @name", parameters={"pk": KEY_PARTITION, "name": row["RowKey"]},
        select=["RowKey"],
    )
    hashes = [str(entity["RowKey"]) for entity in found]
    _save_hashes(table, str(row["RowKey"]), hashes)
    return hashes


def _save_hashes(table: TableClient, name: str, hashes: list[str]) -> None:
    table.update_entity({"PartitionKey": SENDER_PARTITION, "RowKey": name, "keys": json.dumps(hashes)},
                        mode=UpdateMode.MERGE)


def _store_key(table: TableClient, name: str, key: str, enabled: bool) -> None:
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


def add(table: TableClient, name: str) -> str:
    """Register a sender and return its first API key (shown once, stored only as a hash)."""
    _check_name(name)
    key = new_key()
    row = {"PartitionKey": SENDER_PARTITION, "RowKey": name, "enabled": True, "created_at": now_iso(),
           "keys": json.dumps([key_hash(key)])}
    try:
        table.create_entity(row)
    except ResourceExistsError:
        raise SenderError(f"sender {name!r} already exists (use `senders rotate {name}` for a new key)") from None
    _store_key(table, name, key, enabled=True)
    return key


def _get(table: TableClient, name: str) -> dict[str, Any]:
    try:
        return table.get_entity(SENDER_PARTITION, _check_name(name))
    except ResourceNotFoundError:
        raise SenderError(f"no sender named {name!r}") from None


def rotate(table: TableClient, name: str, grace_seconds: float = 0) -> str:
    """Issue a new key; earlier ones stop working at once, or after `grace_seconds` (so a sender can switch over
    without an outage). A key whose grace has passed is deleted by the next rotation.

    The sender row lists the new key's hash before the key exists and drops the old ones only after they are
    deleted: whatever step fails, every key that works is listed, so the next rotation revokes it.
    """
    row = _get(table, name)
    old = key_hashes(table, row)
    key = new_key()
    _save_hashes(table, name, [*old, key_hash(key)])
    _store_key(table, name, key, enabled=bool(row.get("enabled", True)))
    kept = []
    ends = datetime.now(UTC) + timedelta(seconds=grace_seconds)
    for digest in old:
        if grace_seconds > 0 and _give_grace(table, digest, ends):
            kept.append(digest)
        else:
            _delete_key(table, digest)
    _save_hashes(table, name, [*kept, key_hash(key)])
    return key


def _give_grace(table: TableClient, digest: str, ends: datetime) -> bool:
    """Let a key work until `ends` (never longer than a grace it already has); False if it is gone or expired."""
    try:
        row = table.get_entity(KEY_PARTITION, digest)
    except ResourceNotFoundError:
        return False
    current = parse_iso(str(row["expires_at"])) if row.get("expires_at") else None
    if current is not None and current <= datetime.now(UTC):
        return False
    until = min(ends, current) if current is not None else ends
    table.update_entity({"PartitionKey": KEY_PARTITION, "RowKey": digest, "expires_at": to_iso(until)},
                        mode=UpdateMode.MERGE)
    return True


def _delete_key(table: TableClient, digest: str) -> None:
    try:
        table.delete_entity(KEY_PARTITION, digest)
    except ResourceNotFoundError:
        pass


def set_enabled(table: TableClient, name: str, enabled: bool) -> None:
    row = _get(table, name)
    table.update_entity({"PartitionKey": SENDER_PARTITION, "RowKey": name, "enabled": enabled}, mode=UpdateMode.MERGE)
    # The flag is copied onto each key row so that authenticating stays a single read.
    for digest in key_hashes(table, row):
        try:
            table.update_entity(
                {"PartitionKey": KEY_PARTITION, "RowKey": digest, "sender_enabled": enabled}, mode=UpdateMode.MERGE
            )
        except ResourceNotFoundError:
            pass  # listed by a rotation that stopped before creating it


def list_senders(table: TableClient) -> list[Sender]:
    rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": SENDER_PARTITION})
    return [
        Sender(str(row["RowKey"]), bool(row.get("enabled")), str(row.get("created_at", "")),
               len(key_hashes(table, row)), row.get("allow_duplicates"))
        for row in rows
    ]


def names(table: TableClient) -> list[str]:
    """Every registered sender's name (one partition of a small table)."""
    return [str(row["RowKey"]) for row in table.query_entities(
        "PartitionKey eq @pk", parameters={"pk": SENDER_PARTITION}, select=["RowKey"])]


def set_allow_duplicates(table: TableClient, name: str, allow: bool) -> None:
    """ReportStream's `allowDuplicates`: false turns duplicate detection on for the sender's reports (taken up by
    processors within a minute)."""
    _get(table, name)
    table.update_entity({"PartitionKey": SENDER_PARTITION, "RowKey": name, "allow_duplicates": allow},
                        mode=UpdateMode.MERGE)
