"""CSV parser: header-driven rows from several senders' spreadsheets, good and broken."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.formats import ContentError, ItemResult, parse_report

SAMPLES = Path(__file__).parent / "samples" / "csv"
HEADER = b"patient_id,test_code,result,specimen_collected_at\n"


def parse(raw: bytes) -> list[ItemResult]:
    return list(parse_report(raw, "text/csv; charset=utf-8", "r1"))


def sample(name: str) -> list[ItemResult]:
    return parse((SAMPLES / name).read_bytes())


def codes(result: ItemResult) -> list[tuple[str, str | None]]:
    return [(issue.code, issue.field) for issue in result.errors]


def report_error(raw: bytes) -> str:
    with pytest.raises(ContentError) as caught:
        parse(raw)
    assert caught.value.issue.scope == "report"
    return caught.value.issue.code


def test_excel_export_with_bom_and_optional_columns() -> None:
    results = sample("excel_bom_crlf.csv")
    assert len(results) == 2
    item = results[0].item
    assert item is not None
    assert item.message_id == "PR-1" and item.patient_id == "PR000101" and item.patient_state == "NE"
    assert (item.test_code, item.test_name) == ("2345-7", "Glucose, fasting")
    assert (item.result, item.result_units) == ("102", "mg/dL")
    assert item.specimen_collected_at == "2024-04-02T07:30:00-05:00"
    assert item.performing_lab_clia is None  # performing_facility is not a core column: ignored
    assert results[1].item.specimen_collected_at == "2024-04-02"


def test_reordered_columns_and_quoted_newlines() -> None:
    results = sample("reordered_quoted_newlines.csv")
    assert [r.index for r in results] == [0, 1]
    first, second = (r.item for r in results)
    assert first.patient_id == "CH-77"  # header "Patient_ID" matched case-insensitively
    assert (first.result, first.result_code, first.result_text) == ("260385009", "260385009", "Negative")
    assert first.specimen_collected_at == "2024-05-06T14:03:00+00:00"
    assert first.message_id == "r1-0" and second.message_id == "r1-1"
    assert second.specimen_collected_at == "2024-05-06T15:10:00"


def test_bad_rows() -> None:
    results = sample("bad_rows.csv")
    assert [r.index for r in results] == [0, 1, 2, 3, 4]  # blank and ",,," rows are not items
    assert [r.item is not None for r in results] == [True, False, False, False, True]
    assert codes(results[1]) == [("csv.missing_value", "patient_id")]
    assert codes(results[2]) == [("csv.bad_date", "specimen_collected_at")]
    assert codes(results[3]) == [("csv.missing_value", "result"), ("csv.bad_date", "specimen_collected_at")]
    assert "line 7" in results[3].errors[0].message  # physical line number
    assert [w.code for w in results[4].warnings] == ["csv.extra_cells"]
    text = " ".join(i.message for r in results for i in r.errors)
    assert "06/01/2024" not in text and "2024-02-30" not in text


def test_missing_column_is_report_level() -> None:
    with pytest.raises(ContentError) as caught:
        sample("missing_column.csv")
    assert caught.value.issue.code == "csv.missing_column"
    assert caught.value.issue.field == "specimen_collected_at"


def test_semicolon_header_gets_a_hint() -> None:
    with pytest.raises(ContentError) as caught:
        parse(b"patient_id;test_code;result;specimen_collected_at\n1;2;3;2024-01-01\n")
    assert "semicolon" in caught.value.issue.message


def test_one_non_utf8_row_is_rejected_alone() -> None:
    results = sample("latin1_row.csv")
    assert [r.item is not None for r in results] == [True, False, True]
    assert codes(results[1]) == [("csv.encoding", None)]
    assert "line 3" in results[1].errors[0].message


def test_report_level_encoding_errors() -> None:
    assert report_error("patient_id,test_code,result,specimen_collected_at\n".encode("utf-16")) == "csv.encoding"
    assert report_error(b"patient_id,t\xe9st_code,result,specimen_collected_at\n") == "csv.encoding"


def test_duplicate_column() -> None:
    assert report_error(HEADER.rstrip() + b",Patient_ID\n") == "csv.duplicate_column"


def test_malformed_quoting_is_a_row_error() -> None:
    results = parse(HEADER + b'A1,718-7,"13"x,2024-01-01\nA2,718-7,13,2024-01-01\n')
    assert codes(results[0]) == [("csv.parse", None)]
    assert results[1].index == 1 and results[1].item.patient_id == "A2"


def test_header_parse_error() -> None:
    assert report_error(b'patient_id,"test_code"x,result,specimen_collected_at\n') == "csv.parse"


@pytest.mark.parametrize("raw", [b"", b"\n\n", HEADER, b"\xef\xbb\xbf" + HEADER])
def test_empty_or_header_only_yields_nothing(raw: bytes) -> None:
    assert parse(raw) == []


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_line_endings(newline: bytes) -> None:
    raw = HEADER.replace(b"\n", newline) + b'A1,718-7,"a\r\nb",2024-01-01' + newline + b"A2,718-7,1,20240102" + newline
    results = parse(raw)
    assert [r.item.patient_id for r in results] == ["A1", "A2"]
    assert results[0].item.result == "a\r\nb"
    assert results[1].item.specimen_collected_at == "2024-01-02"


def test_short_row_and_no_extra_columns() -> None:
    [result] = parse(HEADER + b"A1,718-7\n")
    assert codes(result) == [("csv.missing_value", "result"), ("csv.missing_value", "specimen_collected_at")]
    [result] = parse(HEADER + b" A1 , 718-7 , 5 , 2024-01-01T10:00 \n")
    assert result.item.patient_id == "A1" and result.item.result_code is None
    assert result.item.specimen_collected_at == "2024-01-01T10:00:00"


def test_lazy_and_deterministic() -> None:
    raw = HEADER + b"A1,718-7,1,2024-01-01\n" * 1000
    iterator = parse_report(raw, "text/csv", "r1")
    assert next(iterator).index == 0
    assert parse(raw) == parse(raw)
