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
    assert codes(result) == [("fhir.missing_field", "Observation.code.coding[0].code")]
    # An Observation without a code is no result, so the service does not read it: its model problem is a warning.
    # The birth date is read, but the identifier identifies the patient: also a warning (the date stays null).
    assert [(i.code, i.field) for i in result.warnings] == [
        ("fhir.nonconformant", "entry[0].resource.birthDate"), ("fhir.nonconformant", "entry[1].resource.code")]
    assert all("31/12/1990" not in issue.message for issue in result.errors)


def test_ndjson_batch_with_broken_lines() -> None:
    results = ndjson((SAMPLES / "buckeye_batch.ndjson").read_bytes())
    assert [r.index for r in results] == list(range(7))  # the blank line is not an item
    assert [r.item is not None for r in results] == [True, False, False, True, False, False, True]
    assert codes(results[1]) == [("fhir.invalid_json", None)]
    assert "line 3" in results[1].errors[0].message  # physical line, blank line counted
    assert codes(results[2]) == [("fhir.not_bundle", "resourceType")]
    # `2024-03`: a month, not a date, and nothing else gives one: null with a warning.
    assert [(w.code, w.field) for w in results[3].warnings] == [
        ("fhir.imprecise_date", "Specimen.collection.collectedDateTime")]
    assert results[3].item.specimen_collected_at is None
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
    assert codes(result) == [("fhir.missing_field", "Observation.code.coding[0].code")]
    obs["code"] = {"coding": [{"code": "2345-7"}]}
    [result] = bundle(_doc(PATIENT, obs))
    assert codes(result) == [("fhir.missing_field", "Observation.value[x]")]
    [result] = bundle(_doc(PATIENT, obs | {"valueString": "7"}))
    assert result.item.specimen_collected_at is None  # no collection time given: null, never guessed


def _entries(*resources: dict, bundle_type: str = "message") -> bytes:
    entries = [{"fullUrl": f"urn:uuid:{r['id']}" if "id" in r else None, "resource": r} for r in resources]
    return json.dumps({"resourceType": "Bundle", "type": bundle_type, "entry": entries}).encode()


def test_references_are_followed_by_full_url_and_type_id() -> None:
    patients = [{"resourceType": "Patient", "id": f"p{n}", "identifier": [{"value": f"ID{n}"}], "gender": "female",
                 "birthDate": "1980-02-03"} for n in (1, 2)]
    lab = {"resourceType": "Organization", "id": "lab",
           "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.7", "value": "05D2222542"}]}
    doctor = {"resourceType": "Practitioner", "id": "dr",
              "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1245319599"}]}
    order = {"resourceType": "ServiceRequest", "id": "sr", "status": "active", "intent": "order", "subject": {"reference": "Patient/p2"},
             "code": {"coding": [{"code": "94500-6"}]}, "requester": {"reference": "Practitioner/dr"}}
    specimens = [{"resourceType": "Specimen", "id": "s0"},  # a placeholder first, as ReportStream writes for the OBR
                 {"resourceType": "Specimen", "id": "s1", "type": {"coding": [{"system": "http://snomed.info/sct", "code": "258500001"}]},
                  "collection": {"collectedDateTime": "2024-05-06T07:08:09-04:00"}}]
    observation = {"resourceType": "Observation", "id": "o", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "94500-6"}]},
                   "subject": {"reference": "urn:uuid:p2"}, "specimen": {"reference": "Specimen/s0"},
                   "performer": [{"reference": "Organization/lab"}],
                   "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260415000"}]}}
    for bundle_type in ("message", "collection", "transaction", "batch"):
        [result] = bundle(_entries(*patients, lab, doctor, order, *specimens, observation, bundle_type=bundle_type))
        item = result.item
        assert item is not None, result.errors
        assert (item.patient_id, item.patient_sex, item.patient_birth_date) == ("ID2", "F", "1980-02-03")  # subject
        assert (item.performing_lab_clia, item.ordering_provider_npi) == ("05D2222542", "1245319599")
        assert (item.specimen_collected_at, item.specimen_type_code) == ("2024-05-06T07:08:09-04:00", "258500001")
        assert (item.result, item.result_code, item.result_text) == ("260415000", "260415000", "Not detected")
    [result] = bundle(_entries(*patients, observation, bundle_type="searchset"))
    assert codes(result) == [("fhir.unsupported_bundle_type", "type")]


def test_problems_where_the_service_does_not_read_are_warnings() -> None:
    provenance = {"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z"}  # no target (required)
    header = {"resourceType": "MessageHeader", "eventCoding": {"code": "R01"}, "source": {"name": "x"}}  # no endpoint
    patient = PATIENT | {"_birthDate": {"extension": [{"url": "x", "valueOid": "not an oid"}]},
                         "telecom": [{"period": {"start": "yesterday"}}]}
    observation = {"resourceType": "Observation", "code": {"coding": [{"code": "2345-7"}]}, "valueString": "5"}
    [result] = bundle(_doc(provenance, header, patient, observation))
    assert result.errors == [] and result.item is not None
    fields = {w.field for w in result.warnings}
    assert {"entry[0].resource.target", "entry[1].resource.source.endpoint", "entry[3].resource.status"} <= fields
    assert all(w.code == "fhir.nonconformant" for w in result.warnings)
    assert any(f.startswith("entry[2].resource.telecom") for f in fields)
    # The same kind of problem in an element the service reads rejects the item.
    [result] = bundle(_doc(PATIENT | {"identifier": [{"value": "Z9", "period": {"start": "yesterday"}}]}, observation))
    assert codes(result) == [("fhir.invalid", "entry[0].resource.identifier[0].period.start")]


