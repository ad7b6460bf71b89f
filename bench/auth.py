"""What a ReportStream access token costs beside an API key.

1. Storage calls per POST: devhost on an Azurite reached through recording proxies (blob, queue, table), processing
   and the timer switched off so only intake is counted; N reports posted with an API key, N with an
   organisation-wide access token naming its sender in `client`.
2. CPU per authentication once cached: `shared.auth.authenticate` called in this process, key vs token, warm
   caches; and a token's first (uncached) check, which reads its key and sender.

    .venv/bin/python -m bench.auth [--reports 200] [--checks 20000]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import jwt
from ulid import ULID

from bench.reports import HL7, small_report
from devhost.azurite import REPO_ROOT, Azurite, connection_string
from devhost.process import DevHostProcess
from tests.service import add_sender, admin, app_env
from tests.simplereport_client import new_rsa_key, public_pem
from tests.storage_proxy import StorageProxy

OFF = {"AzureWebJobs.process_queue.Disabled": "true", "AzureWebJobs.reconcile_timer.Disabled": "true"}


def _token(url: str, key: object, org: str, kid: str) -> str:
    signed = jwt.encode({"iss": org, "sub": org, "aud": url, "exp": int(time.time()) + 60, "jti": str(ULID())},
                        key, algorithm="RS256", headers={"kid": kid})
    body = (f"scope={org}.*.report&grant_type=client_credentials&client_assertion_type="
            f"urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion={signed}")
    response = httpx.post(f"{url}/api/token", content=body.encode())
    response.raise_for_status()
    return response.json()["access_token"]


def _register(conn: str, org: str, key: object) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "key.pem"
        path.write_bytes(public_pem(key))
        admin(conn, "keys", "add", f"{org}.*.report", "--kid", org, str(path))


def storage_calls(reports: int) -> dict:
    with Azurite() as azurite:
        ports = azurite.ports
        with StorageProxy(ports[0]) as blob, StorageProxy(ports[1]) as queue, StorageProxy(ports[2]) as table:
            conn = connection_string(blob.port, queue.port, table.port)
            with DevHostProcess(REPO_ROOT, env=app_env(conn, **OFF)) as host:
                api_key = add_sender(conn, "bench_org.keyed")
                add_sender(conn, "bench_org.tokened")
                signing = new_rsa_key()
                _register(conn, "bench_org", signing)
                token = _token(host.url, signing, "bench_org", "bench_org")
                results = {}
                for name, headers in (
                    ("api_key", {"Authorization": f"Bearer {api_key}"}),
                    ("token", {"Authorization": token, "client": "bench_org.tokened"}),
                ):
                    with httpx.Client(base_url=host.url, headers={**headers, "Content-Type": HL7}) as client:
                        client.post("/api/reports", content=small_report(0))  # warm: caches and first writes
                        for proxy in (blob, queue, table):
                            proxy.take()
                        for n in range(1, reports + 1):
                            assert client.post("/api/reports", content=small_report(n)).status_code == 202
                    calls = Counter()
                    for service, proxy in (("blob", blob), ("queue", queue), ("table", table)):
                        for call in proxy.take():
                            calls[f"{service}:{call.method}:{call.table or ''}"] += 1
                    results[name] = {"calls_per_post": round(sum(calls.values()) / reports, 3),
                                     "by_kind": {k: round(v / reports, 3) for k, v in sorted(calls.items())}}
                return results


def cpu(checks: int) -> dict:
    from shared import auth, config
    from shared.storage import get_storage

    with Azurite() as azurite:
        os.environ["AzureWebJobsStorage"] = azurite.connection_string  # noqa: SIM112 - the host's own spelling
        config.get_settings.cache_clear()
        storage = get_storage()
        conn = azurite.connection_string
        api_key = add_sender(conn, "cpu_org.keyed")
        add_sender(conn, "cpu_org.tokened")
        signing = new_rsa_key()
        _register(conn, "cpu_org", signing)
        with DevHostProcess(REPO_ROOT, env=app_env(conn, **OFF)) as host:
            token = _token(host.url, signing, "cpu_org", "cpu_org")

        def per_call(authorization: str, client: str | None) -> float:
            auth.authenticate(storage, authorization, client, 300)  # warm
            began = time.process_time()
            for _ in range(checks):
                auth.authenticate(storage, authorization, client, 300)
            return (time.process_time() - began) / checks * 1e6

        key_us = per_call(f"Bearer {api_key}", None)
        token_us = per_call(token, "cpu_org.tokened")
        auth.standing.clear()
        began = time.perf_counter()
        auth.authenticate(storage, token, "cpu_org.tokened", 300)
        cold_ms = (time.perf_counter() - began) * 1000
        return {"api_key_cached_us": round(key_us, 1), "token_cached_us": round(token_us, 1),
                "token_added_us": round(token_us - key_us, 1), "token_uncached_ms": round(cold_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--checks", type=int, default=20_000)
    args = parser.parse_args()
    print(json.dumps({"storage_calls": storage_calls(args.reports), "cpu": cpu(args.checks)}, indent=2))


if __name__ == "__main__":
    main()
