"""SimpleReport bulk upload CSV: value rules (SimpleReport's own test vectors), header recognition, ELR mapping."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.formats import ContentError, ItemResult, codes, parse_report, simplereport
from shared.formats.simplereport import COLUMNS, REQUIRED, iso_date, iso_date_time

# One valid row holding every column, as SimpleReport's upload guide describes them.
ROW = {
    "patient_id": "P2300", "patient_last_name": "Doe", "patient_first_name": "Jane", "patient_middle_name": "",
    "patient_street": "123 Main St", "patient_street2": "", "patient_city": "Birmingham", "patient_state": "al",
    "patient_zip_code": "35226-1234", "patient_county": "Jefferson", "patient_phone_number": "205-999-2800",
    "patient_dob": "1/20/1962", "patient_gender": "F", "patient_race": "White",
    "patient_ethnicity": "Not Hispanic or Latino", "patient_preferred_language": "eng",
    "patient_email": "jane.doe@example.com", "accession_number": "ID12345-6789", "equipment_model_name": "ID NOW",
    "test_performed_code": "94534-5", "test_result": "Detected", "order_test_date": "12/20/2021 14:00",
    "specimen_collection_date": "12/20/2021 14:00 CT", "testing_lab_specimen_received_date": "",
    "test_result_date": "12/21/2021", "date_result_released": "", "specimen_type": "Nasal Swab",
    "ordering_provider_id": "1013012657", "ordering_provider_last_name": "Smith",
    "ordering_provider_first_name": "John", "ordering_provider_street": "400 Main Street",
    "ordering_provider_city": "Birmingham", "ordering_provider_state": "AL", "ordering_provider_zip_code": "35228",
    "ordering_provider_phone_number": "205-888-2000", "testing_lab_clia": "01D1058442",
    "testing_lab_name": "My Testing Lab", "testing_lab_street": "300 North Street", "testing_lab_city": "Birmingham",
    "testing_lab_state": "AL", "testing_lab_zip_code": "35228", "testing_lab_phone_number": "205-888-2000",
    "pregnant": "UNK", "employed_in_healthcare": "no", "symptomatic_for_disease": "Y",
    "illness_onset_date": "12/15/2021",
    "resident_congregate_setting": "Y", "residence_type": "Nursing Home", "hospitalized": "N", "icu": "U",
    "test_result_status": "c", "test_ordered_code": "94534-5", "genders_of_sexual_partners": "m, F, TM, tw, nb",
    "syphilis_history": "N", "patient_gender_identity": "trans woman", "comment": "Hemolysed; recollect",
}


def body(*rows: dict[str, str], header: list[str] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header or list(ROW), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def parse(raw: bytes) -> list[ItemResult]:
    return list(parse_report(raw, "text/csv", "r1"))


def one(**changes: str) -> ItemResult:
    [result] = parse(body({**ROW, **changes}))
    return result


def errors(result: ItemResult) -> list[tuple[str, str | None]]:
    return [(issue.code, issue.field) for issue in result.errors]


def test_full_row_maps_to_the_elr_core() -> None:
    result = one()
    assert result.errors == [] and result.warnings == []
    item = result.item
    assert (item.message_id, item.patient_id, item.patient_birth_date, item.patient_sex) == (
        "ID12345-6789", "P2300", "1962-01-20", "F")
    assert (item.patient_race, item.patient_ethnicity, item.patient_postal_code, item.patient_state) == (
        "2106-3", "2186-5", "35226-1234", "AL")
    assert (item.test_code, item.result, item.result_code, item.result_text) == (
        "94534-5", "260373001", "260373001", "Detected")
    assert item.specimen_collected_at == "2021-12-20T14:00:00-06:00"  # CT in December is UTC-6
    assert (item.specimen_type_code, item.performing_lab_clia, item.ordering_provider_npi) == (
        "445297001", "01D1058442", "1013012657")
    assert [o.test_code for o in item.observations] == ["94534-5"]


def test_values_absent_stay_null() -> None:
    item = one(patient_id="", patient_gender="", specimen_collection_date="", ordering_provider_id="muc1290").item
    assert (item.patient_id, item.patient_sex, item.ordering_provider_npi) == (None, None, None)
    assert item.specimen_collected_at == "2021-12-20T14:00:00"  # order_test_date, no zone added


@pytest.mark.parametrize(
    ("value", "code", "text"),
    [("Positive", "10828004", "Positive"), ("NOT DETECTED", "260415000", "Not detected"),
     ("Invalid Result", "455371000124106", "Invalid result"), ("419984006", "419984006", "Inconclusive"),
     ("895231008", "895231008", "Not detected in pooled specimen")],
)
def test_results_by_name_or_code(value: str, code: str, text: str) -> None:
    item = one(test_result=value).item
    assert (item.result, item.result_code, item.result_text) == (code, code, text)


@pytest.mark.parametrize("value", ["Reactive", "pos", "260373000", "12"])
def test_result_outside_simplereports_list(value: str) -> None:
    assert errors(one(test_result=value)) == [("csv.invalid_value", "test_result")]


@pytest.mark.parametrize(
    ("value", "code"),
    [("258500001", "258500001"), ("433801000124107", "433801000124107"), ("anterior nares swab", "697989009"),
     ("Oropharyngeal swab", "258529004"), ("Nasopharyngeal swab", "258500001")],
)
def test_specimen_by_code_or_name(value: str, code: str) -> None:
    assert one(specimen_type=value).item.specimen_type_code == code


@pytest.mark.parametrize("value", ["1", "0123456789", "fake specimen name"])
def test_bad_specimen(value: str) -> None:
    assert errors(one(specimen_type=value)) == [("csv.invalid_value", "specimen_type")]


# SimpleReport's CsvValidatorUtilsTest vectors.
@pytest.mark.parametrize("value", ["01/01/2023", "1/1/2023", "1/01/2023", "01/1/2023", "1/31/2023", "12/01/2023"])
def test_dates_simplereport_accepts(value: str) -> None:
    assert iso_date(value) is not None


@pytest.mark.parametrize(
    "value", ["00/01/2023", "1/32/2023", "1/1/23", "11/00/2023", "0/31/2023", "10/0/2023", "0/0/202", "2/30/2023"]
)
def test_dates_simplereport_refuses(value: str) -> None:
    assert iso_date(value) is None


@pytest.mark.parametrize(
    "value",
    ["01/01/2023 11:11", "1/1/2023 12:34", "1/01/2023 23:59", "01/1/2023 00:00", "12/01/2023 1:01", "12/01/2023",
     *(f"01/01/2023 11:11 {zone}" for zone in
       "ET EST EDT CT CST CDT MT MST MDT PT PST PDT AKDT AKST HST SST utc America/Chicago US/Samoa".split())],
)
def test_date_times_simplereport_accepts(value: str) -> None:
    assert iso_date_time(value) is not None


@pytest.mark.parametrize(
    "value",
    ["00/01/2023 11:60", "1/32/2023 1:50", "1/1/23 12:34", "11/00/2023 52:37", "0/31/2023 5:29", "12/1/23",
     "01/01/2023 11:11 New York", "01/01/2023 11:11 Eastern", "01/01/2023 11:11 central", "01/01/2023 11:11 123",
     "01/01/2023 11:11 ABC", "01/01/2023 11:11 ET2", "12/20/2021 2:00 PM", "01/01/2023 24:00", "12/20/2021 CT"],
)
def test_date_times_simplereport_refuses(value: str) -> None:
    assert iso_date_time(value) is None


@pytest.mark.parametrize(
    ("value", "iso"),
    [("6/28/2023 14:00 MST", "2023-06-28T14:00:00-07:00"), ("6/28/2023 14:00 EDT", "2023-06-28T14:00:00-04:00"),
     ("1/5/2023 9:30 ET", "2023-01-05T09:30:00-05:00"), ("6/5/2023 9:30 et", "2023-06-05T09:30:00-04:00"),
     ("6/5/2023 9:30 America/Phoenix", "2023-06-05T09:30:00-07:00"), ("6/5/2023 9:30 Z", "2023-06-05T09:30:00+00:00"),
     ("07/13/2023 9:30", "2023-07-13T09:30:00"),
     ("07/13/2023", "2023-07-13"), ("2021-12-21T15:00-05:00", "2021-12-21T15:00:00-05:00")],
)
def test_date_time_values(value: str, iso: str) -> None:
    assert iso_date_time(value) == iso


@pytest.mark.parametrize(
    ("column", "value"),
    [("patient_zip_code", "2103"), ("patient_zip_code", "1234-56789"), ("patient_phone_number", "4109561222"),
     ("patient_phone_number", "010-956-1222"), ("patient_ethnicity", "latinx"), ("patient_race", "black"),
     ("patient_state", "XX"), ("testing_lab_clia", "01X1058442"), ("patient_email", "jane@"),
     ("genders_of_sexual_partners", "m, f, t, n"), ("patient_gender_identity", "woman"), ("pregnant", "maybe"),
     ("residence_type", "castle"), ("test_result_status", "P"), ("test_performed_code", "LL2467"),
     ("test_ordered_code", "94534")],
)
def test_invalid_values(column: str, value: str) -> None:
    result = one(**{column: value})
    assert errors(result) == [("csv.invalid_value", column)]
    assert value not in result.errors[0].message and "line 2" in result.errors[0].message


@pytest.mark.parametrize("column", ["patient_dob", "illness_onset_date", "test_result_date", "order_test_date"])
def test_bad_dates(column: str) -> None:
    assert errors(one(**{column: "2021/12/20"})) == [("csv.bad_date", column)]


def test_required_values_and_unknown_sex() -> None:
    result = one(patient_last_name="", testing_lab_clia=" ", patient_gender="X")
    assert errors(result) == [("csv.missing_value", "patient_last_name"), ("csv.missing_value", "testing_lab_clia")]
    assert [(w.code, w.field) for w in result.warnings] == [("csv.ignored_value", "patient_gender")]


def test_patient_sex_column_wins_over_patient_gender() -> None:
    [result] = parse(body({**ROW, "patient_sex": "male"}, header=[*ROW, "patient_sex"]))
    assert result.item.patient_sex == "M"


def test_missing_required_columns_are_named() -> None:
    header = [name for name in ROW if name not in ("test_result_date", "specimen_type")]
    with pytest.raises(ContentError) as caught:
        parse(body(ROW, header=header))
    issue = caught.value.issue
    assert (issue.scope, issue.code, issue.field) == ("report", "csv.missing_column", "test_result_date")
    assert "SimpleReport" in issue.message and "specimen_type" in issue.message


def test_header_case_and_spaces_and_minimal_csv_still_recognised() -> None:
    header = [f" {name.upper()} " for name in ROW]
    raw = body(ROW).split(b"\r\n", 1)[1]
    [result] = parse(",".join(header).encode() + b"\r\n" + raw)
    assert result.item.patient_id == "P2300"
    [minimal] = parse(b"patient_id,test_code,result,specimen_collected_at,comment\nA1,718-7,13,2024-01-01,x\n")
    assert minimal.item.patient_id == "A1"


def test_rows_must_match_the_header_as_simplereport_requires() -> None:
    header, line = body(ROW).decode().splitlines()
    short, trailing_comma, two_more = line.rsplit(",", 3)[0], line + ",", line + ",,"
    results = parse(f"{header}\n{short}\n{line}\n{trailing_comma}\n{two_more}\n".encode())
    assert [errors(r) for r in results] == [[("csv.column_count", None)], [], [], [("csv.column_count", None)]]
    assert [r.warnings for r in results[1:3]] == [[], []]
    assert "line 2" in results[0].errors[0].message and results[3].index == 3


@settings(max_examples=150, deadline=None)
@given(
    column=st.sampled_from(sorted(ROW)),
    # The marker keeps the value apart from the fixed words of a message ("0000" is in "00000-0").
    value=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=30).map(lambda v: f"Ẑ{v}"),
)
def test_messages_never_carry_the_value(column: str, value: str) -> None:
    result = one(**{column: value})
    assert all(value.strip() not in issue.message for issue in result.errors + result.warnings)


def test_every_race_and_ethnicity_simplereport_takes_has_a_code() -> None:
    assert all(codes.RACE.code(value) for value in simplereport._RACE_VALUES)
    assert all(codes.ETHNICITY.code(value) for value in simplereport._ETHNICITY_VALUES)
    assert {codes.RACE.code(v) for v in ("Ask, but unknown", "other", "UNK")} == {"ASKU", "2131-1", "UNK"}


def test_every_required_column_is_in_the_guide_order() -> None:
    assert len(REQUIRED) == 32 and len({c.name for c in COLUMNS}) == len(COLUMNS)
