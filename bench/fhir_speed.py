"""CPU throughput of the FHIR parser on the real samples: SimpleReport's bundles (tests/samples/real/simplereport-fhir,
its NDJSON in the one-bundle-per-line form it sends) and ReportStream's (tests/samples/real/reportstream/fhir and
pairs/*.fhir), beside json.loads of the same bytes.

Usage: python bench/fhir_speed.py [--seconds 3] [--stages]

MB/s and bundles/s are of CPU time (time.process_time), steadier than wall time on a shared machine. "cold cache"
forgets the model findings kept for recurring resources (fhir.PROBLEMS) before each pass, as for bundles all new;
"warm" keeps them, as for a sender sending the same Organization, Device and Provenance again. `--stages` also
times the stages one by one (the JSON read with entry building, the FHIR model check, the ELR core, cold) and the
parser without its fast paths (streamed, the full model for every resource: as before them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.formats import fhir, parse_report  # noqa: E402
from shared.formats.fhir_fast import ProblemCache  # noqa: E402

REAL = ROOT / "tests" / "samples" / "real"
FHIR = "application/fhir+json"
NDJSON = "application/fhir+ndjson"


def _json_values(text: str) -> list[Any]:
    """Pretty-printed JSON values one after another (SimpleReport's stored NDJSON fixtures)."""
    decoder, at = json.JSONDecoder(), 0
    values: list[Any] = []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


def simplereport() -> list[tuple[bytes, str]]:
    bodies = []
    for path in sorted((REAL / "simplereport-fhir").iterdir()):
        if path.suffix == ".json":
            bodies.append((path.read_bytes(), FHIR))
        elif path.suffix == ".ndjson":  # as SimpleReport sends it: one compact bundle per line
            lines = [json.dumps(b, separators=(",", ":")) for b in _json_values(path.read_text())]
            bodies.append((("\n".join(lines) + "\n").encode(), NDJSON))
    return bodies


def reportstream() -> list[tuple[bytes, str]]:
    paths = sorted((REAL / "reportstream" / "fhir").glob("*.fhir")) + sorted((REAL / "reportstream" / "pairs").glob("*.fhir"))
    return [(p.read_bytes(), NDJSON if p.name.startswith("batch_") else FHIR) for p in paths]


def _bundles(bodies: list[tuple[bytes, str]]) -> list[bytes]:
    """Each Bundle's own bytes (a line of an NDJSON body)."""
    return [line for raw, kind in bodies for line in (raw.split(b"\n") if kind == NDJSON else [raw]) if line.strip()]


def _rate(run: Callable[[], object], seconds: float, rounds: int = 5) -> float:
    """CPU seconds per call of `run`: the best of `rounds` rounds of at least seconds/rounds CPU each (after one
    warm-up call); the best round is the one least disturbed by whatever else the machine runs."""
    run()
    best = float("inf")
    for _ in range(rounds):
        calls, start = 0, time.process_time()
        while True:
            run()
            calls += 1
            spent = time.process_time() - start
            if spent >= seconds / rounds:
                break
        best = min(best, spent / calls)
    return best


def measure(name: str, bodies: list[tuple[bytes, str]], seconds: float, stages: bool) -> None:
    size = sum(len(raw) for raw, _ in bodies)
    bundles = _bundles(bodies)

    def parse() -> None:
        for raw, kind in bodies:
            for _ in parse_report(raw, kind, "bench"):
                pass

    def parse_cold() -> None:  # nothing kept from an earlier pass: every bundle as if seen first
        fhir.PROBLEMS.clear()
        parse()

    def read() -> None:  # the JSON read and the model check, without the ELR core
        for raw in bundles:
            fhir._read(raw, "bench")

    def parse_cold_read() -> None:
        fhir.PROBLEMS.clear()
        read()

    def loads() -> None:
        for raw in bundles:
            json.loads(raw)

    rows = [("parse, cold cache", _rate(parse_cold, seconds)), ("parse, warm cache", _rate(parse, seconds))]
    if stages:
        with _patched(fhir, _model_problems=lambda resource, read: []):
            json_only = _rate(read, seconds)
        fhir.PROBLEMS.clear()
        read_checked = _rate(parse_cold_read, seconds)
        read_done = {raw: fhir._read(raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw, "bench") for raw in bundles}
        with _patched(fhir, _read=lambda data, where: read_done[data]):
            core = _rate(parse, seconds)  # each Bundle read once beforehand: what is left is the core and the issues
        rows += [("  stage: JSON read + keep", json_only), ("  stage: model check", read_checked - json_only),
                 ("  stage: ELR core + issues", core)]
        with _patched(fhir, _loaded=lambda data: None):
            with _patched(fhir, _model_problems=lambda resource, read: []):
                streamed = _rate(read, seconds)
            with _patched(fhir, conforms=lambda model, resource: False, PROBLEMS=ProblemCache(size=0),
                          by_element=lambda model, resource, validate: None):
                full = _rate(read, seconds)
                rows.append(("parse, streamed, full model", _rate(parse, seconds)))  # the parser before
                rows.append(("  stage: JSON read streamed", streamed))
                rows.append(("  stage: full model check", full - streamed))
    rows.append(("json.loads", _rate(loads, seconds)))
    print(f"{name}: {len(bodies)} bodies, {len(bundles)} bundles, {size / 1e6:.3f} MB")
    for label, per_call in rows:
        print(f"  {label:30} {size / 1e6 / per_call:7.1f} MB/s  {len(bundles) / per_call:8.0f} bundles/s  "
              f"({per_call * 1e3:.1f} ms CPU per pass)")


@contextmanager
def _patched(module: Any, **values: Any) -> Iterator[None]:
    """Module attributes replaced for a measurement (a bench may reach into the parser: these are not an API)."""
    saved = {key: getattr(module, key) for key in values}
    for key, value in values.items():
        setattr(module, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(module, key, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per measurement")
    parser.add_argument("--stages", action="store_true", help="also time each stage")
    args = parser.parse_args()
    measure("SimpleReport", simplereport(), args.seconds, args.stages)
    measure("ReportStream", reportstream(), args.seconds, args.stages)


if __name__ == "__main__":
    main()
