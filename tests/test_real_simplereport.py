"""SimpleReport's own published bulk upload files: the outcome SimpleReport's tests expect, and the same ELR core as
the FHIR bundles SimpleReport makes of them (samples and their sources: tests/samples/real/simplereport-csv)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.formats import ItemResult, parse_report
from shared.models import NormalisedItem
from tests.json_values import json_values

SAMPLES = Path(__file__).parent / "samples" / "real" / "simplereport-csv"
VALID = sorted(p.name for p in SAMPLES.glob("*.csv") if "invalid" not in p.name)
# (CSV, the FHIR SimpleReport made of it in BulkUploadResultsToFhirTest)
PAIRS = [
    ("test-results-upload-valid-different-results.csv", "test-results-upload-valid-as-fhir.ndjson"),
    ("test-results-upload-valid-flu-only.csv", "fhir-for-csv-with-flu-only.ndjson"),
    ("test-results-upload-valid-with-comments.csv", "fhir-for-csv-with-comments.ndjson"),
    ("test-results-upload-valid-with-specimenType-loinc.csv", "fhir-for-csv-with-specimenType-loinc.ndjson"),
]


def parse(name: str) -> list[ItemResult]:
    return list(parse_report((SAMPLES / name).read_bytes(), "text/csv", "r1"))


def error_fields(result: ItemResult) -> set[str | None]:
    return {issue.field for issue in result.errors}


def test_the_set_is_broad() -> None:
    assert len(VALID) >= 24


@pytest.mark.parametrize("name", VALID)
def test_valid_file_every_row_accepted(name: str) -> None:
    results = parse(name)
    assert results, name
    assert [r.errors for r in results] == [[] for _ in results]
    assert all(r.item is not None and r.item.test_code and r.item.result for r in results)


def test_simplereport_gov_templates() -> None:
    current = parse("site-test_results_example_10-23-2025.csv")[0].item
    assert (current.patient_sex, current.message_id, current.specimen_type_code) == (
        "F", "42daf9c8-9deb-4636-a040-380bde2b44cd", "445297001")
    older = [r.item for r in parse("site-test_results_example_10-3-2022.csv")]
    assert [i.test_code for i in older] == ["94534-5", "94558-4", "97097-0", "94507-1", "94508-9"]


def test_invalid_values_each_column_named() -> None:
    [result] = parse("test-results-upload-invalid-values.csv")
    assert result.index == 0 and result.item is None  # SimpleReport: row 2 of the file, header being row 1
    # The 33 column errors SimpleReport's FileValidatorTest expects; its 34th error is about the device list
    # (equipment_model_name + test_performed_code), which this service checks as a LOINC shape instead.
    expected = {
        *(f"{who}_{what}" for who in ("patient", "ordering_provider", "testing_lab", "ordering_facility")
          for what in ("state", "zip_code", "phone_number")),
        "patient_dob", "illness_onset_date", "order_test_date", "specimen_collection_date",
        "testing_lab_specimen_received_date", "test_result_date", "date_result_released", "patient_email",
        "testing_lab_clia", "patient_race", "patient_ethnicity", "pregnant", "employed_in_healthcare",
        "symptomatic_for_disease", "resident_congregate_setting", "hospitalized", "icu", "residence_type",
        "test_result", "test_result_status", "specimen_type",
    }
    assert len(expected) == 33
    assert error_fields(result) == expected | {"test_performed_code"}
    assert all(issue.scope == "item" and issue.index == 0 for issue in result.errors)
    # The row ends in a trailing comma, which SimpleReport's reader allows.
    assert [(w.code, w.field) for w in result.warnings] == [("csv.ignored_value", "patient_gender")]
    assert "x " not in " ".join(issue.message for issue in result.errors)  # messages never carry the value


def test_invalid_specimen_name() -> None:
    [result] = parse("test-results-upload-invalid-specimen-name.csv")
    assert [(e.code, e.field) for e in result.errors] == [("csv.invalid_value", "specimen_type")]
    assert "fake" not in result.errors[0].message


def test_extra_cells_reject_the_row() -> None:
    [result] = parse("test-results-upload-invalid-format2.csv")  # SimpleReport: row 2, wrong number of columns
    assert [(e.code, e.field, e.index) for e in result.errors] == [("csv.column_count", None, 0)]


def test_blank_rows_are_skipped_not_rejected() -> None:
    # SimpleReport rejects the file for its last line, which holds two spaces ("delete any empty rows"); a row with
    # no data carries nothing to reject, so here it is skipped like every blank row.
    results = parse("test-results-upload-invalid-format1.csv")
    assert [(r.index, r.errors) for r in results] == [(0, [])]


def test_device_list_check_is_simplereports_alone() -> None:
    # SimpleReport rejects this row because "Alinity M" does not list 94534-5 in its device database; that list is
    # SimpleReport's, so the row is accepted here (the LOINC code itself is well formed).
    [result] = parse("test-results-upload-invalid-deviceModel_testPerformedCode.csv")
    assert result.errors == [] and result.item.test_code == "94534-5"


def test_reportstream_onboarding_sample() -> None:
    # Columns in another order, no ordering_facility_street2 and friends; a 9-digit ordering_provider_id is a
    # local code, not an NPI.
    results = parse("reportstream-SR-UPLOAD.csv")
    assert len(results) == 5 and all(r.item is not None for r in results)
    assert {r.item.ordering_provider_npi for r in results} == {None}
    assert results[0].item.specimen_collected_at == "2024-02-26"


def test_required_only_file_maps_to_the_elr_core() -> None:
    first, second = (r.item for r in parse("test-results-upload-valid-required-only.csv"))
    assert first.model_dump() == {
        "report_id": "r1", "item_index": 0, "source_format": "csv", "message_id": "123",
        "patient_id": None, "patient_birth_date": "1962-01-20", "patient_sex": None,
        "patient_race": "2106-3", "patient_ethnicity": "2186-5", "patient_postal_code": "35226",
        "patient_state": "AL", "test_code": "94534-5", "test_name": None,
        "result": "260373001", "result_code": "260373001", "result_text": "Detected", "result_units": None,
        "specimen_collected_at": "2021-12-20T14:00:00", "specimen_type_code": "445297001",
        "performing_lab_clia": "01D1058442", "ordering_provider_npi": "1013012657",
        "observations": [{"test_code": "94534-5", "test_name": None, "result": "260373001",
                          "result_code": "260373001", "result_text": "Detected", "result_units": None}],
    }
    assert (second.patient_race, second.result_code, second.specimen_type_code) == ("2054-5", "260415000", "697989009")


def test_zone_words_and_default_collection_date() -> None:
    [blank] = parse("test-results-upload-valid-blank-dates.csv")
    # No specimen_collection_date: SimpleReport's rule takes order_test_date, here "12/20/2021 4:00 MST".
    assert blank.item.specimen_collected_at == "2021-12-20T04:00:00-07:00"
    [dates_only] = parse("test-results-upload-valid-dates-no-timezone.csv")
    assert dates_only.item.specimen_collected_at == "2021-12-20"


def fhir_bundles(name: str) -> bytes:
    """The bundles of a SimpleReport FHIR file as NDJSON (some of its files are pretty-printed, one after another)."""
    return "\n".join(json.dumps(bundle) for bundle in json_values((SAMPLES / name).read_text())).encode()


def pair(csv_name: str, fhir_name: str) -> list[tuple[NormalisedItem, NormalisedItem]]:
    from_csv = [r.item for r in parse(csv_name)]
    from_fhir = list(parse_report(fhir_bundles(fhir_name), "application/fhir+ndjson", "r1"))
    assert [r.errors for r in from_fhir] == [[] for _ in from_fhir]
    assert len(from_csv) == len(from_fhir)
    return [(csv_item, fhir_result.item) for csv_item, fhir_result in zip(from_csv, from_fhir)]


@pytest.mark.parametrize(("csv_name", "fhir_name"), PAIRS)
def test_csv_and_simplereports_fhir_give_the_same_core(csv_name: str, fhir_name: str) -> None:
    for csv_item, fhir_item in pair(csv_name, fhir_name):
        assert comparable(csv_item) == comparable(fhir_item)
        # SimpleReport adds the provider address's zone to a time given without one; the CSV carries none.
        assert fhir_item.specimen_collected_at.startswith(csv_item.specimen_collected_at)


@pytest.mark.parametrize(("csv_name", "fhir_name"), PAIRS)
def test_csv_and_simplereports_fhir_give_the_same_observations(csv_name: str, fhir_name: str) -> None:
    for csv_item, fhir_item in pair(csv_name, fhir_name):
        assert observations(csv_item) == observations(fhir_item)


def comparable(item: NormalisedItem) -> dict[str, object]:
    """The core minus what SimpleReport adds from its own databases (the LOINC name, the collection time zone)."""
    core = item.model_dump(exclude={"source_format", "test_name", "specimen_collected_at", "observations"})
    return {**core, "first_observation": observations(item)[0]}


def observations(item: NormalisedItem) -> list[dict[str, object]]:
    return [o.model_dump(exclude={"test_name"}) for o in item.observations]
