"""HL7 v2 parser: sample reports from several labs' styles, good and broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.formats import ContentError, ItemResult, parse_report

SAMPLES = Path(__file__).parent / "samples" / "hl7v2"
CT = "application/hl7-v2"


def parse(raw: bytes) -> list[ItemResult]:
    return list(parse_report(raw, CT, "r1"))


def sample(name: str) -> list[ItemResult]:
    return parse((SAMPLES / name).read_bytes())


def codes(result: ItemResult) -> list[tuple[str, str | None]]:
    return [(issue.code, issue.field) for issue in result.errors]


def test_hospital_oru_with_spm() -> None:
    [result] = sample("hospital_oru_spm.hl7")
    assert result.errors == [] and result.warnings == []
    item = result.item
    assert item is not None
    assert item.message_id == "SMH-20240105-0001"
    assert item.patient_id == "MRN7781234"  # first repetition of PID-3, not the SSN repetition
    assert item.patient_state == "IL"
    assert item.test_code == "94500-6"
    assert item.test_name.startswith("SARS-CoV-2 (COVID-19) RNA")
    assert item.result == "260373001"  # coded (CWE) result: the code
    assert item.result_units is None
    assert item.specimen_collected_at == "2024-01-04T08:30:00-05:00"  # SPM-17 wins over OBR-7
    assert item.performing_lab_clia == "05D0001234"  # OBX-23.10
    assert (item.result_code, item.result_text) == ("260373001", "Detected")
    assert (item.patient_birth_date, item.patient_sex, item.patient_race) == ("1975-03-14", "F", "2106-3")
    assert item.patient_ethnicity is None  # PID-22 empty: null, not guessed
    assert item.patient_postal_code == "61602"
    assert item.specimen_type_code == "258500001"  # SPM-4.1
    assert item.ordering_provider_npi == "1234567893"  # ORC-12 empty: OBR-16.1
    assert item.source_format == "hl7v2" and item.report_id == "r1" and item.item_index == 0


def test_reference_lab_batch_file_crlf() -> None:
    results = sample("reference_lab_batch.hl7")
    assert [r.index for r in results] == [0, 1, 2]
    items = [r.item for r in results]
    assert all(items)
    assert [i.message_id for i in items] == ["NSRL000001", "NSRL000002", "NSRL000003"]
    assert [i.patient_state for i in items] == ["WI", "MN", "IA"]
    assert [(i.result, i.result_units) for i in items] == [("98", "mg/dL"), ("141", "mmol/L"), ("13.6", "g/dL")]
    # No SPM: OBR-7, minute precision padded to seconds, no zone invented.
    assert items[2].specimen_collected_at == "2024-01-03T07:45:00"
    assert items[0].performing_lab_clia == "24D0404292"  # no OBX-23 nor OBX-15: MSH-4.2, typed CLIA
    assert [i.result_code for i in items] == [None, None, None]  # numbers are not coded results


def test_custom_encoding_characters_and_escapes() -> None:
    [result] = sample("custom_encoding_escapes.hl7")
    item = result.item
    assert item is not None, result.errors
    assert item.patient_id == "SJ-5521" and item.patient_state == "TX"  # '$' is the component separator
    assert item.message_id == "SJ|2024|77"  # \F\
    assert item.test_name == "HBsAg $ screen ~ confirm"  # \S\ is the custom component char, \R\ repetition
    assert item.result == "Reactive|repeat&confirmed"  # \F\ and \T\
    assert item.performing_lab_clia == "11D2233445"  # MSH-4.2 split on the custom '$' component separator
    assert item.specimen_collected_at == "2024-02-09T15:45:00+01:00"


def test_lf_separated_structured_numeric() -> None:
    [result] = sample("newline_separated.hl7")
    item = result.item
    assert item is not None
    assert item.result == "1:128"
    assert item.specimen_collected_at == "2024-03-01T09:30:00.250000+00:00"


def test_mixed_batch_errors_and_indexes() -> None:
    results = sample("mixed_batch_errors.hl7")
    assert [r.index for r in results] == list(range(7))
    assert [r.item is not None for r in results] == [True, False, False, False, False, False, True]
    assert codes(results[1]) == [("hl7.unsupported_message_type", "MSH-9")]
    assert "ADT^A01" in results[1].errors[0].message
    assert codes(results[2]) == [("hl7.missing_field", "PID-3"), ("hl7.missing_segment", "OBX")]
    assert codes(results[3]) == [("hl7.bad_date", "SPM-17")]
    assert codes(results[4]) == [("hl7.missing_field", "OBX-5")]  # no collection time: null, not an error
    assert codes(results[5]) == [("hl7.parse", "MSH-2")]
    assert results[6].item.message_id == "r1-6"  # no MSH-10
    assert results[6].item.specimen_collected_at == "2024-03-31"
    for result in results:
        assert all(issue.scope == "item" and issue.index == result.index for issue in result.errors)


def test_messages_never_contain_patient_values() -> None:
    raw = (SAMPLES / "mixed_batch_errors.hl7").read_bytes()
    text = " ".join(issue.message for r in parse(raw) for issue in r.errors + r.warnings)
    for value in ("P002", "P004", "P005", "P006", "2024-03-31", "Creatinine"):
        assert value not in text


@pytest.mark.parametrize("separator", [b"\r", b"\n", b"\r\n", b"\n\n"])
def test_any_segment_separator(separator: bytes) -> None:
    raw = (SAMPLES / "hospital_oru_spm.hl7").read_bytes().replace(b"\r", separator)
    [result] = parse(raw)
    assert result.item is not None and result.item.patient_id == "MRN7781234"


def test_mllp_framing_bytes_are_tolerated() -> None:
    raw = b"\x0b" + (SAMPLES / "newline_separated.hl7").read_bytes() + b"\x1c\r"
    [result] = parse(raw)
    assert result.item is not None


def test_no_msh_is_a_report_error() -> None:
    with pytest.raises(ContentError) as caught:
        parse(b"PID|1||123\rOBX|1|NM|1^x||5")
    assert caught.value.issue.code == "hl7.parse" and caught.value.issue.scope == "report"


def test_segments_before_first_msh_are_a_rejected_item() -> None:
    raw = b"garbage line\r" + (SAMPLES / "newline_separated.hl7").read_bytes()
    results = parse(raw)
    assert codes(results[0]) == [("hl7.parse", None)]
    assert results[1].item is not None and results[1].index == 1


def test_missing_pid_and_collection_time() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.5.1\rOBX|1|ST|1234-5^Test^LN||positive\r"
    [result] = parse(raw)
    assert codes(result) == [("hl7.missing_segment", "PID")]
    [result] = parse(raw.replace(b"\rOBX", b"\rPID|1||P1\rOBX"))
    assert result.item.specimen_collected_at is None  # not carried: null, never guessed


def test_missing_message_type_and_obx3() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||||P\rPID|1||9\rOBX|1|ST|||positive\r"
    [result] = parse(raw)
    assert codes(result) == [("hl7.missing_field", "MSH-9")]
    raw = raw.replace(b"||||P", b"||ORU^R01||P")
    [result] = parse(raw)
    assert ("hl7.missing_field", "OBX-3") in codes(result)


def test_collection_time_of_year_precision_is_passed_over_never_made_a_date() -> None:
    raw = (
        b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.5.1\rPID|1||9\r"
        b"OBR|1||1|x|||202403011230\rOBX|1|NM|2345-7^Glucose^LN||88|mg/dL\rSPM|1|||119297000|||||||||||||0000\r"
    )
    [result] = parse(raw)  # SPM-17 `0000`: the ELR fallback OBR-7 gives the time
    assert result.errors == result.warnings == [] and result.item.specimen_collected_at == "2024-03-01T12:30:00"
    [result] = parse(raw.replace(b"202403011230", b"202403"))
    assert result.errors == [] and result.item is not None and result.item.specimen_collected_at is None
    assert [(w.code, w.field) for w in result.warnings] == [("hl7.imprecise_date", "SPM-17")]
    assert "0000" not in result.warnings[0].message


def test_first_valid_obx_is_used_and_bad_obr_date() -> None:
    raw = (
        b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.5.1\rPID|1||9\r"
        b"OBR|1||1|x|||2024-01-01\rOBX|1|NM|||7\rOBX|2|NM|2345-7^Glucose^LN||88|mg/dL\r"
    )
    [result] = parse(raw)
    assert codes(result) == [("hl7.bad_date", "OBR-7")]
    [result] = parse(raw.replace(b"2024-01-01", b"202401011230"))
    assert result.item.test_code == "2345-7" and result.item.result == "88"


def test_latin1_message_is_read_with_a_warning() -> None:
    raw = "MSH|^~\\&|A|Hôpital|C|D|20240101||ORU^R01|X1|P|2.5.1\rPID|1||9\rOBR|1||1|x|||20240101\rOBX|1|ST|1^t||prélevé\r"
    [result] = parse(raw.encode("latin-1"))
    assert result.item.result == "prélevé"
    assert [w.code for w in result.warnings] == ["hl7.encoding"]


def test_invalid_segment_lines_warn() -> None:
    raw = (SAMPLES / "newline_separated.hl7").read_bytes() + b"\nthis is a wrapped line"
    [result] = parse(raw)
    assert result.item is not None
    assert [w.code for w in result.warnings] == ["hl7.invalid_segment"]


def test_lazy_iteration() -> None:
    one = (SAMPLES / "newline_separated.hl7").read_bytes() + b"\n"
    iterator = parse_report(one * 3, CT, "r1")
    assert next(iterator).index == 0  # nothing forces the whole body to be parsed first


def test_deterministic() -> None:
    raw = (SAMPLES / "mixed_batch_errors.hl7").read_bytes()
    assert parse(raw) == parse(raw)


@pytest.mark.parametrize(
    "name", ["hospital_oru_spm.hl7", "custom_encoding_escapes.hl7", "newline_separated.hl7"]
)
def test_agrees_with_python_hl7(name: str) -> None:
    """Cross-check splitting and escape decoding against the `hl7` package (a dev-only oracle)."""
    hl7 = pytest.importorskip("hl7")
    raw = (SAMPLES / name).read_bytes()
    text = "\r".join(line for line in raw.decode().replace("\r\n", "\n").replace("\n", "\r").split("\r") if line)
    message = hl7.parse(text)
    [result] = parse(raw)
    item = result.item
    assert item.patient_id == message.segment("PID").extract_field(1, 3, 1, 1)
    assert item.message_id == message.segment("MSH").extract_field(1, 10)
    obx = message.segment("OBX")
    assert item.test_code == obx.extract_field(1, 3, 1, 1)
    assert item.test_name == obx.extract_field(1, 3, 1, 2)


def test_bom_does_not_cost_the_first_message() -> None:
    message = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X%d|P|2.5.1\rPID|1||9\rOBR|1||1|x|||20240101\rOBX|1|NM|1^t||5\r"
    results = parse(b"\xef\xbb\xbf" + message % 1 + message % 2)
    assert [r.item.message_id for r in results] == ["X1", "X2"]
    [result] = parse(b"\x0b\xef\xbb\xbf" + message % 3 + b"\x1c\r")  # MLLP framing around a BOM
    assert result.item.message_id == "X3"


def test_order_messages_are_not_results() -> None:
    for kind in (b"ORM^O01", b"OML^O21"):
        [result] = parse(b"MSH|^~\\&|A|B|C|D|20240101||" + kind + b"|X1|P|2.5.1\rPID|1||9\r")
        assert codes(result) == [("hl7.not_a_result", "MSH-9")]


def test_elr_fallbacks_and_codes() -> None:
    base = (b"MSH|^~\\&|A|LAB^10D0999999^CLIA|C|D|20240101||ORU^R01|X1|P|2.5.1\r"
            b"PID|1||^^^A^MR||DOE^JANE||19800203|%s|||^^^NY^10001|||||||||||N^Not Hispanic^HL70189\r"
            b"ORC|RE|1||||||||||%s\rOBR|1||1|x||||||||||||1999999999^DR\r"
            b"OBX|1|CWE|94500-6^SARS^LN||DETECTED^DETECTED^L||||||F|||20240102|11D1111111^^CLIA\r")
    [result] = parse(base % (b"U", b""))
    item = result.item
    assert item is not None, result.errors  # no PID-3.1, but a name and a birth date identify the patient
    assert item.patient_id is None and item.patient_birth_date == "1980-02-03" and item.patient_sex == "U"
    assert (item.patient_state, item.patient_postal_code, item.patient_ethnicity) == ("NY", "10001", "2186-5")
    assert item.specimen_collected_at == "2024-01-02"  # no SPM, no OBR-7: OBX-14
    assert item.performing_lab_clia == "11D1111111"  # no OBX-23.10: OBX-15 before MSH-4.2
    assert item.ordering_provider_npi == "1999999999"  # ORC-12 empty: OBR-16
    assert (item.result, item.result_code, item.result_text) == ("260373001", "260373001", "Detected")  # by name
    [result] = parse(base % (b"U", b"1234567893^SMITH^^^^^^^NPI"))
    assert result.item.ordering_provider_npi == "1234567893"
    [result] = parse(base % (b"Z", b""))  # an unknown sex: null, with a warning (identity does not rest on it)
    assert result.item is not None and result.item.patient_sex is None
    assert [(w.code, w.field) for w in result.warnings] == [("hl7.bad_code", "PID-8")]
    [result] = parse((base % (b"F", b"")).replace(b"DOE^JANE", b""))
    assert codes(result) == [("hl7.missing_field", "PID-3")]


def test_ask_at_order_entry_answers_are_not_results() -> None:
    qst = b"OBX|1|CWE|95419-8^Has symptoms^LN||Y^Yes^HL70136||||||F" + b"|" * 18 + b"QST\r"
    raw = (b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.5.1\rPID|1||P1\r" + qst
           + b"OBX|2|CWE|94500-6^SARS^LN||260415000^Not detected^SCT||||||F\r")
    [result] = parse(raw)
    assert result.item.test_code == "94500-6"
    assert [o.test_code for o in result.item.observations] == ["94500-6"]  # OBX-29 QST: an answer, not a result


def test_unreadable_birth_date_or_sex_is_a_warning_when_pid3_identifies_the_patient():
    message = (
        "MSH|^~\\&|LAB|11D2030855^CLIA|||20260101||ORU^R01|M1|P|2.5.1\r"
        "PID|1||P1||Doe^Jane||PIDDOB!|X\r"
        "OBR|1|||94500-6^SARS-CoV-2 RNA^LN|||20260101\r"
        "OBX|1|CWE|94500-6^SARS-CoV-2 RNA^LN||260373001^Detected^SCT\r"
    )
    (result,) = parse(message.encode())
    assert result.errors == [] and result.item is not None
    assert result.item.patient_birth_date is None and result.item.patient_sex is None
    assert [(w.code, w.field) for w in result.warnings] == [("hl7.bad_date", "PID-7"), ("hl7.bad_code", "PID-8")]


def test_unreadable_birth_date_is_an_error_when_identity_rests_on_it():
    message = (
        "MSH|^~\\&|LAB|11D2030855^CLIA|||20260101||ORU^R01|M1|P|2.5.1\r"
        "PID|1||||Doe^Jane||PIDDOB!\r"
        "OBR|1|||94500-6^SARS-CoV-2 RNA^LN|||20260101\r"
        "OBX|1|CWE|94500-6^SARS-CoV-2 RNA^LN||260373001^Detected^SCT\r"
    )
    (result,) = parse(message.encode())
    assert result.item is None
    assert ("hl7.bad_date", "PID-7") in [(e.code, e.field) for e in result.errors]
