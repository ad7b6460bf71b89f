"""The FHIR bundles SimpleReport sends to ReportStream (tests/samples/real/simplereport-fhir/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.formats import ItemResult, parse_report
from tests.json_values import json_values

REAL = Path(__file__).parent / "samples" / "real" / "simplereport-fhir"


def wire_ndjson(path: Path) -> bytes:
    """SimpleReport stores its NDJSON fixtures pretty-printed, one bundle after another; it sends one per line."""
    return ("\n".join(json.dumps(b, separators=(",", ":")) for b in json_values(path.read_text())) + "\n").encode()


def parse(path: Path) -> list[ItemResult]:
    if path.suffix == ".ndjson":
        return list(parse_report(wire_ndjson(path), "application/fhir+ndjson", "sr"))
    return list(parse_report(path.read_bytes(), "application/fhir+json", "sr"))


@pytest.mark.parametrize("path", sorted(p for p in REAL.iterdir() if p.suffix != ".md"), ids=lambda p: p.name)
def test_every_bundle_is_accepted(path: Path) -> None:
    results = parse(path)
    assert results and [(r.index, e.code, e.field) for r in results for e in r.errors] == []
    assert all(r.item is not None for r in results)
    # SimpleReport's Provenance has no `target` and its MessageHeader no `source.endpoint`: warnings, not errors.
    assert {w.code for r in results for w in r.warnings} <= {"fhir.nonconformant"}


def test_bundle_elr_core() -> None:
    [result] = parse(REAL / "bundle.json")
    item = result.item
    assert item is not None
    assert item.message_id == "45e9539f-c9a4-4c86-b79d-4ba2c43f9ee0"  # Bundle.identifier.value
    assert (item.patient_sex, item.patient_birth_date) == ("M", "2022-12-13")
    assert (item.patient_race, item.patient_ethnicity) == ("2054-5", "UNK")  # v2-0189 `U` is the null flavour UNK
    assert (item.patient_state, item.patient_postal_code) == ("IL", "60614")
    assert item.performing_lab_clia == "123D456789"  # Observation.performer -> Organization, CLIA-typed identifier
    assert item.specimen_collected_at == "2023-07-14T15:45:34+00:00"
    assert [o.test_code for o in item.observations][:1] == [item.test_code]
    assert "entry[1].resource.target" in {w.field for w in result.warnings}  # the Provenance
