"""How Azure Functions reads a storage connection from settings: a connection string, or an identity-based section.

A connection named `AzureWebJobsStorage` is either that setting (a connection string) or the settings under the
prefix `AzureWebJobsStorage__`: `accountName`, or `blobServiceUri` + `queueServiceUri` + `tableServiceUri`, with
`credential=managedidentity` (and `clientId` for a user-assigned identity) or, without `credential`, the developer
credential chain (DefaultAzureCredential). Both the app and devhost read connections through this module, so the
rule lives in one place. It depends on nothing else in the app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared import registry

# Azurite's published development account: what `UseDevelopmentStorage=true` stands for. The Python storage SDKs
# do not understand that shorthand, so it is expanded here.
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

SERVICES = ("blob", "queue", "table")
MANAGED_IDENTITY = "managedidentity"
# The identity settings this app understands, as the Functions host spells them (matched case-insensitively).
_SPELLING = {name.lower(): name for name in ("accountName", "blobServiceUri", "queueServiceUri", "tableServiceUri",
                                              "credential", "clientId", "managedIdentityResourceId")}


class ConnectionSettingError(ValueError):
    """The connection settings are missing or contradict each other; the message names the setting."""


@dataclass(frozen=True)
class StorageConnection:
    """One storage account: by connection string, or by service URIs with a token credential."""

    name: str
    connection_string: str | None = None
    blob_uri: str | None = None
    queue_uri: str | None = None
    table_uri: str | None = None
    credential_kind: str | None = None  # "managedidentity", or None for DefaultAzureCredential
    client_id: str | None = None
    resource_id: str | None = None  # a user-assigned identity named by its Azure resource id instead

    @property
    def uses_identity(self) -> bool:
        return self.connection_string is None

    def service_uri(self, service: str) -> str:
        uri = {"blob": self.blob_uri, "queue": self.queue_uri, "table": self.table_uri}[service]
        if uri is None:
            raise ConnectionSettingError(f"{self.name}__{service}ServiceUri: missing")
        return uri

    def describe(self) -> str:
        """What an operator may see in a log: endpoints and the kind of credential, never a key."""
        if not self.uses_identity:
            return f"{self.name} (connection string)"
        which = self.client_id or self.resource_id
        how = f"managed identity{f' {which}' if which else ''}" if self.credential_kind else "DefaultAzureCredential"
        return f"{self.name} ({self.blob_uri}, {self.queue_uri}, {self.table_uri}; {how})"

    def token_credential(self) -> Any:
        """The azure-identity credential for this connection, one per process and connection (tokens are cached
        inside it, so every client built on it shares them)."""
        key = (self.credential_kind, self.client_id, self.resource_id)
        with _credentials_lock:
            credential = _credentials.get(key)
            if credential is None:
                credential = FailFastCredential(_new_credential(self.credential_kind, self.client_id,
                                                                self.resource_id))
                _credentials[key] = credential
            return credential


_credentials: dict[tuple[str | None, str | None, str | None], Any] = {}
_credentials_lock = threading.Lock()


def _forget_credentials() -> None:
    with _credentials_lock:
        _credentials.clear()


registry.remember(_credentials, _forget_credentials)

# azure-identity retries a token request up to 10 times with back-off (over a minute when the identity endpoint is
# down), while a sender waits. A token is fetched about once a day; two quick retries cover a blip.
TOKEN_REQUEST: dict[str, Any] = {
    "retry_total": 2, "retry_backoff_factor": 0.5, "retry_backoff_max": 2, "connection_timeout": 5,
}
# After a failed token request, requests within this many seconds fail at once with the same error: every storage
# call (and every SDK retry of it) asks for a token, and each would otherwise wait out the endpoint again.
TOKEN_FAILURE_HOLD_SECONDS = 5.0


class FailFastCredential:
    """A token credential that remembers a failure for a few seconds, so an outage of the identity endpoint costs
    one wait, not one per storage call; tokens themselves are cached by the credential it wraps."""

    def __init__(self, inner: Any, hold_seconds: float = TOKEN_FAILURE_HOLD_SECONDS) -> None:
        self.inner = inner
        self.hold_seconds = hold_seconds
        self._failure: tuple[float, BaseException] | None = None
        self._lock = threading.Lock()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        failure = self._failure
        if failure is not None and time.monotonic() - failure[0] < self.hold_seconds:
            raise failure[1]
        with self._lock:  # one request to the endpoint at a time; the others then find its token or its failure
            failure = self._failure
            if failure is not None and time.monotonic() - failure[0] < self.hold_seconds:
                raise failure[1]
            try:
                token = getattr(self.inner, method)(*args, **kwargs)
            except Exception as exc:
                self._failure = (time.monotonic(), exc)
                raise
            self._failure = None
            return token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._call("get_token", *scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self._call("get_token_info", *scopes, options=options)

    def close(self) -> None:
        self.inner.close()


def _new_credential(kind: str | None, client_id: str | None, resource_id: str | None = None) -> Any:
    # Imported here: a connection string never needs azure-identity (nor its start-up cost).
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if kind == MANAGED_IDENTITY and resource_id:
        return ManagedIdentityCredential(identity_config={"resource_id": resource_id}, **TOKEN_REQUEST)
    if kind == MANAGED_IDENTITY:
        return ManagedIdentityCredential(client_id=client_id, **TOKEN_REQUEST)
    # As the host does, a clientId without `credential` picks the user-assigned identity DefaultAzureCredential tries.
    return DefaultAzureCredential(managed_identity_client_id=client_id) if client_id else DefaultAzureCredential()


def expand_development_storage(value: str) -> str:
    """`UseDevelopmentStorage=true` spelled out as Azurite's default endpoints; any other value unchanged."""
    parts = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
    if parts.get("UseDevelopmentStorage", "").strip().lower() == "true":
        return DEVELOPMENT_STORAGE
    return value


