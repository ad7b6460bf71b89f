"""What reports cost to run: storage transactions and CPU-seconds per 1,000 reports of each format (intake and
processing, counted on the wire by recording proxies in front of Azurite, CPU read from devhost's /proc entry), and
what a million reports a month costs on Azure at list prices given as named parameters.

    .venv/bin/python -m bench.cost [--reports 200]

The prices below are parameters, not facts this code can check: override them with today's figures from
https://azure.microsoft.com/pricing/calculator/ for your region and redundancy.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass

import httpx

from bench.service import devhost_cpu_seconds
from devhost.azurite import REPO_ROOT, Azurite, connection_string
from devhost.process import DevHostProcess
from tests.service import add_sender, app_env
from tests.storage_proxy import StorageProxy

EXAMPLES = REPO_ROOT / "docs" / "examples"
FORMATS = {
    "hl7v2": ("report.hl7", "application/hl7-v2"),
    "csv": ("simplereport.csv", "text/csv"),
    "fhir": ("report.json", "application/fhir+json"),
}


@dataclass(frozen=True)
class Prices:
    """US dollars, pay-as-you-go, East US. Source: the Azure pricing pages as summarised on 2025-05-22
    (https://modal.com/blog/azure-function-pricing-guide for Flex Consumption); storage operations per 10,000 from
    https://azure.microsoft.com/pricing/details/storage/ (blobs: hot tier; queues and tables: GPv2), as last read
    for this project in 2025. Verify before budgeting."""

    blob_write_per_10k: float = 0.065
    blob_read_per_10k: float = 0.005
    queue_ops_per_10k: float = 0.004
    table_tx_per_10k: float = 0.00036
    flex_gb_second: float = 0.000026
    flex_per_million_executions: float = 0.40
    instance_memory_gb: float = 2.0


def measure(reports: int) -> dict:
    out: dict[str, dict] = {}
    with Azurite() as azurite:
        blob_port, queue_port, table_port = azurite.ports
        with StorageProxy(blob_port) as blob, StorageProxy(queue_port) as queue, StorageProxy(table_port) as table:
            conn = connection_string(blob.port, queue.port, table.port)
            env = app_env(conn, **{"AzureWebJobs.reconcile_timer.Disabled": "true"})
            with DevHostProcess(REPO_ROOT, env=env) as host:
                key = add_sender(conn, "cost-lab")
                with httpx.Client(base_url=host.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
                    for name, (file, content_type) in FORMATS.items():
                        body = (EXAMPLES / file).read_bytes()
                        c.post("/api/reports", content=body, headers={"Content-Type": content_type})  # warm
                        time.sleep(2)
                        for proxy in (blob, queue, table):
                            proxy.take()
                        cpu = devhost_cpu_seconds(host.process.pid)
                        ids = [c.post("/api/reports", content=body, headers={"Content-Type": content_type})
                               .json()["id"] for _ in range(reports)]
                        polls = 0  # the status reads are the sender's polling, not the report's own cost
                        for report_id in ids:
                            while True:
                                polls += 1
                                if c.get(f"/api/reports/{report_id}").status_code == 200:
                                    break
                                time.sleep(0.05)
                        cpu = devhost_cpu_seconds(host.process.pid) - cpu
                        calls: Counter[str] = Counter()
                        for service, proxy in (("blob", blob), ("queue", queue), ("table", table)):
                            for call in proxy.take():
                                kind = "read" if call.method in ("GET", "HEAD") else "write"
                                calls[f"{service}_{kind}"] += 1
                        calls["table_read"] -= polls
                        out[name] = {"per_1000": {k: round(v * 1000 / reports) for k, v in sorted(calls.items())},
                                     "cpu_seconds_per_1000": round(cpu * 1000 / reports, 1),
                                     "body_bytes": len(body)}
    return out


def monthly(measured: dict, prices: Prices, reports: int = 1_000_000) -> dict:
    costs = {}
    for name, row in measured.items():
        per = {k: v * reports / 1000 for k, v in row["per_1000"].items()}
        storage = (per.get("blob_write", 0) * prices.blob_write_per_10k + per.get("blob_read", 0)
                   * prices.blob_read_per_10k + (per.get("queue_read", 0) + per.get("queue_write", 0))
                   * prices.queue_ops_per_10k + (per.get("table_read", 0) + per.get("table_write", 0))
                   * prices.table_tx_per_10k) / 10_000
        compute = row["cpu_seconds_per_1000"] * reports / 1000 * prices.instance_memory_gb * prices.flex_gb_second
        executions = 2 * reports / 1e6 * prices.flex_per_million_executions  # one HTTP, one queue invocation
        costs[name] = {"storage_usd": round(storage, 2), "compute_usd": round(compute, 2),
                       "executions_usd": round(executions, 2), "total_usd": round(storage + compute + executions, 2)}
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    args = parser.parse_args()
    measured = measure(args.reports)
    prices = Prices()
    print(json.dumps({"per_1000_reports": measured, "prices": asdict(prices),
                      "a_million_reports_a_month": monthly(measured, prices)}, indent=2))


if __name__ == "__main__":
    main()
