"""Intake's two hot writes, Put Blob (never overwriting) and Put Message, each sent as one plain request through the
storage client's own pipeline: the same authentication, retries, transport, request ids and tracing as the SDK's
call, without its per-call layers.

Why: `ContainerClient.upload_blob` builds a `BlobClient` and its generated client for every blob, then runs the
upload options, the request builder and the response deserialiser; `QueueClient.send_message` serialises and
deserialises the message through its generated models. Measured sequentially with Azurite on a 2-core machine
(bench.intake_cpu, five runs): the blob's put takes 4-38% less CPU than the SDK's call (1.0-1.7 ms against 1.3-2.0),
the message's 13-42% less (0.8-1.8 ms against 1.2-2.4). On one worker process CPU decides how many reports a second
it takes (docs/benchmarks.md, "Intake against the storage ceiling"). The requests are exactly the SDK's (tests/test_direct_writes.py compares them header by header for the
pinned versions) and failures raise what the SDK raises, refined by the SDK's own error handler.

The fast path reaches one private attribute per client (the generated client's `PipelineClient`) and the SDK's
private error handler. Should a release move them, the writes fall back to the public calls: slower, never broken.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

from azure.core import PipelineClient
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    map_error,
)
from azure.core.rest import HttpRequest, HttpResponse
from azure.storage.blob import ContainerClient, ContentSettings
from azure.storage.queue import QueueClient

try:
    from azure.storage.blob._shared.response_handlers import process_storage_error as _blob_error
    from azure.storage.queue._shared.response_handlers import process_storage_error as _queue_error

    _PRIVATE_IMPORTS = True
except ImportError:  # pragma: no cover - exercised by forcing FAST off in the tests
    _PRIVATE_IMPORTS = False

# The generated operations' own map, before the storage SDK refines the error by its x-ms-error-code.
_ERROR_MAP: dict[int, type[HttpResponseError]] = {401: ClientAuthenticationError, 404: ResourceNotFoundError,
                                                  409: ResourceExistsError, 304: ResourceNotModifiedError}
_BLOB_HEADERS = {"x-ms-blob-type": "BlockBlob", "If-None-Match": "*", "Accept": "application/xml",
                 "Content-Type": "application/octet-stream"}
_MESSAGE_HEADERS = {"Content-Type": "application/xml", "Accept": "application/xml"}
_MESSAGE_XML = "<?xml version='1.0' encoding='utf-8'?>\n<QueueMessage><MessageText>{}</MessageText></QueueMessage>"

# Tests switch the fast path off to check the fallback.
FAST = _PRIVATE_IMPORTS


def _pipeline(client: ContainerClient | QueueClient) -> PipelineClient[Any, Any] | None:
    """The pipeline the client's own calls go through, when this SDK version still keeps it where we look. None for
    a client whose URL carries a SAS token: the SDK re-encodes it per blob, and the Functions host does not take a
    SAS connection for AzureWebJobsStorage anyway, so such a client keeps the public calls."""
    inner = getattr(getattr(client, "_client", None), "_client", None)
    if not FAST or not isinstance(inner, PipelineClient) or urlsplit(client.url).query:
        return None
    return inner


def put_blob(container: ContainerClient, name: str, body: bytes, content_type: str, metadata: Mapping[str, str]) -> None:
    """Create block blob `name` holding `body`; ResourceExistsError when it already exists (as
    `upload_blob(overwrite=False)`)."""
    pipeline = _pipeline(container)
    if pipeline is None:
        container.upload_blob(name, body, overwrite=False, content_settings=ContentSettings(content_type=content_type),
                              metadata=dict(metadata))
        return
    headers = {**_BLOB_HEADERS, "x-ms-blob-content-type": content_type, "x-ms-version": container.api_version,
               **{f"x-ms-meta-{key}": value for key, value in metadata.items()}}
    request = HttpRequest("PUT", f"{container.url}/{quote(name, safe='~/')}", headers=headers, content=body)
    _expect(pipeline.send_request(request), 201, _blob_error)


def put_message(queue: QueueClient, text: str) -> None:
    """Enqueue `text`, encoded by the client's own message encode policy (base64 for the app's queues, as the
    Functions host expects: shared/storage.py), never expiring (as `send_message(text, time_to_live=-1)`)."""
    pipeline = _pipeline(queue)
    encode = getattr(queue, "_message_encode_policy", None)
    if pipeline is None or encode is None or queue.key_encryption_key is not None or queue.require_encryption:
        queue.send_message(text, time_to_live=-1)  # client-side encryption is the SDK's alone
        return
    request = HttpRequest("POST", f"{queue.url}/messages", params={"messagettl": -1},
                          headers={**_MESSAGE_HEADERS, "x-ms-version": queue.api_version},
                          content=_MESSAGE_XML.format(escape(encode(text))).encode("utf-8"))
    _expect(pipeline.send_request(request), 201, _queue_error)


def _expect(response: HttpResponse, status: int, refine: Callable[[HttpResponseError], NoReturn]) -> None:
    """Raise for any answer but `status`, exactly as the SDK's call would."""
    if response.status_code == status:
        return
    response.read()
    try:
        map_error(status_code=response.status_code, response=response, error_map=_ERROR_MAP)
        raise HttpResponseError(response=response)
    except HttpResponseError as error:
        refine(error)
