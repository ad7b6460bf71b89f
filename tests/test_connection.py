"""The storage connection settings (docs/configuration.md): a connection string or an identity-based connection, one
typed settings object, and a bad combination refused naming the setting."""

from __future__ import annotations

import time

import pytest

from devhost.settings import SettingError, Settings
from shared.config import SettingsError, load_settings
from shared.connection import DEVELOPMENT_STORAGE, ConnectionSettingError, overlay, resolve

URIS = {f"AzureWebJobsStorage__{s}ServiceUri": f"https://acct.{s}.core.windows.net/"
        for s in ("blob", "queue", "table")}


def test_connection_string_and_development_storage() -> None:
    assert resolve({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}).connection_string == DEVELOPMENT_STORAGE
    conn = resolve({"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=b"})
    assert conn.connection_string.endswith("AccountKey=b") and not conn.uses_identity
    assert "AccountKey" not in conn.describe()


def test_account_name_means_the_public_cloud_endpoints_and_the_developer_chain() -> None:
    conn = resolve({"AzureWebJobsStorage__accountName": "labintake01"})
    assert conn.uses_identity and conn.credential_kind is None and conn.client_id is None
    assert [conn.service_uri(s) for s in ("blob", "queue", "table")] == [
        "https://labintake01.blob.core.windows.net", "https://labintake01.queue.core.windows.net",
        "https://labintake01.table.core.windows.net"]


def test_service_uris_with_a_user_assigned_managed_identity() -> None:
    # Setting names are case-insensitive and `:` works as the section separator, as in the host.
    conn = resolve({**URIS, "azurewebjobsstorage__CREDENTIAL": "ManagedIdentity",
                    "AzureWebJobsStorage:clientId": "abc"})
    assert conn.credential_kind == "managedidentity" and conn.client_id == "abc"
    assert conn.service_uri("queue") == "https://acct.queue.core.windows.net"  # trailing slash dropped


def test_a_user_assigned_identity_by_resource_id_as_the_host_accepts_it() -> None:
    """`__managedIdentityResourceId` (the host takes it instead of `__clientId`) was refused by the app."""
    resource = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id"
    conn = resolve({**URIS, "AzureWebJobsStorage__credential": "managedidentity",
                    "AzureWebJobsStorage__managedIdentityResourceId": resource})
    assert conn.resource_id == resource and conn.client_id is None and resource in conn.describe()
    credential = conn.token_credential().inner
    assert type(credential).__name__ == "ManagedIdentityCredential"


@pytest.mark.parametrize("settings, named", [
    ({**URIS, "AzureWebJobsStorage__credential": "managedidentity", "AzureWebJobsStorage__clientId": "a",
      "AzureWebJobsStorage__managedIdentityResourceId": "/x"}, "AzureWebJobsStorage__managedIdentityResourceId"),
    ({**URIS, "AzureWebJobsStorage__managedIdentityResourceId": "/x"}, "AzureWebJobsStorage__credential"),
    ({}, "AzureWebJobsStorage"),
    ({"AzureWebJobsStorage": "UseDevelopmentStorage=true", "AzureWebJobsStorage__accountName": "acct"},
     "AzureWebJobsStorage__accountName"),
    ({"AzureWebJobsStorage__accountName": "acct", **URIS}, "AzureWebJobsStorage__blobServiceUri"),
    ({"AzureWebJobsStorage__accountName": "Not_An_Account"}, "AzureWebJobsStorage__accountName"),
    ({k: v for k, v in URIS.items() if "table" not in k}, "AzureWebJobsStorage__tableServiceUri"),
    ({**URIS, "AzureWebJobsStorage__queueServiceUri": "http://acct.queue.core.windows.net"},
     "AzureWebJobsStorage__queueServiceUri"),
    ({**URIS, "AzureWebJobsStorage__credential": "clientsecret"}, "AzureWebJobsStorage__credential"),
    ({**URIS, "AzureWebJobsStorage__clientSecret": "s3cret"}, "AzureWebJobsStorage__clientsecret"),
])
def test_a_bad_combination_is_refused_naming_the_setting(settings: dict, named: str) -> None:
    with pytest.raises(ConnectionSettingError, match=named):
        resolve(settings)
    with pytest.raises(SettingsError, match=named):  # the app's one settings object says the same
        load_settings(settings)