def test_unreadable_sex_or_birth_date_only_rejects_when_identity_rests_on_it() -> None:
    # As HL7's PID-7 and PID-8: with an identifier the value is left null and the sender warned.
    observation = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "2345-7"}]},
                   "valueString": "5"}
    [result] = bundle(_doc(PATIENT | {"gender": "femme", "birthDate": "31/12/1990"}, observation))
    assert result.errors == [] and result.item is not None
    assert (result.item.patient_sex, result.item.patient_birth_date) == (None, None)
    assert {(w.code, w.field) for w in result.warnings} == {
        ("fhir.bad_code", "Patient.gender"), ("fhir.nonconformant", "entry[0].resource.birthDate")}
    assert all("femme" not in w.message and "31/12" not in w.message for w in result.warnings)
    # Without an identifier the name and birth date are the identity: an unreadable birth date rejects the item.
    nameless_id = {"resourceType": "Patient", "name": [{"family": "Doe"}], "birthDate": "31/12/1990"}
    [result] = bundle(_doc(nameless_id, observation))
    assert ("fhir.invalid", "entry[0].resource.birthDate") in codes(result) and result.item is None


def test_collection_time_of_year_precision_is_passed_over_never_made_a_date() -> None:
    specimen = {"resourceType": "Specimen", "id": "s1", "collection": {"collectedDateTime": "2024"}}
    observation = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "2345-7"}]},
                   "valueString": "5", "specimen": {"reference": "Specimen/s1"}, "effectiveDateTime": "2024-03-01T12:30:00Z"}
    [result] = bundle(_doc(PATIENT, specimen, observation))  # the Observation's time is the next fallback
    assert result.warnings == [] and result.item.specimen_collected_at == "2024-03-01T12:30:00+00:00"
    [result] = bundle(_doc(PATIENT, specimen, observation | {"effectiveDateTime": "2024-03"}))
    assert result.errors == [] and result.item is not None and result.item.specimen_collected_at is None
    assert [(w.code, w.field) for w in result.warnings] == [("fhir.imprecise_date", "Specimen.collection.collectedDateTime")]
    [result] = bundle(_doc(PATIENT, specimen | {"collection": {"collectedDateTime": "03/01/2024"}}, observation))
    assert ("fhir.bad_date", "Specimen.collection.collectedDateTime") in codes(result) and result.item is None


def test_entry_cap_is_an_item_error() -> None:
    raw = b'{"resourceType":"Bundle","type":"collection","entry":[' + b",".join([b"{}"] * 1_000_000) + b"]}"
    [result] = bundle(raw)
    assert codes(result) == [("fhir.too_many_entries", "entry")]
    assert "10,000" in result.errors[0].message


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
    [result] = bundle(_doc(PATIENT, {"resourceType": "NotAThing"}))  # not read: a warning, not a rejection
    assert [(i.code, i.field) for i in result.warnings] == [("fhir.nonconformant", "entry[1].resource.resourceType")]
    assert [i.code for i in result.errors] == ["fhir.missing_resource"]
    assert bundle(b"\xef\xbb\xbf" + _doc(PATIENT))[0].errors[0].code == "fhir.missing_resource"  # BOM accepted


def test_ndjson_crlf_and_empty() -> None:
    line = (SAMPLES / "quantity_no_id.json").read_bytes().replace(b"\n", b"")
    results = ndjson(line + b"\r\n\r\n" + line + b"\r\n")
    assert [r.item.message_id for r in results] == ["r1-0", "r1-1"]
    assert ndjson(b"\n \n") == []


def test_pathological_nesting_is_an_item_error() -> None:
    assert codes(bundle(b"[" * 100_000 + b"]" * 100_000)[0]) == [("fhir.not_bundle", "resourceType")]
    assert codes(bundle(b'{"id":' + b"[" * 100_000 + b"]" * 100_000 + b"}")[0]) == [("fhir.too_large", "entry")]
    assert codes(bundle(b'{"id":' + b"[" * 1000 + b"]" * 999 + b"}")[0]) == [("fhir.invalid_json", None)]
    depth = 300
    ext = '{"url":"x","extension":[' * depth + '{"url":"x"}' + "]}" * depth
    raw = '{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","extension":[%s]}}]}'
    [result] = bundle((raw % ext).encode())
    assert [i.code for i in result.errors] == ["fhir.missing_resource"]  # an extension it does not read: a warning
    assert [i.code for i in result.warnings] == ["fhir.nonconformant"]


