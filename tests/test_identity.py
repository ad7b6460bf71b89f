"""Identity-based storage, for real: Azurite over HTTPS taking only bearer tokens (its account key is a random one
nobody is given), App Service's managed identity endpoint stood in on loopback, and the app, devhost's queue
trigger and the admin CLI with no connection string anywhere."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.storage.queue import QueueClient

from devhost.azurite import ACCOUNT_NAME, REPO_ROOT, Azurite
from devhost.process import DevHostProcess
from tests.identity import IdentityEndpoint, self_signed_certificate
from tests.service import EXAMPLES, app_env, poll

CLIENT_ID = "5b7e3c1a-0000-4000-8000-00000000c11e"  # a user-assigned identity's client id
STORAGE = "AzureWebJobsStorage"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def token_azurite(tls: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    cert, key = tls
    account_key = base64.b64encode(os.urandom(64)).decode()
    instance = Azurite(cert=cert, key=key, oauth=True, account_key=account_key,
                       log_path=tmp_path_factory.mktemp("azurite") / "azurite.log")
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def identity_endpoint() -> Iterator[IdentityEndpoint]:
    endpoint = IdentityEndpoint().start()
    yield endpoint
    endpoint.stop()


def identity_settings(azurite: Azurite, identity: dict[str, str], ca_bundle: Path, **extra: str) -> dict[str, str]:
    """The app's settings with an identity-based connection by service URI (Azurite needs path-style URIs, so not
    `__accountName`), and the environment App Service gives a Function App with a managed identity."""
    env = app_env("", **{f"{STORAGE}__{s}ServiceUri": azurite.service_uri(s) for s in ("blob", "queue", "table")})
    # Empty, so that a developer's local.settings.json cannot bring a connection string in.
    env[STORAGE] = ""
    env.update(identity)
    env["REQUESTS_CA_BUNDLE"] = str(ca_bundle)  # trust the self-signed certificate
    env.update(extra)
    return env


def run_admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.lower().startswith(STORAGE.lower())}
    return subprocess.run([sys.executable, "-m", "shared.admin", *args], cwd=REPO_ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def identity_service(token_azurite: Azurite, identity_endpoint: IdentityEndpoint, tls: tuple[Path, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevHostProcess, dict[str, str]]]:
    env = identity_settings(token_azurite, identity_endpoint.env, tls[0], **{
        f"{STORAGE}__credential": "managedidentity", f"{STORAGE}__clientId": CLIENT_ID})
    host = DevHostProcess(REPO_ROOT, env=env, log_path=tmp_path_factory.mktemp("devhost") / "devhost.log")
    host.start()
    yield host, env
    host.stop()
    if host.process is not None and host.process.returncode not in (0, None):
        print(host.logs()[-8000:])


def test_this_azurite_refuses_the_development_key(token_azurite: Azurite, tls: tuple[Path, Path]) -> None:
    """What the rest of the module relies on: a shared key is no way in, only a token."""
    from devhost.azurite import ACCOUNT_KEY

    client = QueueClient(token_azurite.service_uri("queue"), "anything",
                         credential={"account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY},
                         connection_verify=str(tls[0]))
    with pytest.raises(ClientAuthenticationError):
        client.create_queue()


def test_report_goes_from_post_to_processed_with_a_managed_identity(identity_service, identity_endpoint) -> None:
    host, env = identity_service
    added = run_admin(env, "senders", "add", "lab-mi")
    assert added.returncode == 0, added.stderr
    key = json.loads(added.stdout)["key"]

    with httpx.Client(base_url=host.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        posted = client.post("/api/reports", content=(EXAMPLES / "report.csv").read_bytes(),
                             headers={"Content-Type": "text/csv"})
        assert posted.status_code == 202, posted.text
        assert posted.json()["status"] == "queued"  # blob, row and queue message all written with the token
        done = poll(lambda: client.get(f"/api/reports/{posted.json()['id']}"), lambda r: r.status_code == 200, 60)
        assert done.json()["status"] == "processed", done.text  # devhost's queue trigger ran it, by token too
        assert done.json()["items"]["accepted"] == 3
        health = client.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"

    # Every token came from the identity endpoint, for storage, as the user-assigned identity asked for.
    asked = identity_endpoint.requests
    assert asked and all(r["header_ok"] == "True" for r in asked)
    assert {r["resource"].rstrip("/") for r in asked} == {"https://storage.azure.com"}
    assert {r.get("client_id") for r in asked} == {CLIENT_ID}


def test_admin_cli_with_the_developer_credential_chain(token_azurite, identity_endpoint, tls) -> None:
    """Without `__credential`, DefaultAzureCredential is used; here it finds the managed identity environment (on a
    developer's machine it would be their Azure CLI login)."""
    env = identity_settings(token_azurite, identity_endpoint.env, tls[0])
    before = len(identity_endpoint.requests)
    added = run_admin(env, "senders", "add", "lab-default")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["sender"] == "lab-default"
    listed = run_admin(env, "senders", "list")
    assert "lab-default" in listed.stdout
    assert len(identity_endpoint.requests) > before
    assert identity_endpoint.requests[-1].get("client_id") is None  # the system-assigned identity


def test_admin_cli_names_the_setting_of_a_bad_combination(token_azurite, identity_endpoint, tls) -> None:
    env = identity_settings(token_azurite, identity_endpoint.env, tls[0], **{f"{STORAGE}__tableServiceUri": ""})
    done = run_admin(env, "senders", "list")
    assert done.returncode == 2
    assert f"{STORAGE}__tableServiceUri" in done.stderr and "Traceback" not in done.stderr



def test_without_a_token_intake_answers_503_not_500(token_azurite, tls, tmp_path) -> None:
    """No token to be had (here the identity endpoint does not answer at all): storage is unavailable to the app, so
    a sender is told 503 with Retry-After and sends again later, never a 500 that blames its report."""
    nobody = {"IDENTITY_ENDPOINT": "http://127.0.0.1:9/msi/token", "IDENTITY_HEADER": "x"}  # nothing listens
    env = identity_settings(token_azurite, nobody, tls[0], **{f"{STORAGE}__credential": "managedidentity"})
    host = DevHostProcess(REPO_ROOT, env=env, log_path=tmp_path / "devhost.log").start()
    try:
        posted = httpx.post(f"{host.url}/api/reports", content=b"a,b\n1,2\n", timeout=60,
                            headers={"Authorization": "Bearer lri_whatever", "Content-Type": "text/csv"})
        assert posted.status_code == 503, posted.text
        # Soon: azure-identity's own default (10 retries with back-off) would hold the sender over a minute.
        assert posted.elapsed.total_seconds() < 30
        assert posted.headers["content-type"].startswith("application/problem+json")
        assert int(posted.headers["retry-after"]) >= 1
        assert httpx.get(f"{host.url}/api/health", timeout=60).status_code == 503
    finally:
        host.stop()
    assert "Traceback" not in posted.text
