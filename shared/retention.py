"""How long patient data is kept: raw bodies (`raw/`) RAW_RETENTION_DAYS, results (`results/`)
RESULTS_RETENTION_DAYS. On Azure a storage lifecycle management policy deletes them (`policy()`, applied by the
deploy guide); Azurite has no lifecycle management, so `apply()` does the same there (`admin retention apply`).
Status rows stay: they hold no patient data, and say what became of the report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared.config import Settings
from shared.storage import CONTAINER, Storage

RAW_PREFIX, RESULTS_PREFIX = "raw/", "results/"
# Old versions and soft-deleted copies (blob versioning and soft delete, deploy guide section 1b) go a week later.
VERSIONS_DAYS = 7


def policy(settings: Settings) -> dict[str, Any]:
    """The lifecycle management policy (`az storage account management-policy create --policy @file`)."""

    def rule(name: str, prefix: str, days: int, since: str) -> dict[str, Any]:
        return {
            "enabled": True, "name": name, "type": "Lifecycle",
            "definition": {
                "filters": {"blobTypes": ["blockBlob"], "prefixMatch": [f"{CONTAINER}/{prefix}"]},
                "actions": {"baseBlob": {"delete": {since: days}},
                            "version": {"delete": {"daysAfterCreationGreaterThan": VERSIONS_DAYS}}},
            },
        }

    # Raw bodies never change, so their age is their creation; results are rewritten by a replay, so theirs is
    # their last write.
    return {"rules": [
        rule("raw-reports", RAW_PREFIX, settings.raw_retention_days, "daysAfterCreationGreaterThan"),
        rule("normalised-results", RESULTS_PREFIX, settings.results_retention_days, "daysAfterModificationGreaterThan"),
    ]}


@dataclass
class Applied:
    raw: int = 0
    results: int = 0


def apply(storage: Storage, settings: Settings, now: datetime | None = None) -> Applied:
    """Delete what the policy would (for storage without lifecycle management, such as Azurite)."""
    now = now or datetime.now(UTC)
    done = Applied()
    done.raw = _delete_older(storage, RAW_PREFIX, now - timedelta(days=settings.raw_retention_days), created=True)
    done.results = _delete_older(storage, RESULTS_PREFIX, now - timedelta(days=settings.results_retention_days),
                                 created=False)
    return done


def _delete_older(storage: Storage, prefix: str, cutoff: datetime, created: bool) -> int:
    deleted = 0
    for blob in storage.container.list_blobs(name_starts_with=prefix):
        moment = (blob.creation_time if created else blob.last_modified) or blob.last_modified
        if moment is not None and moment < cutoff:
            try:
                storage.container.delete_blob(blob.name, delete_snapshots="include")
                deleted += 1
            except ResourceNotFoundError:
                pass
    return deleted


def raw_is_kept(storage: Storage, blob: str) -> bool:
    try:
        storage.container.get_blob_client(blob).get_blob_properties()
        return True
    except ResourceNotFoundError:
        return False
