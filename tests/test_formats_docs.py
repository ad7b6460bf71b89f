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


def test_every_documented_hl7_and_fhir_code_is_emitted() -> None:
    """No stale rows: each HL7 and FHIR code the codes table lists is one the parsers still emit."""
    table = (ROOT / "docs" / "formats.md").read_text().split("## Error and warning codes", 1)[1]
    documented = set(re.findall(r"^\| `((?:hl7|fhir)\.[a-z_]+)`", table, flags=re.M))
    assert documented and documented - emitted_codes() == set()


def test_fhir_elements_read_are_documented() -> None:
    from shared.formats.fhir_core import READ_ELEMENTS

    doc = (ROOT / "docs" / "formats.md").read_text().split("Resources and elements read", 1)[1].split("\n\n", 1)[0]
    for resource, elements in READ_ELEMENTS.items():
        assert f"`{resource}`" in doc
        for element in elements - {"extension"}:
            name = re.sub(r"^(value|effective)[A-Z].*", r"\1[x]", element)  # choice types are written `value[x]`
            section = doc.split(f"`{resource}`", 1)[1].split("`", 1)[0]
            assert name in section, (resource, element)
