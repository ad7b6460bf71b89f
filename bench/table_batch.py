"""CPU per entity-group transaction: shared/table_batch's own framing (the fast path) against the SDK's public
`TableClient.submit_transaction` (its fallback), committing the same status-change transactions (a row update and
three index entries) to one in-memory Azurite, interleaved in rounds.

    .venv/bin/python -m bench.table_batch [--transactions 300] [--rounds 3]

Prints one JSON document: CPU ms per transaction of each path (median of rounds) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from azure.data.tables import UpdateMode

from devhost.azurite import Azurite
from shared import table_batch
from shared.storage import Storage


def _operations(n: int, path: str) -> list:
    pk = f"bench-{path}"
    row = {"PartitionKey": pk, "RowKey": f"r{n:06d}", "status": "processed", "attempts": 1, "size_bytes": 1234,
           "errors": "[]", "warnings": "[]", "items": '{"total":1,"accepted":1,"rejected":0}'}
    entries = [{**row, "RowKey": f"{prefix}~{n:06d}", "id": f"r{n:06d}"} for prefix in ("n", "u", "s")]
    return [("upsert", row, {"mode": UpdateMode.MERGE}),
            *(("upsert", entry, {"mode": UpdateMode.REPLACE}) for entry in entries)]


def _round(storage: Storage, path: str, count: int, start: int) -> float:
    table_batch.FAST = path == "fast"
    began = time.process_time()
    for n in range(start, start + count):
        table_batch.submit(storage.reports, _operations(n, path))
    return (time.process_time() - began) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with Azurite() as azurite:
        storage = Storage.from_connection_string(azurite.connection_string)
        storage.ensure()
        times: dict[str, list[float]] = {"fast": [], "public": []}
        for r in range(args.rounds):
            for path in ("fast", "public"):
                times[path].append(_round(storage, path, args.transactions, r * args.transactions))
        table_batch.FAST = True
    fast, public = statistics.median(times["fast"]), statistics.median(times["public"])
    print(json.dumps({"cpu_ms_per_transaction": {"fast": round(fast, 2), "public": round(public, 2)},
                      "public_over_fast": round(public / fast, 2), "operations_per_transaction": 4,
                      "transactions_per_round": args.transactions, "rounds": args.rounds}, indent=2))


if __name__ == "__main__":
    main()
