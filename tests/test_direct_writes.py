"""shared/direct_writes.py sends intake's blob and message itself, for speed: each request must be the SDK's own
(same method, URL, headers and body), every failure must raise what the SDK's call raises, and what it stores must
read back through the SDK as the SDK's own writes do. Against the session's Azurite."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import PipelineRequest
from azure.storage.blob import (
    AccountSasPermissions,
    ContainerClient,
    ContentSettings,
    ResourceTypes,
    generate_account_sas,
)
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient, TextBase64EncodePolicy
from ulid import ULID

from devhost.azurite import ACCOUNT_NAME, Azurite
from shared import direct_writes

# Set per request by the pipeline (time, a fresh id, the signature over both), so never equal between two requests.
PER_REQUEST = {"x-ms-date", "x-ms-client-request-id", "authorization"}
BODY = b"MSH|^~\\&|LAB|FAC|||20261202||ORU^R01|CTRL-1|P|2.5.1\rPID|1||MRN-\xc3\xa9\r"
METADATA = {"sha256": "ab" * 32, "sender": "lab-one"}


@dataclass
class Sent:
    """The requests a client sent, as the transport got them."""

    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)

    def __call__(self, request: PipelineRequest[Any]) -> None:
        http = request.http_request
        headers = {k.lower(): v for k, v in http.headers.items() if k.lower() not in PER_REQUEST}
        self.requests.append((http.method, http.url, headers, bytes(http.body or b"")))

    def last(self) -> tuple[str, str, dict[str, str], bytes]:
        return self.requests[-1]


@dataclass
class Clients:
    container: ContainerClient
    queue: QueueClient
    sent: Sent


def _clients(conn: str, name: str, sent: Sent, create: bool = True) -> Clients:
    container = ContainerClient.from_connection_string(conn, name, raw_request_hook=sent)
    queue = QueueClient.from_connection_string(conn, name, message_encode_policy=TextBase64EncodePolicy(),
                                               message_decode_policy=BinaryBase64DecodePolicy(),
                                               raw_request_hook=sent)
    if create:
        container.create_container()
        queue.create_queue()
    return Clients(container, queue, sent)


@pytest.fixture
def own(azurite: Azurite) -> Iterator[Clients]:
    clients = _clients(azurite.connection_string, f"direct{str(ULID()).lower()[-12:]}", Sent())
    yield clients
    clients.container.delete_container()
    clients.queue.delete_queue()


@pytest.fixture(params=[True, False], ids=["fast", "fallback"])
def fast(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(direct_writes, "FAST", request.param)
    return bool(request.param)


def test_the_fast_path_is_taken_with_the_pinned_sdk(own: Clients) -> None:
    """Without it the writes still work, but every report pays the SDK's layers again: a release that moves the
    private attributes must be noticed here, not in a benchmark."""
    assert direct_writes.FAST
    assert direct_writes._pipeline(own.container) is not None  # noqa: SLF001
    assert direct_writes._pipeline(own.queue) is not None  # noqa: SLF001


def test_a_blob_put_is_the_sdks_own_request(own: Clients) -> None:
    own.container.upload_blob("raw/lab-one/A", BODY, overwrite=False, metadata=METADATA,
                              content_settings=ContentSettings(content_type="application/hl7-v2"))
    sdk = own.sent.last()
    direct_writes.put_blob(own.container, "raw/lab-one/B", BODY, "application/hl7-v2", METADATA)
    ours = own.sent.last()
    assert ours[0] == sdk[0] == "PUT"
    assert ours[1] == sdk[1].replace("raw/lab-one/A", "raw/lab-one/B")
    assert ours[2] == sdk[2]
    assert ours[3] == sdk[3] == BODY


def test_a_message_put_is_the_sdks_own_request(own: Clients) -> None:
    text = '{"v":1,"id":"01KBX","sender":"lab-\u00e9","blob":"raw/a/b","sha256":"00","content_type":"text/csv"}'
    own.queue.send_message(text, time_to_live=-1)
    sdk = own.sent.last()
    direct_writes.put_message(own.queue, text)
    assert own.sent.last() == sdk


def test_a_message_is_encoded_by_the_clients_own_policy(azurite: Azurite, own: Clients) -> None:
    """The encoding is the client's (shared/storage.py gives the app's queues base64): a client without one sends the
    text as it is, escaped in the XML as the SDK escapes it, and reads it back unchanged."""
    plain = QueueClient.from_connection_string(azurite.connection_string, own.queue.queue_name,
                                               raw_request_hook=own.sent)
    text = '<lab & "co"> \u00e9'
    plain.send_message(text, time_to_live=-1)
    sdk = own.sent.last()
    direct_writes.put_message(plain, text)
    assert own.sent.last() == sdk
    assert [m.content for m in plain.receive_messages(max_messages=2)] == [text, text]


def test_a_sas_connection_keeps_the_sdks_own_requests(azurite: Azurite, own: Clients) -> None:
    """A connection string with a SharedAccessSignature puts the token in every client URL's query, which the SDK
    re-encodes per blob: such clients keep the SDK's public calls, so their requests stay the SDK's own."""
    sas = generate_account_sas(ACCOUNT_NAME, azurite.account_key, ResourceTypes(object=True),
                               AccountSasPermissions(write=True, add=True, create=True),
                               expiry=datetime.now(UTC) + timedelta(hours=1), services="bq")
    endpoints = ";".join(part for part in azurite.connection_string.split(";")
                         if part.split("=", 1)[0] in ("BlobEndpoint", "QueueEndpoint"))
    signed = _clients(f"{endpoints};SharedAccessSignature={sas}", own.container.container_name, Sent(), create=False)
    assert "?" in signed.container.url and "?" in signed.queue.url
    assert direct_writes._pipeline(signed.container) is None and direct_writes._pipeline(signed.queue) is None  # noqa: SLF001

    signed.container.upload_blob("raw/lab-one/A", BODY, overwrite=False, metadata=METADATA,
                                 content_settings=ContentSettings(content_type="text/csv"))
    sdk = signed.sent.last()
    direct_writes.put_blob(signed.container, "raw/lab-one/B", BODY, "text/csv", METADATA)
    assert signed.sent.last() == (sdk[0], sdk[1].replace("raw/lab-one/A", "raw/lab-one/B"), sdk[2], sdk[3])
    signed.queue.send_message("x", time_to_live=-1)
    sdk = signed.sent.last()
    direct_writes.put_message(signed.queue, "x")
    assert signed.sent.last() == sdk
    assert own.container.download_blob("raw/lab-one/B").readall() == BODY


def test_what_is_written_reads_back_as_the_sdks_own(own: Clients, fast: bool) -> None:
    name = f"raw/lab-one/{ULID()}"
    direct_writes.put_blob(own.container, name, BODY, "application/hl7-v2; charset=utf-8", METADATA)
    blob = own.container.get_blob_client(name)
    assert blob.download_blob().readall() == BODY
    properties = blob.get_blob_properties()
    assert properties.content_settings.content_type == "application/hl7-v2; charset=utf-8"
    assert properties.metadata == METADATA
    assert properties.blob_type == "BlockBlob"

    text = '{"v":1,"id":"X","sender":"lab-\u00e9"}'
    direct_writes.put_message(own.queue, text)
    (message,) = own.queue.receive_messages(max_messages=1)
    assert message.content == text.encode("utf-8")  # the host and the app's decode policy read base64
    assert message.expires_on is not None and message.expires_on.year >= 9999  # never expires


def _raised(call: Callable[[], object]) -> tuple[type[BaseException], str | None, int | None]:
    with pytest.raises(HttpResponseError) as caught:
        call()
    return type(caught.value), caught.value.error_code, caught.value.status_code


def test_a_blob_that_exists_raises_as_the_sdk_does(own: Clients, fast: bool) -> None:
    name = f"raw/lab-one/{ULID()}"
    direct_writes.put_blob(own.container, name, BODY, "text/csv", METADATA)
    ours = _raised(lambda: direct_writes.put_blob(own.container, name, b"other", "text/csv", METADATA))
    sdk = _raised(lambda: own.container.upload_blob(name, b"other", overwrite=False))
    assert ours == sdk
    assert ours[0].__name__ == "ResourceExistsError" and ours[1] == "BlobAlreadyExists"
    assert own.container.download_blob(name).readall() == BODY  # never overwritten


def test_missing_resources_and_a_wrong_key_raise_as_the_sdk_does(azurite: Azurite, fast: bool) -> None:
    missing = _clients(azurite.connection_string, f"missing{str(ULID()).lower()[-12:]}", Sent(), create=False)
    wrong_key = azurite.connection_string.replace(azurite.account_key, base64.b64encode(b"not the key").decode())
    cases: list[tuple[Callable[[], object], Callable[[], object]]] = [
        (lambda: direct_writes.put_blob(missing.container, "raw/x/y", BODY, "text/csv", METADATA),
         lambda: missing.container.upload_blob("raw/x/y", BODY, overwrite=False)),
        (lambda: direct_writes.put_message(missing.queue, "x"),
         lambda: missing.queue.send_message("x", time_to_live=-1)),
    ]
    stranger = _clients(wrong_key, "reports", Sent(), create=False)
    cases += [
        (lambda: direct_writes.put_blob(stranger.container, "raw/x/y", BODY, "text/csv", METADATA),
         lambda: stranger.container.upload_blob("raw/x/y", BODY, overwrite=False)),
        (lambda: direct_writes.put_message(stranger.queue, "x"),
         lambda: stranger.queue.send_message("x", time_to_live=-1)),
    ]
    outcomes = [(_raised(ours), _raised(sdk)) for ours, sdk in cases]
    for ours, sdk in outcomes:
        assert ours == sdk
    assert [(ours[0].__name__, ours[2]) for ours, _ in outcomes] == [
        ("ResourceNotFoundError", 404), ("ResourceNotFoundError", 404), ("HttpResponseError", 403),
        ("ClientAuthenticationError", 403)]  # Azurite's blob and queue services name a bad signature differently
