"""Survey every published sample report of SimpleReport and ReportStream (not only the ones copied into tests):
share fully accepted per source and format, the first error of each file that is not, and peak parser memory.

Usage: python -m bench.samples --reportstream GITDIR --simplereport GITDIR [--simplereport-site GITDIR] [--list]

Each GITDIR is a git directory of the public repository (a bare clone works: files are read with `git show`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
import tracemalloc
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.formats import ContentError, parse_report  # noqa: E402
from tests.json_values import json_values  # noqa: E402

# (source, format, repository key, path patterns). ReportStream's mapping inventory is field-by-field translation
# fixtures (a segment or two each, often no result), kept as its own row so it does not blur the report figures.
SETS: list[tuple[str, str, str, list[str]]] = [
    ("SimpleReport", "CSV upload", "simplereport", ["backend/src/test/resources/testResultUpload/*.csv"]),
    ("SimpleReport", "CSV upload", "simplereport-site", ["assets/resources/test_results_example_*.csv"]),
    ("SimpleReport", "FHIR", "simplereport", [
        "backend/src/test/resources/testResultUpload/*.json",
        "backend/src/test/resources/testResultUpload/*.ndjson",
        "backend/src/test/resources/fhir/bundle*.json",
    ]),
    ("ReportStream", "HL7 v2", "reportstream", ["prime-router/*.hl7"]),
    ("ReportStream", "FHIR", "reportstream", ["prime-router/*.fhir"]),
]
MAPPING_INVENTORY = "*/mappinginventory/*"
# Peak memory over body size means little for a 2 KB body (a parser's fixed working set dominates it).
BIG = 100_000


@dataclass
class Outcome:
    path: str
    size: int
    items: int
    accepted: int
    first_error: str | None
    peak_bytes: int

    @property
    def whole(self) -> bool:
        return self.items > 0 and self.accepted == self.items and self.first_error is None


def _files(gitdir: str) -> list[str]:
    out = subprocess.run(["git", "--git-dir", gitdir, "ls-tree", "-r", "--name-only", "HEAD"],
                         check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def _read(gitdir: str, path: str) -> bytes:
    return subprocess.run(["git", "--git-dir", gitdir, "show", f"HEAD:{path}"], check=True, capture_output=True).stdout


def _as_sent(path: str, raw: bytes) -> tuple[bytes, str] | None:
    """The body and Content-Type a sender would post for this file, or None when it is not a report."""
    if path.endswith(".hl7"):
        return raw, "application/hl7-v2"
    if path.endswith(".csv"):
        return raw, "text/csv"
    # JSON files hold one Bundle, or several one after another, pretty-printed (SimpleReport's NDJSON fixtures)
    # or one per line (ReportStream's): sent as NDJSON, one Bundle per line, as SimpleReport sends them.
    try:
        docs = json_values(raw.decode("utf-8-sig"))
    except ValueError:
        return None
    bundles = [d for d in docs if isinstance(d, dict) and d.get("resourceType") == "Bundle"]
    if not bundles:
        return None  # single resources (a Patient, an Observation) are fixtures, not reports
    if len(docs) == 1:
        return raw, "application/fhir+json"
    return "\n".join(json.dumps(d, separators=(",", ":")) for d in docs).encode(), "application/fhir+ndjson"


def _parse(raw: bytes, content_type: str) -> tuple[int, int, str | None]:
    items = accepted = 0
    first: str | None = None
    try:
        for result in parse_report(raw, content_type, "01SURVEY000000000000000000"):
            items += 1
            if result.item is not None and not result.errors:
                accepted += 1
            elif first is None and result.errors:
                e = result.errors[0]
                first = f"item {result.index}: {e.code} {e.field or ''}".strip()
    except ContentError as exc:
        first = f"report: {exc.issue.code} {exc.issue.field or ''}".strip()
    return items, accepted, first


def survey(repos: dict[str, str]) -> dict[tuple[str, str], list[Outcome]]:
    table: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    listed = {key: _files(gitdir) for key, gitdir in repos.items()}
    for source, fmt, key, patterns in SETS:
        if key not in repos:
            continue
        for path in listed[key]:
            if not any(fnmatch.fnmatch(path, p) for p in patterns):
                continue
            sent = _as_sent(path, _read(repos[key], path))
            if sent is None:
                continue
            raw, content_type = sent
            _parse(raw, content_type)  # first use imports model classes and fills caches, once per worker
            tracemalloc.start()
            items, accepted, first = _parse(raw, content_type)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            group = (source, f"{fmt} (mapping inventory)" if fnmatch.fnmatch(path, MAPPING_INVENTORY) else fmt)
            table[group].append(Outcome(path, len(raw), items, accepted, first, peak))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reportstream", help="git dir of CDCgov/prime-reportstream")
    parser.add_argument("--simplereport", help="git dir of CDCgov/prime-simplereport")
    parser.add_argument("--simplereport-site", help="git dir of CDCgov/prime-simplereport-site")
    parser.add_argument("--list", action="store_true", help="also list every file not wholly accepted")
    args = parser.parse_args()
    repos = {k: v for k, v in {"reportstream": args.reportstream, "simplereport": args.simplereport,
                                "simplereport-site": args.simplereport_site}.items() if v}
    table = survey(repos)
    print(f"| source | format | files | wholly accepted | items accepted | peak / body, bodies over {BIG // 1000} KB "
          "(max) | peak (max) |")
    print("|---|---|---|---|---|---|---|")
    for (source, fmt), rows in sorted(table.items()):
        whole = sum(r.whole for r in rows)
        items = sum(r.items for r in rows)
        accepted = sum(r.accepted for r in rows)
        big = [r.peak_bytes / r.size for r in rows if r.size >= BIG]
        ratio = f"{max(big):.1f}x ({len(big)} bodies)" if big else "-"
        print(f"| {source} | {fmt} | {len(rows)} | {whole} ({whole / len(rows):.0%}) | {accepted} of {items} "
              f"| {ratio} | {max(r.peak_bytes for r in rows) / 1e6:.1f} MB |")
    if args.list:
        for (source, fmt), rows in sorted(table.items()):
            for r in rows:
                if not r.whole:
                    print(f"{source} {fmt}: {r.path}: {r.accepted}/{r.items} accepted; {r.first_error}")


if __name__ == "__main__":
    main()