def test_observations_not_listed_by_the_diagnostic_report_are_not_results() -> None:
    result_obs = {"resourceType": "Observation", "id": "r", "status": "final", "code": {"coding": [{"code": "94500-6"}]},
                  "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260373001"}]}}
    answer = {"resourceType": "Observation", "id": "q", "code": {"coding": [{"code": "95419-8"}]},  # no status
              "valueCodeableConcept": {"coding": [{"code": "Y"}]}}
    report = {"resourceType": "DiagnosticReport", "id": "d", "status": "final", "code": {"text": "x"},
              "result": [{"reference": "Observation/r"}]}
    [result] = bundle(_entries(PATIENT | {"id": "p"}, answer, result_obs, report))
    assert [o.test_code for o in result.item.observations] == ["94500-6"]
    assert ("fhir.nonconformant", "entry[1].resource.status") in [(w.code, w.field) for w in result.warnings]


def _message(event: dict, *resources: dict) -> bytes:
    header = {"resourceType": "MessageHeader", "source": {"endpoint": "urn:x"}} | event
    return _doc(header, *resources)


RESULT = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "94500-6"}]},
          "valueString": "5"}


def test_an_order_event_is_not_a_result() -> None:
    # As HL7's ORM^O01 / OML^O21 (hl7.not_a_result): every HL7 v2 order event, by code or by URI.
    for event in ({"eventCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": "O21"}},
                  {"eventCoding": {"code": "o01"}}, {"eventCoding": {"code": "O33"}}, {"eventCoding": {"code": "O39"}},
                  {"eventUri": "http://terminology.hl7.org/CodeSystem/v2-0003#OML_O35"}):
        [result] = bundle(_message(event, PATIENT, RESULT))
        assert result.item is None and [i.code for i in result.errors] == ["fhir.not_a_result"], event
        assert result.errors[0].field.startswith("MessageHeader.event")
    for event in ({"eventCoding": {"code": "R01"}}, {"eventUri": "http://example.org/events/result-O2"},
                  {"eventCoding": {"code": "O210"}}):
        [result] = bundle(_message(event, PATIENT, RESULT))
        assert result.item is not None, (event, result.errors)


def test_observations_without_a_result_status_are_not_results() -> None:
    for status in ("registered", "unknown", "cancelled"):
        [result] = bundle(_doc(PATIENT, RESULT | {"status": status}))
        assert codes(result) == [("fhir.no_result", "Observation.status")] and result.item is None
        [result] = bundle(_doc(PATIENT, RESULT | {"status": status}, RESULT | {"valueString": "7"}))
        assert [o.result for o in result.item.observations] == ["7"]  # the other one is the result
    # A retraction (entered-in-error) stays a result: ReportStream sends it as ORU^R01 with OBX-11 `W`.
    for status in ("final", "corrected", "preliminary", "amended", "entered-in-error"):
        assert bundle(_doc(PATIENT, RESULT | {"status": status}))[0].item is not None
    [result] = bundle(_doc(PATIENT, RESULT | {"status": 5}))  # read, so a wrong type rejects the item
    assert codes(result) == [("fhir.invalid_type", "entry[1].resource.status")]


def test_quantity_values_are_json_numbers_kept_as_sent() -> None:
    raw = ('{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","identifier":'
           '[{"value":"Z9"}]}},{"resource":{"resourceType":"Observation","status":"final","code":{"coding":[{"code":'
           '"2345-7"}]},"valueQuantity":{"value":%s,"unit":"mg/dL"}}}]}')
    for sent, kept in [("4.10", "4.10"), ("0.0000001", "0.0000001"), ("-0.50", "-0.50"), ("120", "120"),
                       ("12345678901234567890.123", "12345678901234567890.123"), ("1.0e-3", "0.0010"), ("1e2", "1E+2")]:
        [result] = bundle((raw % sent).encode())
        assert result.item is not None and result.item.result == kept, sent
    # A string (however number-like), a boolean, an object or null is not a FHIR decimal: never rewritten, refused.
    for sent in ('"1_000"', '"\u0661\u0662"', '"4.10"', '" 5 "', "true", "{}", "[1]"):
        [result] = bundle((raw % sent).encode())
        assert result.item is None, sent
        assert codes(result)[0] == ("fhir.invalid_type", "entry[1].resource.valueQuantity.value"), sent
        assert "\u0661" not in result.errors[0].message and "1_000" not in result.errors[0].message
    [result] = bundle((raw % "null").encode())  # null: no value at all, and no JSON value of FHIR's
    assert codes(result) == [("fhir.invalid_type", "entry[1].resource.valueQuantity.value"),
                             ("fhir.missing_field", "Observation.value[x]")]
    for value in ({"valueInteger": "7"}, {"valueInteger": 7.5}, {"valueBoolean": "true"}, {"valueString": 5}):
        [result] = bundle(_doc(PATIENT, RESULT | value))
        assert result.item is None and codes(result)[0][0] == "fhir.invalid_type", value
    for text in ("1_000", "\u0661\u0662", " 4.10 "):  # a string result is kept as sent (trimmed)
        [result] = bundle(_doc(PATIENT, RESULT | {"valueString": text}))
        assert result.item.result == text.strip()