def test_the_app_settings_carry_the_connection() -> None:
    settings = load_settings({**URIS, "AzureWebJobsStorage__credential": "managedidentity"})
    assert settings.storage.uses_identity and settings.storage.table_uri == "https://acct.table.core.windows.net"


def test_environment_wins_for_the_connection_as_a_whole() -> None:
    file_values = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "MAX_REPORT_BYTES": "10"}
    merged = overlay(file_values, {"AzureWebJobsStorage__accountName": "acct"})
    assert "AzureWebJobsStorage" not in merged and merged["MAX_REPORT_BYTES"] == "10"
    assert resolve(merged).blob_uri == "https://acct.blob.core.windows.net"
    # Without the connection in the environment the file's is used.
    assert overlay(file_values, {"OTHER": "1"})["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"


def test_devhost_trigger_connections_take_both_forms() -> None:
    queue_only = {"AzureWebJobsStorage__queueServiceUri": "https://acct.queue.core.windows.net"}
    assert Settings(queue_only).storage_connection(None).queue_uri == "https://acct.queue.core.windows.net"
    # A short connection name also finds the `AzureWebJobs`-prefixed settings, as the host does.
    short = {"AzureWebJobsMyStorage__accountName": "acct"}
    assert Settings(short).storage_connection("MyStorage").queue_uri == "https://acct.queue.core.windows.net"
    with pytest.raises(SettingError, match="AzureWebJobsStorage__queueServiceUri"):
        Settings({"AzureWebJobsStorage__blobServiceUri": "https://acct.blob.core.windows.net"}).storage_connection(None)


def test_a_refused_or_missing_token_counts_as_storage_unavailable() -> None:
    """So that intake answers 503 + Retry-After (the sender retries), not 500, while the identity has no token."""
    from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError
    from azure.identity import CredentialUnavailableError

    from shared.storage import is_transient

    assert is_transient(CredentialUnavailableError("no managed identity endpoint"))
    assert is_transient(ClientAuthenticationError("AuthorizationPermissionMismatch"))
    assert not is_transient(ResourceNotFoundError("gone"))



def test_one_credential_per_identity_so_tokens_are_shared() -> None:
    from shared.connection import StorageConnection

    def conn(client_id: str) -> StorageConnection:
        return StorageConnection("AzureWebJobsStorage", queue_uri="https://a.queue.core.windows.net",
                                 credential_kind="managedidentity", client_id=client_id)

    assert conn("client-a").token_credential() is conn("client-a").token_credential()
    assert conn("client-a").token_credential() is not conn("client-b").token_credential()


def test_a_token_failure_is_remembered_briefly_so_an_outage_costs_one_wait() -> None:
    from azure.core.credentials import AccessToken
    from azure.core.exceptions import ServiceRequestError

    from shared.connection import FailFastCredential

    class Endpoint:
        calls = 0
        up = False

        def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
            self.calls += 1
            if not self.up:
                raise ServiceRequestError("identity endpoint unreachable")
            return AccessToken("t", 0)

    inner = Endpoint()
    credential = FailFastCredential(inner, hold_seconds=0.2)
    for _ in range(5):  # every storage call (and each SDK retry) asks; only the first waits on the endpoint
        with pytest.raises(ServiceRequestError):
            credential.get_token("https://storage.azure.com/.default")
    assert inner.calls == 1
    inner.up = True
    time.sleep(0.25)  # after the hold the endpoint is asked again
    assert credential.get_token("https://storage.azure.com/.default").token == "t"
    assert inner.calls == 2