def overlay(file_values: Mapping[str, str], environ: Mapping[str, str],
            name: str = "AzureWebJobsStorage") -> dict[str, str]:
    """Settings from a file (local.settings.json) under the environment, which wins; for the connection `name` it
    wins as a whole, so an identity-based connection in the environment is not mixed with a connection string
    from the file (or the other way round)."""
    def part_of_connection(key: str) -> bool:
        folded = key.lower().replace(":", "__")
        return folded == name.lower() or folded.startswith(name.lower() + "__")

    in_environ = any(part_of_connection(k) and v for k, v in environ.items())
    kept = {k: v for k, v in file_values.items() if not (in_environ and part_of_connection(k))}
    return {**kept, **environ}


def _lookup(settings: Mapping[str, str], name: str) -> str | None:
    """A setting by name, case-insensitively (as .NET configuration reads app settings); empty counts as unset.

    `__` and `:` both separate sections, as in the host."""
    wanted = name.lower().replace(":", "__")
    for key, value in settings.items():
        if key.lower().replace(":", "__") == wanted and value is not None and str(value).strip():
            return str(value).strip()
    return None


def _section(settings: Mapping[str, str], name: str) -> dict[str, str]:
    """Non-empty settings under `<name>__`, keyed by the lower-cased remainder."""
    prefix = name.lower() + "__"
    found = {}
    for key, value in settings.items():
        folded = key.lower().replace(":", "__")
        if folded.startswith(prefix) and value is not None and str(value).strip():
            found[folded[len(prefix):]] = str(value).strip()
    return found


def _https_uri(setting: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise ConnectionSettingError(f"{setting}: must be an https:// URL (tokens are only sent over TLS), "
                                     f"got {value!r}")
    return value.rstrip("/")


def resolve(settings: Mapping[str, str], name: str = "AzureWebJobsStorage",
            services: tuple[str, ...] = SERVICES) -> StorageConnection:
    """The connection `name` from settings (environment, app settings) for the storage `services` its user needs;
    a missing or contradictory one raises an error naming the setting to fix."""
    string = _lookup(settings, name)
    section = _section(settings, name)
    identity_keys = sorted(k for k in section if k in ("accountname", "blobserviceuri", "queueserviceuri",
                                                         "tableserviceuri"))
    if string is not None:
        if identity_keys:
            raise ConnectionSettingError(
                f"{name} is set (a connection string) and so is {name}__{_SPELLING[identity_keys[0]]} (an "
                f"identity-based connection): set one of them, not both")
        return StorageConnection(name, connection_string=expand_development_storage(string))
    if not identity_keys:
        raise ConnectionSettingError(
            f"{name}: missing. Set it to a connection string (UseDevelopmentStorage=true for Azurite), or use an "
            f"identity: {name}__accountName, or {name}__blobServiceUri + {name}__queueServiceUri + "
            f"{name}__tableServiceUri")
    unknown = sorted(k for k in section if k not in _SPELLING)
    if unknown:
        raise ConnectionSettingError(
            f"{name}__{unknown[0]}: not a setting this app understands (known: accountName, blobServiceUri, "
            f"queueServiceUri, tableServiceUri, credential, clientId, managedIdentityResourceId)")
    credential = section.get("credential")
    if credential is not None and credential.lower() != MANAGED_IDENTITY:
        raise ConnectionSettingError(
            f"{name}__credential: must be 'managedidentity' or unset (the developer credential chain), "
            f"got {credential!r}")
    kind = MANAGED_IDENTITY if credential else None
    client_id = section.get("clientid")
    resource_id = section.get("managedidentityresourceid")
    if resource_id is not None and client_id is not None:
        raise ConnectionSettingError(f"{name}__clientId and {name}__managedIdentityResourceId are both set: name the "
                                     "user-assigned identity one way")
    if resource_id is not None and kind is None:
        raise ConnectionSettingError(f"{name}__managedIdentityResourceId needs {name}__credential=managedidentity")
    account = section.get("accountname")
    uris = {s: section.get(f"{s}serviceuri") for s in SERVICES}
    if account is not None:
        given = [f"{name}__{s}ServiceUri" for s, uri in uris.items() if uri]
        if given:
            raise ConnectionSettingError(
                f"{name}__accountName and {given[0]} are both set: give the account name or the service URIs")
        if not account.isalnum() or not account.islower() or not 3 <= len(account) <= 24:
            raise ConnectionSettingError(
                f"{name}__accountName: not a storage account name (3-24 lower-case letters and digits), "
                f"got {account!r}")
        uris = {s: f"https://{account}.{s}.core.windows.net" for s in SERVICES}
    else:
        missing = [f"{name}__{s}ServiceUri" for s in services if not uris[s]]
        if missing:
            needs = " + ".join(f"{name}__{s}ServiceUri" for s in services)
            raise ConnectionSettingError(f"{', '.join(missing)}: missing (an identity-based connection by URI needs "
                                         f"{needs})")
        uris = {s: _https_uri(f"{name}__{s}ServiceUri", uri) if uri else None for s, uri in uris.items()}
    return StorageConnection(name, blob_uri=uris["blob"], queue_uri=uris["queue"], table_uri=uris["table"],
                             credential_kind=kind, client_id=client_id, resource_id=resource_id)
