"""Parse speed per format on the published samples, beside the floor of reading the same bytes at all: HL7 v2 beside
a plain segment and field split, SimpleReport's CSV beside the stdlib csv reader, FHIR beside json.loads.

    .venv/bin/python -m bench.parse_speed [--seconds 2]

MB/s of CPU time (time.process_time), the best of five rounds. `bench.fhir_speed` breaks the FHIR figure down by
stage. Prints one JSON document; `bench.run` includes it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable
from typing import Any

from bench.fhir_speed import REAL, _bundles, _rate, reportstream, simplereport
from shared.formats import parse_report

HL7 = "application/hl7-v2"
CSV = "text/csv"


def hl7_bodies() -> list[tuple[bytes, str]]:
    folder = REAL / "reportstream"
    paths = sorted((folder / "hl7").glob("*.hl7")) + sorted((folder / "pairs").glob("*.hl7"))
    return [(path.read_bytes(), HL7) for path in paths]


def csv_bodies() -> list[tuple[bytes, str]]:
    folder = REAL / "simplereport-csv"
    return [(path.read_bytes(), CSV) for path in sorted(folder.glob("*.csv")) if "invalid" not in path.name]


def _split_hl7(bodies: list[tuple[bytes, str]]) -> None:
    for raw, _ in bodies:
        text = raw.decode("utf-8", "replace").replace("\r\n", "\r").replace("\n", "\r")
        for segment in text.split("\r"):
            segment.split("|")


def _read_csv(bodies: list[tuple[bytes, str]]) -> None:
    for raw, _ in bodies:
        for _row in csv.reader(io.StringIO(raw.decode("utf-8-sig", "replace"))):
            pass


def _loads(bodies: list[tuple[bytes, str]]) -> None:
    for bundle in _bundles(bodies):
        json.loads(bundle)


def _parse(bodies: list[tuple[bytes, str]]) -> None:
    for raw, kind in bodies:
        for _ in parse_report(raw, kind, "bench"):
            pass


def measure(seconds: float) -> dict[str, Any]:
    """Each format's parser and its floor, MB/s of CPU on the same bytes."""
    sets: list[tuple[str, list[tuple[bytes, str]], str, Callable[[list[tuple[bytes, str]]], None]]] = [
        ("hl7v2 (ReportStream samples)", hl7_bodies(), "segment and field split", _split_hl7),
        ("csv (SimpleReport samples)", csv_bodies(), "csv.reader", _read_csv),
        ("fhir (SimpleReport bundles)", simplereport(), "json.loads", _loads),
        ("fhir (ReportStream samples)", reportstream(), "json.loads", _loads),
    ]
    results: dict[str, Any] = {}
    for name, bodies, floor_name, floor in sets:
        megabytes = sum(len(raw) for raw, _ in bodies) / 1e6
        parsed = megabytes / _rate(lambda b=bodies: _parse(b), seconds)
        floored = megabytes / _rate(lambda b=bodies, f=floor: f(b), seconds)
        results[name] = {"bodies": len(bodies), "megabytes": round(megabytes, 3), "parse_mb_per_s": round(parsed, 1),
                         "floor": floor_name, "floor_mb_per_s": round(floored, 1),
                         "floor_over_parse": round(floored / parsed, 1)}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parse_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement")
    print(json.dumps(measure(parser.parse_args(argv).seconds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
