"""Entity-group transactions sent as one plain request, framed here from the SDK's own entity serialisation.

Why not `TableClient.submit_transaction`: azure-core prepares a multipart request with two thread pools per call and
reads the answer with the `email` parser, several times the CPU of a single write (bench/table_batch.py and
docs/benchmarks.md measure it). Why not the SDK's `TableBatchOperations` parts either: each part goes through the
generated request builders (URL and header serialisers, an `HttpRequest` per part), and every status change writes
the row with its index entries. Here a part is a few lines of text: the entity body still comes from the SDK's
`_add_entity_properties` (EDM types), keys are escaped as the SDK escapes them, and tests/test_table_batch.py checks
every part against the SDK's own for the pinned version. The request goes through the client's pipeline
(authentication, retries, transport).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.data.tables import TableClient, TableTransactionError, TransactionOperation, UpdateMode

# The fast path leans on the SDK's private serialisers (pinned in requirements.txt; tests/test_table_batch.py checks
# every part against the SDK's own). Should a release move them, transactions fall back to the public
# `TableClient.submit_transaction`: slower (see bench/table_batch.py), never broken.
try:
    from azure.data.tables._generated._vendor import prep_if_match, prep_if_none_match
    from azure.data.tables._serialize import _add_entity_properties, _get_match_condition, _prepare_key

    _PRIVATE_IMPORTS = True
except ImportError:  # pragma: no cover - exercised by forcing FAST off in the tests
    _PRIVATE_IMPORTS = False
_CLIENT_ATTRIBUTES = ("_client", "_primary_hostname", "_cosmos_endpoint")

_STATUS = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_ETAG = re.compile(rb"^ETag: *(.+?)\r?$", re.MULTILINE | re.IGNORECASE)
_BOUNDARY = re.compile(rb"boundary=([^\s;\"]+)")
EOL = "\r\n"
DATA_SERVICE_VERSION = "3.0"
MINIMAL_METADATA = "application/json;odata=minimalmetadata"
MAX_OPERATIONS = 100  # Azure's limit per entity-group transaction

Part = tuple[str, str, list[tuple[str, str]], str]  # method, URL, headers, body
# As TableClient.submit_transaction takes them: (kind, entity) or (kind, entity, options), the kind the SDK's own enum.
Operation = (tuple[TransactionOperation, Mapping[str, Any]]
             | tuple[TransactionOperation, Mapping[str, Any], Mapping[str, Any]])


def kind_of(operation: Operation) -> TransactionOperation:
    """The operation's kind (the SDK takes its names as plain strings too, in any case)."""
    kind = operation[0]
    if isinstance(kind, TransactionOperation):
        return kind
    try:
        return TransactionOperation(str(kind).lower())
    except ValueError:
        raise ValueError(f"unsupported transaction operation {kind}") from None


def _entity_url(base: str, entity: Mapping[str, Any]) -> str:
    partition = quote(_prepare_key(entity["PartitionKey"]), safe="")
    row = quote(_prepare_key(entity["RowKey"]), safe="")
    return f"{base}(PartitionKey='{partition}',RowKey='{row}')"


def _conditions(etag: str | None, match_condition: MatchConditions | None) -> list[tuple[str, str]]:
    condition = _get_match_condition(  # type: ignore[no-untyped-call]  # SDK private helper, checked at import
        etag=etag, match_condition=match_condition or MatchConditions.Unconditionally
    )
    headers = []
    if (if_match := prep_if_match(etag, condition)) is not None:
        headers.append(("If-Match", if_match))
    if (if_none_match := prep_if_none_match(etag, condition)) is not None:
        headers.append(("If-None-Match", if_none_match))
    return headers


def _part(base: str, version: str, operation: Operation) -> Part:
    """One operation as the SDK's TableBatchOperations would frame it (create, update, upsert, delete)."""
    kind, entity = kind_of(operation), operation[1]
    options: dict[str, Any] = dict(operation[2]) if len(operation) > 2 else {}
    mode = options.pop("mode", UpdateMode.MERGE)
    etag, match_condition = options.pop("etag", None), options.pop("match_condition", None)
    if options:
        raise ValueError(f"unsupported transaction operation {kind.value} {sorted(options)}")
    if "PartitionKey" not in entity or "RowKey" not in entity:
        raise ValueError("PartitionKey and/or RowKey were not provided in entity")
    common = [("x-ms-version", version), ("DataServiceVersion", DATA_SERVICE_VERSION)]
    if kind is TransactionOperation.DELETE:
        headers = [*common, ("Accept", MINIMAL_METADATA), *_conditions(etag, match_condition)]
        return "DELETE", _entity_url(base, entity), headers, ""
    body = json.dumps(_add_entity_properties(entity))
    if kind is TransactionOperation.CREATE:
        return "POST", base, [("Content-Type", "application/json"), *common, ("Accept", MINIMAL_METADATA)], body
    if mode not in (UpdateMode.MERGE, UpdateMode.REPLACE):
        raise ValueError(f"Mode type '{mode}' is not supported.")
    method = "PUT" if mode == UpdateMode.REPLACE else "PATCH"
    headers = [("Content-Type", "application/json"), *common, ("Accept", "application/json")]
    if kind is TransactionOperation.UPDATE:
        headers += _conditions(etag, match_condition)
    return method, _entity_url(base, entity), headers, body


