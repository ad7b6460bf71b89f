"""Peak memory ÷ body size of processing's parse (shared.processing.parse_items, results spooled as in production)
for the hostile shapes of issue #18, the generated ~20 MB bodies of every format, and the largest published sample of
each format. Each shape runs in a fresh process, so each peak is its own.

    .venv/bin/python -m bench.memory [--mb 20]

Prints one line per shape (body MB, peak RSS growth MB, growth ÷ body, CPU seconds, outcome) and the worst ratio.
The bound the service keeps: peak growth at most ~10× the body plus a fixed base (BASE_MB).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.formats_memory import _memory_kib, _reset_peak, generate

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT / "tests" / "samples" / "real"
BASE_MB = 24  # the fixed part of the bound: interpreter arenas, the FHIR models' first use, the spool's buffer


def hostile(kind: str) -> tuple[bytes, str]:
    """The shapes of issue #18, as a sender with a broken exporter (or an attacker) would send them."""
    msh = b"MSH|^~\\&|A|B|||20260101||ORU^R01|M1|P|2.5.1\rPID|1||P1^^^L||DOE^J||19800101|F\r"
    if kind == "hl7-500k-obx":
        return msh + b"OBX|1|NM|1-8^T^LN||1|||||F\r" * 500_000, "application/hl7-v2"
    if kind == "hl7-1mb-pid8":
        return b"".join(msh.replace(b"|F\r", b"|" + b"X" * 1_000_000 + b"\r", 1) +
                        b"OBX|1|NM|1-8^T^LN||1|||||F\r" for _ in range(5)), "application/hl7-v2"
    if kind == "fhir-200-patients-24k-names":
        names = [list(range(24_000))]
        entries = [{"resource": {"resourceType": "Patient", "id": f"p{n}", "name": names}} for n in range(200)]
        return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode(), \
            "application/fhir+json"
    if kind == "fhir-wrong-types":
        entry = {"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": 5},
                              "performer": 5, "extension": 5, "valueQuantity": {"value": "x"}}}
        return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [entry] * 5000}).encode(), \
            "application/fhir+json"
    if kind == "csv-100k-columns":
        header = ",".join(f"col{n}" for n in range(100_000)).encode()
        return header + b"\n" + b"x," * 99_999 + b"x\n", "text/csv"
    raise ValueError(kind)


def body_of(shape: str, mb: float) -> tuple[bytes, str]:
    if shape.startswith("generated-"):
        kind = shape.removeprefix("generated-")
        types = {"csv": "text/csv", "simplereport": "text/csv", "hl7": "application/hl7-v2",
                 "ndjson": "application/fhir+ndjson", "bundle": "application/fhir+json",
                 "entries": "application/fhir+json"}
        return generate(kind, int(mb * 1_000_000)), types[kind]
    if shape.startswith("real-"):
        path = Path(shape.removeprefix("real-"))
        kind = {".hl7": "application/hl7-v2", ".csv": "text/csv", ".fhir": "application/fhir+json",
                ".json": "application/fhir+json", ".ndjson": "application/fhir+ndjson"}[path.suffix]
        return path.read_bytes(), kind
    return hostile(shape)


def shapes() -> list[str]:
    found = ["hl7-500k-obx", "hl7-1mb-pid8", "fhir-200-patients-24k-names", "fhir-wrong-types", "csv-100k-columns"]
    found += [f"generated-{k}" for k in ("csv", "simplereport", "hl7", "ndjson", "bundle", "entries")]
    for pattern in ("reportstream/hl7/*.hl7", "simplereport-csv/*.csv", "reportstream/fhir/*.fhir",
                    "simplereport-fhir/*.json"):
        largest = max(REAL.glob(pattern), key=lambda p: p.stat().st_size)
        found.append(f"real-{largest}")
    return found


def measure(shape: str, mb: float) -> dict:
    from shared import processing

    raw, content_type = body_of(shape, mb)
    gc.collect()
    _reset_peak()
    before, _ = _memory_kib()
    cpu = time.process_time()
    with tempfile.SpooledTemporaryFile(max_size=processing.SPOOL_IN_MEMORY_BYTES) as spool:
        parsed = processing.parse_items(raw, content_type, "bench", spool)
    cpu = time.process_time() - cpu
    _, peak = _memory_kib()
    body_mb = len(raw) / 1e6
    growth = (peak - before) / 1024
    errors = sorted({i.code for i in parsed.errors.kept})[:3]
    return {"shape": shape if not shape.startswith("real-") else "real " + Path(shape).name, "body_mb": body_mb,
            "growth_mb": growth, "ratio": growth / body_mb if body_mb else 0.0, "cpu_s": cpu,
            "within_bound": growth <= 10 * body_mb + BASE_MB, "items": parsed.counts.model_dump(), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20)
    parser.add_argument("--shape", help="measure this one shape (used for the per-shape processes)")
    args = parser.parse_args()
    if args.shape:
        print(json.dumps(measure(args.shape, args.mb)))
        return
    rows = []
    for shape in shapes():
        done = subprocess.run([sys.executable, "-m", "bench.memory", "--mb", str(args.mb), "--shape", shape],
                              cwd=ROOT, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['shape'][:42]:42} {row['body_mb']:7.2f} MB  +{row['growth_mb']:7.1f} MB  "
              f"{row['ratio']:6.2f}x  {row['cpu_s']:6.2f} s CPU  {'ok' if row['within_bound'] else 'OVER'}  "
              f"{row['items']} {row['errors']}", flush=True)
    worst = max(rows, key=lambda r: r["growth_mb"] - BASE_MB - 10 * r["body_mb"])
    print(f"worst against the bound (10x body + {BASE_MB} MB): {worst['shape']}: +{worst['growth_mb']:.1f} MB for "
          f"{worst['body_mb']:.2f} MB ({worst['ratio']:.2f}x); all within: {all(r['within_bound'] for r in rows)}")


if __name__ == "__main__":
    main()
