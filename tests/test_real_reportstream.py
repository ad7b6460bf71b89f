"""CDC ReportStream's own sample reports (tests/samples/real/reportstream/README.md): the outcome each implies."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from shared.formats import ItemResult, parse_report

REAL = Path(__file__).parent / "samples" / "real" / "reportstream"
HL7 = "application/hl7-v2"
FHIR = "application/fhir+json"
NDJSON = "application/fhir+ndjson"


def parse(path: Path, content_type: str) -> list[ItemResult]:
    return list(parse_report(path.read_bytes(), content_type, "rs"))


def errors(results: list[ItemResult]) -> list[tuple[int, str, str | None]]:
    return [(issue.index, issue.code, issue.field) for result in results for issue in result.errors]


@pytest.mark.parametrize("path", sorted((REAL / "hl7").glob("*.hl7")), ids=lambda p: p.name)
def test_valid_hl7_every_message_accepted(path: Path) -> None:
    results = parse(path, HL7)
    messages = len(re.findall(rb"(?:\A|[\r\n])MSH\|", path.read_bytes()))
    assert len(results) == messages and errors(results) == []
    assert all(result.item is not None for result in results)
    warned = [(w.index, w.code, w.field) for result in results for w in result.warnings]
    assert warned == HL7_WARNINGS.get(path.name, [])


# De-identified: PID-7 holds the placeholder `PIDDOB!`. The patient is identified by PID-3, so the birth date is
# left null with a warning rather than rejecting a message ReportStream passed through. The ELIMS minimum message
# blanks its dates to `0000` (a DTM of year precision): collection time null, with a warning.
HL7_WARNINGS = {
    "ORU_deidentified.hl7": [(0, "hl7.bad_date", "PID-7")],
    "elims_2_40_05059364_34872_MIN.hl7": [(0, "hl7.imprecise_date", "SPM-17")],
}


INVALID_HL7 = {
    "sample_orm_20230809-001.hl7": [(0, "hl7.not_a_result", "MSH-9")],  # ORM^O01: an order
    "sample_oml_20240319-001.hl7": [(0, "hl7.not_a_result", "MSH-9")],  # OML^O21: an order
    "output.hl7": [(0, "hl7.missing_field", "PID-3")],  # `PID|1`: nobody identified
}


@pytest.mark.parametrize("name", sorted(INVALID_HL7))
def test_invalid_hl7_names_item_and_field(name: str) -> None:
    results = parse(REAL / "hl7-invalid" / name, HL7)
    assert errors(results) == INVALID_HL7[name]
    assert all(result.item is None for result in results)


FHIR_FILES = sorted((REAL / "fhir").glob("*.fhir"))


@pytest.mark.parametrize("path", FHIR_FILES, ids=lambda p: p.name)
def test_valid_fhir_accepted_with_warnings_only_where_not_read(path: Path) -> None:
    # batch_valid_data.fhir is ReportStream's NDJSON batch: one Bundle per line.
    results = parse(path, NDJSON if path.name.startswith("batch_") else FHIR)
    assert results and errors(results) == []
    assert all(result.item is not None for result in results)
    assert {w.code for result in results for w in result.warnings} <= {"fhir.nonconformant"}
    assert all(w.field and w.field.startswith("entry") for result in results for w in result.warnings)


INVALID_FHIR = {
    "fhir_without_patient.fhir": [(0, "fhir.not_a_result", "MessageHeader.eventCoding.code")],  # event O01: an order
    "lab_order_no_observations.fhir": [(0, "fhir.not_a_result", "MessageHeader.eventCoding.code")],  # event O21
    "input.fhir": [(0, "fhir.no_result", "Observation.status")],  # its only Observation has status `unknown`
}


@pytest.mark.parametrize("name", sorted(INVALID_FHIR))
def test_invalid_fhir_names_item_and_field(name: str) -> None:
    assert errors(parse(REAL / "fhir-invalid" / name, FHIR)) == INVALID_FHIR[name]


def test_elr_core_of_a_mars_otc_message() -> None:
    """The RADx MARS over-the-counter smoke test, read field by field."""
    item = parse(REAL / "hl7" / "valid_mars.hl7", HL7)[0].item
    assert item is not None
    assert (item.test_code, item.result, item.result_code, item.result_text) == (
        "94558-4", "260373001", "260373001", "Detected")
    assert item.specimen_type_code == "697989009"  # SPM-4: anterior nares swab
    assert item.specimen_collected_at == "2024-04-03T12:00:00-04:00"  # SPM-17, its offset kept
    assert item.performing_lab_clia == "00Z0000042"  # OBX-15 typed CLIA (not CLIA-shaped, still the sender's)
    fhir = parse(REAL / "fhir" / "valid_mars.fhir", FHIR)[0].item
    assert fhir is not None
    assert (fhir.test_code, fhir.result_code, fhir.specimen_type_code, fhir.specimen_collected_at) == (
        item.test_code, item.result_code, item.specimen_type_code, item.specimen_collected_at)


PAIRS = sorted(path.stem for path in (REAL / "pairs").glob("*.fhir"))


def _core(result: ItemResult) -> dict:
    assert result.item is not None, result.errors
    core = result.item.model_dump(exclude={"report_id", "item_index", "source_format"})
    # Two things ReportStream changes on the way, so they are compared as what they mean: it writes OBX-3.2 from
    # its LOINC table where the FHIR coding has no display (code.text goes to OBX-3.9), so test names are left out;
    # it re-expresses times in UTC, so collection times are compared as instants.
    core.pop("test_name")
    for observation in core["observations"]:
        observation.pop("test_name")
    if core["specimen_collected_at"]:
        core["specimen_collected_at"] = datetime.fromisoformat(core["specimen_collected_at"]).timestamp()
    return core


@pytest.mark.parametrize("stem", PAIRS)
def test_fhir_and_its_reportstream_hl7_translation_agree(stem: str) -> None:
    [fhir] = parse(REAL / "pairs" / f"{stem}.fhir", FHIR)
    [hl7] = parse(REAL / "pairs" / f"{stem}.hl7", HL7)
    assert _core(fhir) == _core(hl7)