def parts(table: TableClient, operations: Sequence[Operation]) -> list[Part]:
    """The parts of a transaction committing `operations` (all in one partition)."""
    if not operations or len(operations) > MAX_OPERATIONS:
        raise ValueError(f"a transaction holds 1 to {MAX_OPERATIONS} operations, not {len(operations)}")
    if len({op[1]["PartitionKey"] for op in operations}) != 1:
        raise ValueError("Partition Keys in the batch must all be the same.")
    if table._cosmos_endpoint:  # noqa: SLF001 - Cosmos wants merges as POST; not a target of this app
        raise ValueError("transactions against Cosmos DB table endpoints are not supported")
    base = f"{table.scheme}://{table._primary_hostname}/{table.table_name}"  # private: checked at import
    return [_part(base, table.api_version, op) for op in operations]


def request(table: TableClient, operations: Sequence[Operation]) -> HttpRequest:
    """The `$batch` request committing `operations` (as for `TableClient.submit_transaction`)."""
    batch_boundary, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    return HttpRequest(
        "POST",
        f"{table.scheme}://{table._primary_hostname}/$batch",  # private: checked at import
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": DATA_SERVICE_VERSION,
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch_boundary}",
            "Accept": "application/json",
        },
        content=_frame(parts(table, operations), batch_boundary, changeset),
    )


def fast_path_works(table: TableClient) -> bool:
    """Whether every private name the fast path uses exists in this SDK (checked once per client type)."""
    return _PRIVATE_IMPORTS and all(hasattr(table, name) for name in _CLIENT_ATTRIBUTES) and \
        hasattr(table._client, "send_request")  # private: checked at import


FAST = True  # tests turn it off to run the public path


def submit(table: TableClient, operations: Sequence[Operation]) -> list[dict[str, Any]]:
    """Commit `operations` atomically; returns each one's {"etag"}.

    Raises TableTransactionError naming the failing operation (`index`, `status_code`, `error_code`) as the SDK does.
    """
    if not (FAST and fast_path_works(table)):
        return submit_public(table, operations)
    response = table._client.send_request(request(table, operations), stream=True)  # noqa: SLF001 - read below
    body = response.read()
    if response.status_code != 202:
        raise HttpResponseError(response=response)
    return _read(body, response.headers.get("Content-Type", ""), len(operations))


def submit_public(table: TableClient, operations: Sequence[Operation]) -> list[dict[str, Any]]:
    """The same transaction through the SDK's public API."""
    if not operations or len(operations) > MAX_OPERATIONS:
        raise ValueError(f"a transaction holds 1 to {MAX_OPERATIONS} operations, not {len(operations)}")
    answers = table.submit_transaction([_public(op) for op in operations])
    return [{"etag": answer.get("etag")} for answer in answers]


def _public(operation: Operation) -> Operation:
    kind, entity = kind_of(operation), operation[1]
    options = dict(operation[2]) if len(operation) > 2 else {}
    if kind in (TransactionOperation.UPDATE, TransactionOperation.UPSERT):
        options.setdefault("mode", UpdateMode.MERGE)
    return (kind, entity, options) if options else (kind, entity)


def _frame(parts: list[Part], batch_boundary: str, changeset: str) -> bytes:
    lines = [f"--{batch_boundary}", f"Content-Type: multipart/mixed; boundary={changeset}", ""]
    for number, (method, url, headers, body) in enumerate(parts):
        encoded = body.encode("utf-8")
        lines += [f"--{changeset}", "Content-Type: application/http", "Content-Transfer-Encoding: binary",
                  f"Content-ID: {number}", "", f"{method} {url} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
        if encoded:
            lines.append(f"Content-Length: {len(encoded)}")
        lines += ["", body]
    lines += [f"--{changeset}--", f"--{batch_boundary}--", ""]
    return EOL.join(lines).encode("utf-8")


def _read(body: bytes, content_type: str, count: int) -> list[dict[str, Any]]:
    """Each part's ETag, or the failing part raised as TableTransactionError."""
    outer = _BOUNDARY.search(content_type.encode("latin-1"))
    inner = _BOUNDARY.search(body[body.find(b"Content-Type: multipart/mixed") :]) if outer else None
    boundary = inner or outer
    marker = b"--" + boundary.group(1) if boundary else b"\r\n--"
    results: list[dict[str, Any]] = []
    for chunk in body.split(marker):
        found = _STATUS.search(chunk)
        if found is None:
            continue  # not a part (the preamble, a closing boundary)
        status = int(found.group(1))
        if not 200 <= status < 300:
            raise _failure(chunk, status)
        etag = _ETAG.search(chunk)
        results.append({"etag": etag.group(1).decode("latin-1").strip() if etag else None})
    if len(results) != count:
        raise HttpResponseError(message=f"transaction answered {len(results)} parts for {count} operations")
    return results


def _failure(chunk: bytes, status: int) -> TableTransactionError:
    """The error as the SDK raises it: the message starts with the failing operation's index ("1:...")."""
    code, message = "", ""
    start = chunk.find(b"{")
    if start >= 0:
        try:
            error = json.loads(chunk[start : chunk.rfind(b"}") + 1]).get("odata.error", {})
            code = str(error.get("code", ""))
            message = str((error.get("message") or {}).get("value", ""))
        except ValueError:
            pass
    exc = TableTransactionError(message=message or f"0:transaction failed with HTTP {status}")
    exc.status_code = status
    exc.error_code = code  # type: ignore[attr-defined]  # set at run time, as the SDK's own _decode_error does
    return exc
