"""The service's own secrets (the access-token signing key, the fingerprint key): made once per storage account by
the first instance that needs one, read by the others, kept in table `keys` under a partition no scope can name."""

from __future__ import annotations

import base64
import secrets
import threading

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableClient

PARTITION = "~service"  # not a scope (shared/keys.py), so never listed as a sender's key


class ServiceSecret:
    """One 32-byte secret, loaded (or made) on first use and kept for the process."""

    def __init__(self, row_key: str) -> None:
        self.row_key = row_key
        self._value: bytes | None = None
        self._lock = threading.Lock()

    def get(self, table: TableClient) -> bytes:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._load_or_create(table)
        return self._value

    def clear(self) -> None:
        self._value = None

    def _load_or_create(self, table: TableClient) -> bytes:
        for _ in range(3):
            try:
                return base64.b64decode(str(table.get_entity(PARTITION, self.row_key)["secret"]))
            except ResourceNotFoundError:
                pass
            try:
                made = secrets.token_bytes(32)
                table.create_entity({"PartitionKey": PARTITION, "RowKey": self.row_key,
                                     "secret": base64.b64encode(made).decode()})
                return made
            except ResourceExistsError:
                continue  # another instance made it first: read theirs
        raise RuntimeError(f"could not read or create the service secret {self.row_key}")
