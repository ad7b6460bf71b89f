"""Panels: every result of a multi-result message or Bundle reaches the output, with coded results' text."""

from __future__ import annotations

import json

from shared.formats import parse_report

PANEL = (
    b"MSH|^~\\&|LIS|STATE LAB^12D3456789^CLIA|||20261120100000||ORU^R01|PANEL-1|P|2.5.1\r"
    b"PID|1||P-77^^^LAB^MR||DOE^ANN||19900101|F|||1 Main St^^Austin^TX\r"
    b"OBR|1||A-1|68991-9^Respiratory panel^LN|||20261119080000\r"
    b"OBX|1|CWE|94500-6^SARS-CoV-2 RNA^LN||260373001^Detected^SCT||||||F\r"
    b"OBX|2|CWE|92142-9^Influenza A RNA^LN||260415000^Not detected^SCT||||||F\r"
    b"OBX|3|NM|2345-7^Glucose^LN||101|mg/dL||||||F\r"
    b"OBX|4|NM|^^LN||5|||||||F\r"  # no identifier: not a result
)


def test_every_hl7_obx_result_is_kept_in_order() -> None:
    [result] = list(parse_report(PANEL, "application/hl7-v2", "r1"))
    item = result.item
    assert item is not None
    assert [(o.test_code, o.result, o.result_text, o.result_units) for o in item.observations] == [
        ("94500-6", "260373001", "Detected", None),
        ("92142-9", "260415000", "Not detected", None),
        ("2345-7", "101", None, "mg/dL"),
    ]
    # The contract's top-level fields are the first result's.
    assert (item.test_code, item.result, item.result_text) == ("94500-6", "260373001", "Detected")


def test_every_fhir_observation_result_is_kept() -> None:
    def observation(code: str, value: dict) -> dict:
        return {"resource": {"resourceType": "Observation", "status": "final",
                             "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, **value}}

    bundle = {
        "resourceType": "Bundle", "id": "b-panel", "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [{"value": "P-9"}]}},
            {"resource": {"resourceType": "Specimen", "collection": {"collectedDateTime": "2026-11-19T08:00:00Z"}}},
            observation("94500-6", {"valueCodeableConcept": {"coding": [{"code": "260373001", "display": "Detected"}]}}),
            observation("no-value", {}),
            observation("2345-7", {"valueQuantity": {"value": 101, "unit": "mg/dL"}}),
        ],
    }
    [result] = list(parse_report(json.dumps(bundle).encode(), "application/fhir+json", "r1"))
    assert result.item is not None, result.errors
    assert [(o.test_code, o.result, o.result_text, o.result_units) for o in result.item.observations] == [
        ("94500-6", "260373001", "Detected", None),
        ("2345-7", "101", None, "mg/dL"),
    ]


def test_csv_row_is_one_observation() -> None:
    body = b"patient_id,test_code,test_name,result,result_units,specimen_collected_at\nP1,2345-7,Glucose,99,mg/dL,2026-01-02\n"
    [result] = list(parse_report(body, "text/csv", "r1"))
    assert result.item is not None
    [only] = result.item.observations
    assert (only.test_code, only.test_name, only.result, only.result_units) == ("2345-7", "Glucose", "99", "mg/dL")
