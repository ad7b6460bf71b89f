"""Storage names (docs/benchmarks.md, "Storage and cost over time") and the clients for them, created once per process and reused."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import requests
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient
from azure.storage.blob import BlobServiceClient, ContainerClient
from azure.storage.blob import LinearRetry as BlobLinearRetry
from azure.storage.queue import (
    BinaryBase64DecodePolicy,
    QueueClient,
    QueueServiceClient,
    TextBase64EncodePolicy,
)
from azure.storage.queue import (
    LinearRetry as QueueLinearRetry,
)
from requests.adapters import HTTPAdapter

from shared import registry
from shared.config import get_settings
from shared.connection import StorageConnection

log = logging.getLogger(__name__)

CONTAINER = "reports"
REPORTS_TABLE = "reports"
SENDERS_TABLE = "senders"
IDEMPOTENCY_TABLE = "idempotency"
ACTIVITY_TABLE = "reportactivity"
CHECKPOINTS_TABLE = "checkpoints"
KEYS_TABLE = "keys"
TOKEN_IDS_TABLE = "tokenids"
FINGERPRINTS_TABLE = "fingerprints"
POISONED_TABLE = "poisoned"
TABLES = (REPORTS_TABLE, SENDERS_TABLE, IDEMPOTENCY_TABLE, ACTIVITY_TABLE, CHECKPOINTS_TABLE, KEYS_TABLE,
          TOKEN_IDS_TABLE, FINGERPRINTS_TABLE, POISONED_TABLE)
QUEUE = "reports"
POISON_QUEUE = "reports-poison"

# Fail fast: the sender is told 503 + Retry-After and retries, which beats holding its connection for the SDKs'
# default back-off (blob and queue start at 15 s and reach 42 s in all) while storage is down.
TIMEOUTS = {"connection_timeout": 3, "read_timeout": 60}
TABLE_RETRY = {"retry_total": 2, "retry_backoff_factor": 0.2, "retry_backoff_max": 1}
PROXY_SETTINGS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
CA_BUNDLE_SETTINGS = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def _transport() -> RequestsTransport:
    """One pooled HTTP session for every storage client.

    requests otherwise looks for ~/.netrc and proxy variables on every call, a quarter of the SDK's time under
    load. That lookup is kept only when a proxy is configured (a CA bundle setting is passed on by
    `_connection_options`). The pool is sized for the host's concurrency.
    """
    session = requests.Session()
    session.trust_env = any(os.environ.get(name) for name in PROXY_SETTINGS)
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=False, **_connection_options())


def _connection_options() -> dict[str, Any]:
    """Timeouts, and the CA bundle requests would have read from the environment (azure-core passes `verify` on
    every call, so it must be given here)."""
    bundle = next((os.environ[name] for name in CA_BUNDLE_SETTINGS if os.environ.get(name)), None)
    return {**TIMEOUTS, **({"connection_verify": bundle} if bundle else {})}


def _fast_retry(policy: type) -> dict[str, Any]:
    return {"retry_policy": policy(backoff=0.3, random_jitter_range=0.2, retry_total=2)}


def raw_blob_name(sender: str, report_id: str) -> str:
    return f"raw/{sender}/{report_id}"


def result_blob_name(sender: str, report_id: str) -> str:
    return f"results/{sender}/{report_id}.ndjson"


def is_transient(exc: BaseException) -> bool:
    """Storage trouble worth retrying (unavailable, throttled, timed out, or refusing us for now), as opposed to a
    logic error.

    A refused credential counts as unavailable: with an identity, no token yet (the identity endpoint is down) or a
    role assignment still propagating are passing states, and even a wrong key is an outage the operator fixes, after
    which the sender's retry succeeds; a 500 would tell the sender its report is at fault.
    """
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, ConnectionError, TimeoutError,
                        ClientAuthenticationError)):
        return True
    if isinstance(exc, (ResourceNotFoundError, ResourceExistsError)):
        return False
    status = getattr(exc, "status_code", None)
    return isinstance(exc, AzureError) and (status is None or status >= 500 or status in (408, 429))


@dataclass
class Storage:
    """Every client the app uses, bound to one storage account."""

    container: ContainerClient
    reports: TableClient
    senders: TableClient
    idempotency: TableClient
    activity: TableClient
    checkpoints: TableClient
    keys: TableClient
    tokenids: TableClient
    fingerprints: TableClient
    poisoned: TableClient
    queue: QueueClient
    poison: QueueClient
    tables: TableServiceClient

    @classmethod
    def from_connection_string(cls, conn: str) -> Storage:
        return cls.connect(StorageConnection("AzureWebJobsStorage", connection_string=conn))

    @classmethod
    def connect(cls, connection: StorageConnection) -> Storage:
        """Clients for a connection string, or for the service URIs with the connection's token credential."""
        shared = {"transport": _transport()}
        blob_options = {**_fast_retry(BlobLinearRetry), **shared}
        queue_options = {**_fast_retry(QueueLinearRetry), **shared}
        table_options = {**TABLE_RETRY, **shared}
        if connection.connection_string is not None:
            conn = connection.connection_string
            blobs = BlobServiceClient.from_connection_string(conn, **blob_options)
            tables = TableServiceClient.from_connection_string(conn, **table_options)
            queues = QueueServiceClient.from_connection_string(conn, **queue_options)
        else:
            credential = connection.token_credential()
            blobs = BlobServiceClient(connection.service_uri("blob"), credential=credential, **blob_options)
            tables = TableServiceClient(connection.service_uri("table"), credential=credential, **table_options)
            queues = QueueServiceClient(connection.service_uri("queue"), credential=credential, **queue_options)

        def queue(name: str, decode: bool = True) -> QueueClient:
            # The Functions host reads base64 by default (host.json messageEncoding), so write base64.
            return queues.get_queue_client(
                name, message_encode_policy=TextBase64EncodePolicy(),
                message_decode_policy=BinaryBase64DecodePolicy() if decode else None,
            )

        return cls(
            container=blobs.get_container_client(CONTAINER),
            reports=tables.get_table_client(REPORTS_TABLE),
            senders=tables.get_table_client(SENDERS_TABLE),
            idempotency=tables.get_table_client(IDEMPOTENCY_TABLE),
            activity=tables.get_table_client(ACTIVITY_TABLE),
            checkpoints=tables.get_table_client(CHECKPOINTS_TABLE),
            keys=tables.get_table_client(KEYS_TABLE),
            tokenids=tables.get_table_client(TOKEN_IDS_TABLE),
            fingerprints=tables.get_table_client(FINGERPRINTS_TABLE),
            poisoned=tables.get_table_client(POISONED_TABLE),
            queue=queue(QUEUE),
            # Read as stored: the host copies a message that is not base64 to the poison queue as it is.
            poison=queue(POISON_QUEUE, decode=False),
            tables=tables,
        )

    def ensure(self) -> bool:
        """Create the container, tables and queues if missing. Each is tried on its own, so one service being down
        (say, queues) does not stop work on the others; returns whether all now exist."""
        steps: list[Callable[[], object]] = [self.container.create_container]
        steps += [partial(self.tables.create_table_if_not_exists, t) for t in TABLES]
        steps += [self.queue.create_queue, self.poison.create_queue]
        complete = True
        for step in steps:
            try:
                step()
            except ResourceExistsError:
                pass
            except AzureError as exc:
                log.warning("could not create storage resources yet: %s", type(exc).__name__)
                complete = False
        return complete


_ensure_lock = threading.Lock()


@lru_cache(maxsize=1)
def _storage(conn: StorageConnection) -> Storage:
    return Storage.connect(conn)


_ensured: set[StorageConnection] = set()
_last_try: dict[StorageConnection, float] = {}


def _forget() -> None:
    with _ensure_lock:
        _storage.cache_clear()
        _ensured.clear()
        _last_try.clear()


registry.remember(_storage, _forget)
# While storage is down, creating resources is not retried on every request: each try costs a round of retries.
ENSURE_RETRY_SECONDS = 5.0


def get_storage() -> Storage:
    """The process-wide clients; resources are created on first use and the result remembered."""
    conn = get_settings().storage
    storage = _storage(conn)
    if conn not in _ensured and time.monotonic() - _last_try.get(conn, -ENSURE_RETRY_SECONDS) >= ENSURE_RETRY_SECONDS:
        with _ensure_lock:
            if conn not in _ensured:
                _last_try[conn] = time.monotonic()
                if storage.ensure():
                    _ensured.add(conn)
    return storage
