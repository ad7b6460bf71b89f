"""Measure peak memory and throughput of the report-format parsers on generated ~50 MB CSV, HL7 v2 and NDJSON bodies.

Usage: python bench/formats_memory.py [--mb 50] [--format csv|hl7|ndjson|all]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.formats import parse_report  # noqa: E402

CONTENT_TYPES = {"csv": "text/csv", "hl7": "application/hl7-v2", "ndjson": "application/fhir+ndjson"}


def generate(kind: str, size: int) -> bytes:
    """Build a body of about `size` bytes; realistic rows, each slightly different."""
    out = bytearray()
    if kind == "csv":
        out += b"message_id,patient_id,patient_state,test_code,test_name,result,result_units,specimen_collected_at,comment\r\n"
    if kind == "hl7":
        out += b"FHS|^~\\&|BENCH|BENCH LAB|ELR|DOH|20240101000000\rBHS|^~\\&|BENCH|BENCH LAB|ELR|DOH|20240101000000\r"
    n = 0
    while len(out) < size:
        n += 1
        out += _record(kind, n)
    if kind == "hl7":
        out += f"BTS|{n}\rFTS|1\r".encode()
    return bytes(out)


def _record(kind: str, n: int) -> bytes:
    if kind == "csv":
        return (
            f'M{n},P{n:08d},MN,2345-7,"Glucose, serum",{90 + n % 30},mg/dL,2024-01-{1 + n % 28:02d}T07:{n % 60:02d}:00-06:00,'
            f'"fasting; sample {n}\nsecond line"\r\n'
        ).encode()
    if kind == "hl7":
        return (
            f"MSH|^~\\&|BENCH|BENCH LAB^12D3456789^CLIA|ELR|DOH|20240101120000||ORU^R01^ORU_R01|B{n}|P|2.5.1\r"
            f"PID|1||P{n:08d}^^^BENCH^MR||DOE^JANE||19800101|F|||1 MAIN ST^^SPRINGFIELD^IL^62701\r"
            f"ORC|RE|O{n}|F{n}\r"
            f"OBR|1|O{n}|F{n}|2345-7^Glucose^LN|||20240101{n % 24:02d}0000-0600\r"
            f"OBX|1|NM|2345-7^Glucose [Mass/volume] in Serum or Plasma^LN||{90 + n % 30}|mg/dL^mg/dL^UCUM|70-99|N|||F\r"
            f"NTE|1|L|Fasting specimen \\T\\ hemolysis index normal\r"
            f"SPM|1|S{n}||119297000^Blood^SCT|||||||||||||20240101{n % 24:02d}0000-0600\r"
        ).encode()
    bundle = {
        "resourceType": "Bundle", "id": f"b{n}", "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [{"value": f"P{n:08d}"}], "address": [{"state": "MN"}]}},
            {"resource": {"resourceType": "Specimen", "collection": {"collectedDateTime": "2024-01-01T07:00:00-06:00"}}},
            {"resource": {"resourceType": "Observation", "status": "final",
                          "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
                          "valueQuantity": {"value": 90 + n % 30, "unit": "mg/dL"}, "performer": [{"display": "Bench Lab"}]}},
        ],
    }
    return json.dumps(bundle).encode() + b"\n"


def _memory_kib() -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB; Linux /proc, else ru_maxrss for both."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak, peak


def _reset_peak() -> None:
    """Forget the peak reached while generating the input (Linux >= 4.0), so only parsing is measured."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def measure(kind: str, size_mb: float, trace: bool) -> dict[str, float]:
    raw = generate(kind, int(size_mb * 1_000_000))
    gc.collect()
    _reset_peak()
    before, _ = _memory_kib()
    start = time.perf_counter()
    items = accepted = 0
    for result in parse_report(raw, CONTENT_TYPES[kind], "bench"):
        items += 1
        accepted += result.item is not None
    elapsed = time.perf_counter() - start
    _, peak = _memory_kib()
    traced_peak = -1
    if trace:  # a second, much slower pass: the parser's own Python allocations, body excluded
        tracemalloc.start()
        for _ in parse_report(raw, CONTENT_TYPES[kind], "bench"):
            pass
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return {
        "input_mb": len(raw) / 1e6,
        "items": items,
        "accepted": accepted,
        "seconds": elapsed,
        "items_per_s": items / elapsed,
        "mb_per_s": len(raw) / 1e6 / elapsed,
        "rss_before_mb": before / 1024,
        "rss_peak_mb": peak / 1024,
        "growth_mb": (peak - before) / 1024,
        "traced_peak_kib": traced_peak / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--format", choices=[*CONTENT_TYPES, "all"], default="all")
    parser.add_argument("--trace", action="store_true", help="also measure with tracemalloc (slow)")
    args = parser.parse_args()
    if args.format == "all":
        # One process per format so each peak RSS is its own.
        for kind in CONTENT_TYPES:
            extra = ["--trace"] if args.trace else []
            subprocess.run([sys.executable, __file__, "--mb", str(args.mb), "--format", kind, *extra], check=True)
        return
    stats = measure(args.format, args.mb, args.trace)
    print(
        f"{args.format:7} {stats['input_mb']:.1f} MB, {stats['items']} items ({stats['accepted']} accepted) "
        f"in {stats['seconds']:.1f} s = {stats['items_per_s']:.0f} items/s, {stats['mb_per_s']:.1f} MB/s; "
        f"RSS {stats['rss_before_mb']:.0f} MB with the body loaded, peak while parsing {stats['rss_peak_mb']:.0f} MB "
        f"(+{stats['growth_mb']:.1f} MB)"
        + (f"; tracemalloc peak {stats['traced_peak_kib']:.0f} KiB" if args.trace else "")
    )


if __name__ == "__main__":
    main()
