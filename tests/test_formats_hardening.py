"""Hostile and odd bodies: every bound of the HL7 and CSV parsers gives a clear issue, memory stays within a small
multiple of the body, every check is linear, numbers are HL7 numbers, and nothing but ContentError ever escapes."""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.formats import ContentError, ItemResult, csv, hl7v2, parse_report

HL7 = "application/hl7-v2"
CSV = "text/csv"
SAMPLES = Path(__file__).parent / "samples"
HEAD = b"MSH|^~\\&|LIS|LAB|ELR|DOH|20240101||ORU^R01|M1|P|2.5.1\rPID|1||P1\rOBR|1||1|x|||20240101\r"
MINIMAL_HEADER = b"patient_id,test_code,result,specimen_collected_at\n"
# Peak memory may be this multiple of the body, plus a fixed base (bounded per message or row by the limits).
RATIO, BASE = 10, 24_000_000


def outcome(raw: bytes, content_type: str) -> str | list[list[tuple[str, str | None]]]:
    """The report error's code, or each item's (error code, field) pairs."""
    try:
        return [[(e.code, e.field) for e in r.errors] for r in parse_report(raw, content_type, "r1")]
    except ContentError as exc:
        return exc.issue.code


def traced(raw: bytes, content_type: str) -> tuple[str | list, int]:
    """The outcome and the peak of memory allocated while parsing (the body itself is not counted)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = outcome(raw, content_type)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak


def items(raw: bytes, content_type: str = HL7) -> list[ItemResult]:
    return list(parse_report(raw, content_type, "r1"))


# -- HL7: bounds on one message -------------------------------------------------------------------------------------

# shape -> (body, each item's (error code, field) pairs)
MESSAGE_SHAPES: dict[str, tuple] = {
    # 200,000 tiny OBX in one message: before the bounds, ~145x the body.
    "tiny OBX": (lambda: HEAD + b"OBX|||c||1\r" * 200_000,
                 [("hl7.too_many_segments", None), ("hl7.too_many_observations", "OBX")]),
    "tiny NTE": (lambda: HEAD + b"OBX|1|ST|1^t||5\r" + b"NTE|1\r" * 200_000, [("hl7.too_many_segments", None)]),
    "segments before any MSH": (lambda: b"NTE|1\r" * 200_000 + HEAD + b"OBX|1|ST|1^t||5\r",
                                [("hl7.too_many_segments", None)], []),
    "one segment of many fields": (lambda: HEAD + b"OBX|1|ST|1^t||5" + b"|ab" * 1_000_000 + b"\r",
                                   [("hl7.too_many_fields", "OBX")]),
    "OBX-5 of many repetitions": (lambda: HEAD + b"OBX|1|TX|1^t||" + b"ab~" * 1_000_000 + b"\r",
                                  [("hl7.field_too_long", "OBX-5")]),
    "OBX-5 of many components": (lambda: HEAD + b"OBX|1|SN|1^t||" + b"ab^" * 1_000_000 + b"\r",
                                 [("hl7.field_too_long", "OBX-5")]),
    "a field read of 3 MB": (lambda: HEAD.replace(b"PID|1||P1", b"PID|1||P1|||" + b"x" * 3_000_000) + b"OBX|1|ST|1||5\r",
                             [("hl7.field_too_long", "PID-6")]),
    # Under every bound: as many read segments of 29 short fields as a message may hold (the fixed base).
    "9,000 OBR of 30 fields": (lambda: HEAD + b"OBX|1|ST|1^t||5\r" + (b"OBR" + b"|ab" * 30 + b"\r") * 9_000,
                               []),
}


@pytest.mark.parametrize("shape", MESSAGE_SHAPES)
def test_one_message_costs_a_bounded_multiple_of_the_body(shape: str) -> None:
    build, *expected = MESSAGE_SHAPES[shape]
    body = build()
    result, peak = traced(body, HL7)
    assert result == expected
    assert peak <= RATIO * len(body) + BASE, f"{peak / len(body):.0f}x the body"


def test_a_batch_continues_after_a_refused_message() -> None:
    body = HEAD + b"OBX|1|ST|1||5\r" * 1_001 + HEAD + b"OBX|1|ST|1||5\r"
    first, second = items(body)
    assert [(e.code, e.field) for e in first.errors] == [("hl7.too_many_observations", "OBX")]
    assert second.errors == [] and second.item is not None


def test_observation_and_segment_bounds_are_exact() -> None:
    at_bound = HEAD + b"OBX|1|NM|1^t||5\r" * hl7v2.MAX_OBSERVATIONS
    [result] = items(at_bound)
    assert result.item is not None and len(result.item.observations) == hl7v2.MAX_OBSERVATIONS
    [result] = items(at_bound + b"OBX|1|NM|1^t||5\r")
    assert [e.code for e in result.errors] == ["hl7.too_many_observations"]
    notes = HEAD + b"OBX|1|NM|1^t||5\r" + b"NTE|1\r" * (hl7v2.MAX_SEGMENTS - 4)  # MSH, PID, OBR, OBX: at the bound
    assert items(notes)[0].item is not None
    assert [e.code for e in items(notes + b"NTE|1\r")[0].errors] == ["hl7.too_many_segments"]


def test_field_bounds_are_exact_and_name_the_field() -> None:
    fields = b"|" * hl7v2.MAX_FIELDS
    assert items(HEAD + b"OBX|1|ST|1||5\rZZZ" + fields + b"\r")[0].item is not None
    [result] = items(HEAD + b"OBX|1|ST|1||5\rZZZ" + fields + b"|\r")
    assert [(e.code, e.field) for e in result.errors] == [("hl7.too_many_fields", "ZZZ")]

    def obx5(value: bytes) -> list[tuple[str, str | None]]:
        return [(e.code, e.field) for e in items(HEAD + b"OBX|1|TX|1^t||" + value + b"\r")[0].errors]

    assert obx5(b"a~" * (hl7v2.MAX_REPETITIONS - 1) + b"a") == []
    assert obx5(b"a~" * hl7v2.MAX_REPETITIONS + b"a") == [("hl7.too_many_repetitions", "OBX-5")]
    assert obx5(b"a^" * (hl7v2.MAX_COMPONENTS - 1) + b"a") == []
    assert obx5(b"a^" * hl7v2.MAX_COMPONENTS + b"a") == [("hl7.too_many_components", "OBX-5")]
    assert obx5(b"a" * hl7v2.MAX_FIELD_CHARS) == []
    assert obx5(b"a" * (hl7v2.MAX_FIELD_CHARS + 1)) == [("hl7.field_too_long", "OBX-5")]
    long_id = b"MSH|^~\\&|LIS|" + b"L^" * 1_000 + b"|ELR|DOH|20240101||ORU^R01|M1|P|2.5.1\rPID|1||P1\rOBX|1|ST|1||5\r"
    assert [(e.code, e.field) for e in items(long_id)[0].errors] == [("hl7.too_many_components", "MSH-4")]


# -- HL7: numbers ---------------------------------------------------------------------------------------------------

def obx(value_type: str, value: str) -> ItemResult:
    [result] = items(HEAD + f"OBX|1|{value_type}|1^t||{value}|mg\r".encode())
    return result


@pytest.mark.parametrize("value", ["1_5", "1_000.5", "٥", "1٥", "1e3", "1E3", "NaN", "Infinity", "-inf", "0x1F", "1,5",
                                   "--5", "+-5", ".", "-", "5-", "1.2.3", "１２", "²"])
def test_nm_values_that_are_not_hl7_numbers_are_errors(value: str) -> None:
    result = obx("NM", value)
    assert [(e.code, e.field) for e in result.errors] == [("hl7.bad_number", "OBX-5")]
    assert len(value) == 1 or value not in result.errors[0].message


@pytest.mark.parametrize(("value", "expected"), [
    ("98", "98"), ("1.50", "1.50"), ("-0.5", "-0.5"), ("+5", "5"), ("0065.880", "65.880"), (".5", "0.5"),
    ("5.", "5"), ("0.0000001", "0.0000001"), ("-0", "-0"), ("12345678901234567890.123456789", "12345678901234567890.123456789"),
])
def test_nm_values_keep_their_digits(value: str, expected: str) -> None:
    result = obx("NM", value)
    assert result.errors == [] and result.item is not None and result.item.result == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("<^10", "<10"), ("^1^:^128", "1:128"), ("=^0.5", "=0.5"), (">=^32", ">=32"), ("^10^-^20", "10-20"),
    ("<>^1", "<>1"), ("^1^/^2", "1/2"),
])
def test_sn_values_as_sent(value: str, expected: str) -> None:
    result = obx("SN", value)
    assert result.errors == [] and result.item is not None and result.item.result == expected


@pytest.mark.parametrize("value", ["^1_5", "<^1e3", "x^1", "^1^*^2", "^1^:^٥", "<", "^^:"])
def test_sn_values_that_are_not_structured_numbers_are_errors(value: str) -> None:
    result = obx("SN", value)
    assert [(e.code, e.field) for e in result.errors] == [("hl7.bad_number", "OBX-5")]
    assert "structured numeric" in result.errors[0].message


def test_bad_numbers_of_a_panel_give_one_issue() -> None:
    [result] = items(HEAD + b"OBX|1|NM|1^t||1_5\r" * 300 + b"OBX|2|NM|2^t||7\r")
    [issue] = result.errors
    assert issue.code == "hl7.bad_number" and "OBX 1 (and 299 more OBX)" in issue.message


# -- Code-mapping caches ---------------------------------------------------------------------------------------------

def retained(raws: list[bytes], content_type: str) -> int:
    """Memory still allocated after the reports were parsed and their results dropped."""
    items(raws[0], content_type)  # warm up: lazy imports, compiled patterns
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for raw in raws[1:]:
            items(raw, content_type)
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_no_cache_keeps_long_field_values() -> None:
    """A 100 KB PID-8, PID-10 or OBX-5 (patient data, or anything) must not outlive its report."""
    def hl7(n: int) -> bytes:
        value = (b"%d" % n) * 20_000
        return HEAD.replace(b"PID|1||P1", b"PID|1||P1|||||" + value + b"||" + value) + b"OBX|1|ST|1||" + value + b"\r"

    assert retained([hl7(n) for n in range(10, 16)], HL7) < 100_000

    def row(n: int) -> bytes:
        value = (b"%d" % n) * 20_000
        return b"patient_id,test_code,result,specimen_collected_at,patient_sex,patient_race\nP1,1,%s,2024-01-01,%s,%s\n" % (
            value, value, value)

    assert retained([row(n) for n in range(10, 16)], CSV) < 100_000


# -- CSV: header and row bounds ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", ["", "test_result,accession_number,"], ids=["minimal", "simplereport"])
def test_a_header_of_100000_columns_is_refused_at_once(extra: str) -> None:
    header = (extra + ",".join(f"c{i}" for i in range(100_000))).encode() + b"\n1,2,3\n"
    started = time.process_time()
    assert outcome(header, CSV) == "csv.too_many_columns"
    assert time.process_time() - started < 2  # before: minutes in a quadratic duplicate check


def test_header_checks_are_linear_up_to_the_bound() -> None:
    names = [f"c{i}" for i in range(csv.MAX_COLUMNS - 4)]
    started = time.process_time()
    assert outcome(b"patient_id,test_code,result,specimen_collected_at," + ",".join(names).encode() + b"\n", CSV) == []
    duplicated = ",".join(names[:-1] + ["c1"]).encode() + b"\n"
    assert outcome(duplicated, CSV) == "csv.duplicate_column"
    assert outcome(",".join(["patient_id"] * csv.MAX_COLUMNS).encode() + b"\n", CSV) == "csv.duplicate_column"
    assert outcome(",".join(names + ["x"] * 5).encode() + b"\n", CSV) == "csv.too_many_columns"
    assert time.process_time() - started < 1


ROW_SHAPES: dict[str, tuple[Callable[[], bytes], str | list]] = {
    "a row of 1.5 million cells": (lambda: MINIMAL_HEADER + b"ab," * 1_500_000 + b"\n",
                                   [[("csv.row_too_long", None)]]),
    "quoted line breaks chaining lines into one row": (
        lambda: MINIMAL_HEADER + (b"ab," * 300_000 + b'"\n",') * 5 + b"\nP1,1,5,2024-01-01\n",
        # then the reading goes on from the next line: quoted cells over the csv module's 128 KiB
        [[("csv.row_too_long", None)]] + [[("csv.parse", None)]] * 4),
    "a header of 1.5 million names": (lambda: b"ab," * 1_500_000 + b"\n", "csv.row_too_long"),
    "blank rows of commas": (lambda: MINIMAL_HEADER + (b"," * 100_000 + b"\n") * 40, []),
}


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_one_row_costs_a_bounded_multiple_of_the_body(shape: str) -> None:
    build, expected = ROW_SHAPES[shape]
    body = build()
    result, peak = traced(body, CSV)
    assert result == expected
    assert peak <= RATIO * len(body) + BASE, f"{peak / len(body):.0f}x the body"


def test_a_long_row_is_one_item_error_and_the_next_row_is_read() -> None:
    body = MINIMAL_HEADER + b"P1,1," + b"x" * 100_000 + b"," * (csv.MAX_ROW_BYTES - 99_000) + b"\nP2,1,5,2024-01-01\n"
    first, second = items(body, CSV)
    assert [(e.code, e.field) for e in first.errors] == [("csv.row_too_long", None)]
    assert "lines 2-2" in first.errors[0].message
    assert second.item is not None and second.item.patient_id == "P2"
    at_bound = MINIMAL_HEADER + b"P1,1,5,2024-01-01," + b"," * (csv.MAX_ROW_BYTES - 19) + b"\n"
    assert items(at_bound, CSV)[0].item is not None


# -- One report-level hint instead of an error per row ---------------------------------------------------------------

@pytest.mark.parametrize(("header", "hint"), [
    (b"patient_id;test_code;result;specimen_collected_at\n", "semicolon-separated"),
    (b"patient_id\ttest_code\tresult\tspecimen_collected_at\n", "tab-separated"),
    (b"| patient_id | test_code | result | specimen_collected_at |\n", "pipe-separated"),
    (b'patient_id, "test_code", "result", "specimen_collected_at"\n', "quote must come right after the comma"),
])
def test_a_misread_header_gets_one_hint(header: bytes, hint: str) -> None:
    with pytest.raises(ContentError) as caught:
        items(header + b"A1;2345-7;98;2024-01-03\n" * 1_000, CSV)
    assert caught.value.issue.code == "csv.missing_column" and hint in caught.value.issue.message


# -- Content problems are permanent: one item fails, the next is read -----------------------------------------------

def test_an_unexpected_failure_in_one_message_rejects_that_item_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real = hl7v2._normalise

    def flaky(message, index, report_id, warnings):  # noqa: ANN001, ANN202
        if index == 1:
            raise IndexError("P2 DOE^JANE")  # what a bug's message may hold: values
        return real(message, index, report_id, warnings)

    monkeypatch.setattr(hl7v2, "_normalise", flaky)
    message = HEAD + b"OBX|1|ST|1||5\r"
    results = items(message * 3)
    assert [r.item is not None for r in results] == [True, False, True]
    [issue] = results[1].errors
    assert (issue.code, issue.scope, issue.index) == ("hl7.unreadable", "item", 1)
    assert "IndexError" in issue.message and "DOE" not in issue.message


def test_an_unexpected_failure_in_one_row_rejects_that_item_only(monkeypatch: pytest.MonkeyPatch) -> None:
    real = csv._minimal_row

    def flaky(values, index, line, report_id):  # noqa: ANN001, ANN202
        if index == 1:
            raise TypeError(f"bad {values['patient_id']}")
        return real(values, index, line, report_id)

    monkeypatch.setattr(csv, "MINIMAL", csv.MINIMAL.__class__(**{**csv.MINIMAL.__dict__, "row": flaky}))
    results = items(MINIMAL_HEADER + b"P1,1,5,2024-01-01\nP2,1,5,2024-01-01\nP3,1,5,2024-01-01\n", CSV)
    assert [r.item is not None for r in results] == [True, False, True]
    [issue] = results[1].errors
    assert (issue.code, issue.index) == ("csv.unreadable", 1)
    assert "TypeError" in issue.message and "P2" not in issue.message and "lines 3-3" in issue.message


def test_memory_errors_are_not_content_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(*args: object) -> None:
        raise MemoryError

    monkeypatch.setattr(hl7v2, "_normalise", exhausted)
    with pytest.raises(MemoryError):
        items(HEAD + b"OBX|1|ST|1||5\r")


# -- Property: mutated real samples never raise anything but ContentError ------------------------------------------

HL7_SEEDS = sorted((SAMPLES / "real" / "reportstream").glob("hl7*/*.hl7")) + sorted(
    (SAMPLES / "real" / "reportstream" / "pairs").glob("*.hl7")) + sorted((SAMPLES / "hl7v2").glob("*.hl7"))
CSV_SEEDS = sorted((SAMPLES / "real" / "simplereport-csv").glob("*.csv")) + sorted((SAMPLES / "csv").glob("*.csv"))
MARKER = b"Zq7Marker"  # a value inserted into samples: no issue message may ever repeat it
INSERTS = st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\r\n", b",", b'"', b"MSH|^~\\&|", b"OBX|1|NM|",
                           b"OBX|1|SN|1^t||", b"9" * 400, b"-" + b"9" * 60 + b".5", b"1e999", b"1_5", b"NaN", b"\\X41\\",
                           b"\\F\\", b"\xef\xbb\xbf", b"\xff", b"\x00", MARKER, b"|" + MARKER + b"|"])


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, str]:
    content_type = draw(st.sampled_from([HL7, CSV]))
    data = bytearray(draw(st.sampled_from(HL7_SEEDS if content_type == HL7 else CSV_SEEDS)).read_bytes())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["delete", "duplicate", "swap", "insert", "insert", "truncate"]))
        if edit == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif edit == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 300))] * draw(st.integers(1, 3))
        elif edit == "swap" and at + 1 < len(data):
            data[at], data[at + 1] = data[at + 1], data[at]
        elif edit == "insert":
            data[at:at] = draw(INSERTS)
        elif edit == "truncate":
            del data[at:]
    return bytes(data), content_type


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=mutated())
def test_mutated_real_samples_raise_only_content_error(case: tuple[bytes, str]) -> None:
    raw, content_type = case
    try:
        results = items(raw, content_type)
    except ContentError as exc:
        assert exc.issue.scope == "report" and exc.issue.code.startswith(("hl7.", "csv."))
        return
    for position, result in enumerate(results):
        assert result.index == position
        assert (result.item is None) == bool(result.errors)
        for issue in result.errors + result.warnings:
            assert issue.scope == "item" and issue.index == position and issue.code and issue.message
            # The safety net is for bugs: no mutation of a real sample may need it.
            assert issue.code not in ("hl7.unreadable", "csv.unreadable")
            if issue.code not in ("hl7.unsupported_message_type", "hl7.not_a_result"):  # MSH-9 is shown, trimmed
                assert MARKER.decode() not in issue.message
        if result.item is not None:
            assert result.item.item_index == position and result.item.report_id == "r1"
            for observation in result.item.observations:
                assert observation.test_code and observation.result
