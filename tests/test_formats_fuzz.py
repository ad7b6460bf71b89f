"""Property tests: whatever the bytes, iterating parse_report raises nothing but ContentError, and is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.formats import ContentError, parse_report

SAMPLES = Path(__file__).parent / "samples"
CONTENT_TYPES = ["application/hl7-v2", "application/fhir+json", "application/fhir+ndjson", "text/csv"]
SEEDS = {
    "application/hl7-v2": sorted((SAMPLES / "hl7v2").glob("*.hl7")),
    "application/fhir+json": sorted((SAMPLES / "fhir").glob("*.json")),
    "application/fhir+ndjson": sorted((SAMPLES / "fhir").glob("*.ndjson")),
    "text/csv": sorted((SAMPLES / "csv").glob("*.csv")) + sorted((SAMPLES / "real" / "simplereport-csv").glob("*.csv")),
}
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(raw: bytes, content_type: str) -> list:
    """Fully iterate; check the ItemResult invariants; ContentError is the only exception allowed."""
    try:
        results = list(parse_report(raw, content_type, "r1"))
    except ContentError as exc:
        assert exc.issue.scope == "report" and exc.issue.code
        return ["report-error", exc.issue]
    for position, result in enumerate(results):
        assert result.index == position
        assert (result.item is None) == bool(result.errors)
        for issue in result.errors + result.warnings:
            assert issue.scope == "item" and issue.index == position and issue.code and issue.message
        if result.item is not None:
            assert result.item.item_index == position and result.item.report_id == "r1"
    return results


# Bytes that mean something to at least one parser, so random strings hit the interesting paths.
SPECIAL = st.sampled_from(
    [b"MSH|^~\\&|", b"MSH|$~\\&|", b"PID|1||", b"OBX|1|NM|", b"SPM|", b"OBR|", b"FHS|", b"BHS|", b"BTS|", b"^", b"~",
     b"\\", b"&", b"|", b"\r", b"\n", b"\r\n", b"\\F\\", b"\\X4\\", b"\\E", b",", b'"', b'""', b"\xef\xbb\xbf", b"\xff",
     b"\x00", b"2024-01-01", b"20240101", b"+9999", b"{", b"}", b"[", b"]", b":", b'"resourceType"', b'"Bundle"',
     b"patient_id,test_code,result,specimen_collected_at\n", b"\x0b", b"\x1c"]
)
STRUCTURED = st.lists(st.one_of(SPECIAL, st.binary(max_size=8)), max_size=40).map(b"".join)


@FAST
@given(raw=st.binary(max_size=2000), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bytes_only_raise_content_error(raw: bytes, content_type: str) -> None:
    run(raw, content_type)


@FAST
@given(raw=STRUCTURED, content_type=st.sampled_from(CONTENT_TYPES))
def test_structured_noise_only_raises_content_error(raw: bytes, content_type: str) -> None:
    assert run(raw, content_type) == run(raw, content_type)


@st.composite
def mutated_sample(draw: st.DrawFn) -> tuple[bytes, str]:
    """A real sample with a few random edits: deletions, insertions of meaningful bytes, duplicated spans."""
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    data = bytearray(draw(st.sampled_from(SEEDS[content_type])).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["delete", "insert", "duplicate", "flip"]))
        if edit == "delete":
            del data[at : at + draw(st.integers(1, 30))]
        elif edit == "insert":
            data[at:at] = draw(st.one_of(SPECIAL, st.binary(min_size=1, max_size=6)))
        elif edit == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 200))]
        elif at < len(data):
            data[at] = draw(st.integers(0, 255))
    return bytes(data), content_type


@FAST
@given(case=mutated_sample())
def test_mutated_samples_only_raise_content_error(case: tuple[bytes, str]) -> None:
    raw, content_type = case
    assert run(raw, content_type) == run(raw, content_type)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=12))
JSON_VALUE = st.recursive(
    JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
RESOURCE = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["Patient", "Observation", "Specimen", "Bundle", "Foo", ""])},
    optional={
        "identifier": st.one_of(JSON_VALUE, st.just([{"value": "P1"}])),
        "code": st.one_of(JSON_VALUE, st.just({"coding": [{"code": "1-8"}]})),
        "status": st.one_of(JSON_VALUE, st.just("final")),
        "valueQuantity": JSON_VALUE,
        "valueString": JSON_VALUE,
        "effectiveDateTime": st.one_of(JSON_VALUE, st.just("2024-01-01")),
        "collection": JSON_VALUE,
        "address": JSON_VALUE,
        "performer": JSON_VALUE,
    },
)
BUNDLE = st.fixed_dictionaries(
    {"resourceType": st.just("Bundle"), "type": st.just("collection")},
    optional={"id": JSON_VALUE, "entry": st.lists(st.one_of(st.fixed_dictionaries({"resource": RESOURCE}), JSON_VALUE), max_size=4)},
)


@FAST
@given(bundles=st.lists(st.one_of(BUNDLE, JSON_VALUE), min_size=1, max_size=3))
def test_random_fhir_documents_only_raise_content_error(bundles: list) -> None:
    body = "\n".join(json.dumps(b) for b in bundles).encode()
    run(body, "application/fhir+ndjson")
    run(json.dumps(bundles[0]).encode(), "application/fhir+json")
