"""A mass failure: N messages land in `reports-poison` at once. How long the `poison_queue` trigger takes to record
them all (devhost, one worker, on an in-memory Azurite), and what health and `poison list` then cost.

    .venv/bin/python -m bench.poison [--messages 10000]

Prints one JSON document. The messages name reports that are not there (the trigger reads each row and records the
message either way), so the figures are the trigger's own cost, not processing's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from azure.storage.queue import QueueClient, TextBase64EncodePolicy
from ulid import ULID

from devhost.azurite import REPO_ROOT, Azurite
from devhost.process import DevHostProcess
from shared import poison
from shared.storage import Storage
from tests.service import app_env


def _message(n: int) -> str:
    report_id = str(ULID())
    return json.dumps({"v": 1, "id": report_id, "sender": f"mass-{n % 20}", "blob": f"raw/mass/{report_id}",
                       "sha256": "0" * 64, "content_type": "text/csv"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    args = parser.parse_args()
    with Azurite() as azurite:
        conn = azurite.connection_string
        storage = Storage.from_connection_string(conn)
        storage.ensure()
        queue = QueueClient.from_connection_string(conn, "reports-poison",
                                                   message_encode_policy=TextBase64EncodePolicy())
        began = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda n: queue.send_message(_message(n)), range(args.messages)))
        seeded = time.monotonic() - began
        env = app_env(conn, **{"AzureWebJobs.process_queue.Disabled": "true",
                               "AzureWebJobs.reconcile_timer.Disabled": "true"})
        with DevHostProcess(REPO_ROOT, env=env) as host:
            began = time.monotonic()
            while (queue.get_queue_properties().approximate_message_count or 0) > 0:
                time.sleep(1)
            drained = time.monotonic() - began
            waiting = sum(1 for _ in poison.waiting(storage.poisoned))
            began = time.monotonic()
            health = httpx.get(f"{host.url}/api/health", timeout=30).json()
            health_s = time.monotonic() - began
            began = time.monotonic()
            listed = subprocess.run([sys.executable, "-m", "shared.admin", "poison", "list", "--limit", "50"],
                                    cwd=REPO_ROOT, env={"AzureWebJobsStorage": conn, "PATH": ""},
                                    capture_output=True, text=True, check=True)
            list_s = time.monotonic() - began
    print(json.dumps({
        "messages": args.messages, "seeded_seconds": round(seeded, 1),
        "recorded_by_the_trigger_seconds": round(drained, 1),
        "messages_per_second": round(args.messages / drained, 1) if drained else None,
        "waiting_reports": waiting, "health_poison_depth": health["poison_depth"],
        "health_seconds": round(health_s, 3), "poison_list_limit_50_seconds": round(list_s, 2),
        "poison_list_lines": len(listed.stdout.splitlines()),
    }, indent=2))


if __name__ == "__main__":
    main()
