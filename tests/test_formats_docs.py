"""docs/formats.md stays in step with the code: every issue code the parsers emit is documented and tested."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = re.compile(r'"((?:hl7|fhir|csv)\.[a-z_]+)"')


def emitted_codes() -> set[str]:
    return {code for path in (ROOT / "shared" / "formats").glob("*.py") for code in CODE.findall(path.read_text())}


def test_every_code_is_documented() -> None:
    doc = (ROOT / "docs" / "formats.md").read_text()
    assert emitted_codes() - set(re.findall(r"`((?:hl7|fhir|csv)\.[a-z_]+)`", doc)) == set()


def test_every_code_is_produced_by_a_test() -> None:
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_formats_*.py") if p.name != Path(__file__).name)
    missing = {code for code in emitted_codes() if f'"{code}"' not in tests}
    assert missing == set()


def test_doc_examples_give_the_stated_counts() -> None:
    from shared.formats import parse_report

    blocks = re.findall(r"```\n(.*?)```", (ROOT / "docs" / "formats.md").read_text(), flags=re.S)
    hl7, ndjson, csv = blocks
    expected = [(hl7.replace("\n", "\r"), "application/hl7-v2", [True]),
                (ndjson, "application/fhir+ndjson", [True, True]),
                (csv, "text/csv", [True, True, False])]
    for text, content_type, accepted in expected:
        results = list(parse_report(text.encode(), content_type, "doc"))
        assert [r.item is not None for r in results] == accepted, (content_type, [r.errors for r in results])
    assert [e.code for e in results[2].errors] == ["csv.bad_date"]
