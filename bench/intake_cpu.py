"""Where intake's CPU goes, per report: the storage ceiling's three SDK calls, each call alone, the app's ingest
called in this process, and devhost answering the same POST over HTTP (read from its /proc entry). Sequential, so
contention plays no part: these are the costs the intake/ceiling ratio divides when the CPU is the limit.

    .venv/bin/python -m bench.intake_cpu [--reports 400]

Prints one JSON document (milliseconds of CPU per report or per call).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import time
from collections.abc import Callable

import azure.functions as func
from azure.data.tables import TransactionOperation
from azure.storage.blob import ContentSettings
from ulid import ULID

from bench.ceiling import Clients, IntakeOps, _entity_template
from bench.reports import HL7, small_report
from bench.service import devhost_cpu_seconds
from devhost.azurite import REPO_ROOT, Azurite
from devhost.process import DevHostProcess
from tests.service import add_sender, app_env

OFF = {"AzureWebJobs.process_queue.Disabled": "true", "AzureWebJobs.reconcile_timer.Disabled": "true",
       "AzureWebJobs.poison_queue.Disabled": "true"}
WARM = 30


def per_call_ms(fn: Callable[[int], object], n: int) -> float:
    for i in range(WARM):
        fn(i)
    began = time.process_time()
    for i in range(n):
        fn(10_000 + i)
    return round((time.process_time() - began) / n * 1000, 3)


def sdk_calls(clients: Clients, n: int) -> dict[str, float]:
    from shared import direct_writes, index, table_batch

    template, settings, body = _entity_template(), ContentSettings(content_type=HL7), small_report(1)

    def row_with_index(submit: Callable[..., object]) -> Callable[[int], object]:
        def write(_i: int) -> object:
            entity = {**template, "RowKey": str(ULID()), "status": "queued", index.VERSION_FIELD: index.VERSION}
            return submit(clients.table, [(TransactionOperation.CREATE, entity), *index.operations(None, entity)])
        return write

    message = json.dumps({"v": 1, "id": "x" * 26, "sender": "bench", "blob": "raw/x/y", "sha256": "0" * 64,
                          "content_type": HL7})
    return {
        "blob_upload": per_call_ms(lambda i: clients.container.upload_blob(
            f"raw/cpu/{ULID()}", body, overwrite=False, content_settings=settings,
            metadata={"sha256": "0" * 64, "sender": "bench"}), n),
        "blob_put_direct": per_call_ms(lambda i: direct_writes.put_blob(
            clients.container, f"raw/cpu/{ULID()}", body, HL7, {"sha256": "0" * 64, "sender": "bench"}), n),
        "queue_send": per_call_ms(lambda i: clients.queue.send_message(message, time_to_live=-1), n),
        "queue_put_direct": per_call_ms(lambda i: direct_writes.put_message(clients.queue, message), n),
        "table_insert": per_call_ms(lambda i: clients.table.create_entity({**template, "RowKey": str(ULID())}), n),
        "row_and_index_fast_path": per_call_ms(row_with_index(table_batch.submit), n),
        "row_and_index_sdk_submit_transaction": per_call_ms(row_with_index(table_batch.submit_public), n),
    }


def app_in_process(key: str, n: int) -> float:
    import ingest_http

    loop = asyncio.new_event_loop()  # one loop, as the worker has: a loop per call would be measured too

    def post(i: int) -> None:
        request = func.HttpRequest("POST", "http://localhost/api/reports", body=small_report(20_000 + i),
                                   headers={"authorization": f"Bearer {key}", "content-type": HL7})
        assert loop.run_until_complete(ingest_http.main(request)).status_code == 202

    try:
        return per_call_ms(post, n)
    finally:
        loop.close()


def devhost_per_request(conn: str, key: str, n: int) -> float:
    with DevHostProcess(REPO_ROOT, env=app_env(conn, **OFF)) as host:
        connection = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)

        def post(i: int) -> None:
            connection.request("POST", "/api/reports", body=small_report(40_000 + i),
                               headers={"Authorization": f"Bearer {key}", "Content-Type": HL7})
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 202, answer.status

        for i in range(WARM):
            post(i)
        before = devhost_cpu_seconds(host.process.pid)
        for i in range(n):
            post(50_000 + i)
        return round((devhost_cpu_seconds(host.process.pid) - before) / n * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.intake_cpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=400)
    n = parser.parse_args(argv).reports
    with Azurite() as azurite:
        conn = azurite.connection_string
        clients = Clients.create(conn)
        ceiling = per_call_ms(IntakeOps(clients), n)
        calls = sdk_calls(clients, n)
        key = add_sender(conn, "cpu-probe")
        os.environ["AzureWebJobsStorage"] = conn  # noqa: SIM112 - the host's own spelling
        os.environ.update(OFF)
        app = app_in_process(key, n)
        devhost = devhost_per_request(conn, key, n)
    print(json.dumps({
        "reports": n,
        "ms_cpu_per_report": {"ceiling_three_sdk_calls": ceiling, "app_ingest_in_process": app,
                              "devhost_per_request": devhost},
        "ms_cpu_per_call": calls,
        "app_over_ceiling": round(app / ceiling, 2),
        "devhost_over_ceiling": round(devhost / ceiling, 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
