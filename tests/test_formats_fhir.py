"""FHIR R4 Bundle / NDJSON parser: sample bundles, good and broken."""

from __future__ import annotations

import json
from pathlib import Path

from shared.formats import ItemResult, parse_report

SAMPLES = Path(__file__).parent / "samples" / "fhir"


def bundle(raw: bytes) -> list[ItemResult]:
    return list(parse_report(raw, "application/fhir+json; charset=utf-8", "r1"))


def ndjson(raw: bytes) -> list[ItemResult]:
    return list(parse_report(raw, "application/fhir+ndjson", "r1"))


def codes(result: ItemResult) -> list[tuple[str, str | None]]:
    return [(issue.code, issue.field) for issue in result.errors]


def test_hospital_bundle_with_specimen() -> None:
    [result] = bundle((SAMPLES / "hospital_bundle.json").read_bytes())
    item = result.item
    assert item is not None, result.errors
    assert item.message_id == "lakeside-2024-000172"
    assert (item.patient_id, item.patient_state) == ("LKS-0099812", "MN")
    assert item.test_code == "92142-9" and item.test_name.startswith("Influenza virus A RNA")
    assert item.result == "260373001" and item.result_units is None
    assert item.specimen_collected_at == "2024-02-10T16:45:00-06:00"  # Specimen beats effectiveDateTime
    assert item.performing_lab_clia is None  # the performer is a display only, no Organization with a CLIA
    assert item.source_format == "fhir"


def test_quantity_keeps_precision_and_falls_back() -> None:
    [result] = bundle((SAMPLES / "quantity_no_id.json").read_bytes())
    item = result.item
    assert item is not None
    assert item.message_id == "r1-0"  # no Bundle.id
    assert (item.result, item.result_units) == ("4.10", "mmol/L")
    assert item.specimen_collected_at == "2024-02-12T07:05:00+00:00"  # effectiveDateTime, Z normalised


def test_model_validation_errors_name_the_element() -> None:
    [result] = bundle((SAMPLES / "invalid_model.json").read_bytes())
    assert result.item is None
    assert codes(result) == [
        ("fhir.invalid", "entry[0].resource.birthDate"),
        ("fhir.invalid", "entry[1].resource.code"),
    ]
    assert all("31/12/1990" not in issue.message for issue in result.errors)


def test_ndjson_batch_with_broken_lines() -> None:
    results = ndjson((SAMPLES / "buckeye_batch.ndjson").read_bytes())
    assert [r.index for r in results] == list(range(7))  # the blank line is not an item
    assert [r.item is not None for r in results] == [True, False, False, False, False, False, True]
    assert codes(results[1]) == [("fhir.invalid_json", None)]
    assert "line 3" in results[1].errors[0].message  # physical line, blank line counted
    assert codes(results[2]) == [("fhir.not_bundle", "resourceType")]
    assert codes(results[3]) == [("fhir.bad_date", "Specimen.collection.collectedDateTime")]
    assert codes(results[4]) == [("fhir.missing_resource", "Patient")]
    assert codes(results[5]) == [("fhir.missing_field", "Patient.identifier[0].value")]
    assert results[6].item.message_id == "bk-7"
    assert results[6].item.specimen_collected_at == "2024-03-03T10:20:00+02:00"
    messages = " ".join(i.message for r in results for i in r.errors)
    assert "BK-100" not in messages


def _doc(*resources: dict) -> bytes:
    return json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}).encode()


PATIENT = {"resourceType": "Patient", "identifier": [{"value": "Z9"}]}


def test_missing_observation_and_value_and_time() -> None:
    [result] = bundle(_doc(PATIENT))
    assert codes(result) == [("fhir.missing_resource", "Observation")]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"}}
    [result] = bundle(_doc(PATIENT, obs))
    assert codes(result) == [
        ("fhir.missing_field", "Observation.code.coding[0].code"),
        ("fhir.missing_field", "Specimen.collection.collectedDateTime"),
    ]
    obs["code"] = {"coding": [{"code": "2345-7"}]}
    [result] = bundle(_doc(PATIENT, obs))
    assert ("fhir.missing_field", "Observation.value[x]") in codes(result)


def test_value_types() -> None:
    base = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "c"}]},
            "effectiveDateTime": "2024-01-02"}
    for value, expected in [
        ({"valueString": " reactive "}, "11214006"),  # a known qualitative result name: its SNOMED CT code
        ({"valueString": " faint band "}, "faint band"),
        ({"valueInteger": 7}, "7"),
        ({"valueBoolean": False}, "false"),
        ({"valueCodeableConcept": {"text": "Not detected"}}, "260415000"),
        ({"valueCodeableConcept": {"coding": [{"code": "L7", "display": "Weak"}]}}, "L7"),
        ({"valueQuantity": {"value": 1e2, "code": "mg"}}, "100.0"),
    ]:
        [result] = bundle(_doc(PATIENT, base | value))
        assert result.item is not None and result.item.result == expected


def test_not_json_not_object_unknown_resource() -> None:
    assert codes(bundle(b"\xff\xfe{")[0]) == [("fhir.invalid_json", None)]
    assert codes(bundle(b"[1, 2]")[0]) == [("fhir.not_bundle", "resourceType")]
    [result] = bundle(_doc(PATIENT, {"resourceType": "NotAThing"}))
    assert [i.code for i in result.errors] == ["fhir.invalid"]
    assert bundle(b"\xef\xbb\xbf" + _doc(PATIENT))[0].errors[0].code == "fhir.missing_resource"  # BOM accepted


def test_ndjson_crlf_and_empty() -> None:
    line = (SAMPLES / "quantity_no_id.json").read_bytes().replace(b"\n", b"")
    results = ndjson(line + b"\r\n\r\n" + line + b"\r\n")
    assert [r.item.message_id for r in results] == ["r1-0", "r1-1"]
    assert ndjson(b"\n \n") == []


def test_pathological_nesting_is_an_item_error() -> None:
    assert codes(bundle(b"[" * 100_000 + b"]" * 100_000)[0]) == [("fhir.invalid_json", None)]
    depth = 300
    ext = '{"url":"x","extension":[' * depth + '{"url":"x"}' + "]}" * depth
    raw = '{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","extension":[%s]}}]}'
    assert [i.code for i in bundle((raw % ext).encode())[0].errors] == ["fhir.invalid"]
