"""CSV reports: a header row naming the columns (any order), then one item per data row, streamed line by line.

The header says which CSV it is: SimpleReport's bulk upload (shared/formats/simplereport.py) or the project's own
minimal CSV (below). Reading, encodings and syntax errors are the same for both.
"""

from __future__ import annotations

import csv as _csv
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypedDict

from shared.formats import codes, simplereport
from shared.formats._dates import iso_from_text
from shared.formats.items import ContentError, ItemResult
from shared.formats.items import item_issue as _issue
from shared.models import NormalisedItem, Observation

REQUIRED = ("patient_id", "test_code", "result", "specimen_collected_at")
# The minimal CSV's optional columns are the ELR core fields of the same name; values go through the code sets.
OPTIONAL = (
    "message_id", "patient_birth_date", "patient_sex", "patient_race", "patient_ethnicity", "patient_postal_code",
    "patient_state", "test_name", "result_units", "specimen_type_code", "performing_lab_clia", "ordering_provider_npi",
)
_KNOWN = frozenset(REQUIRED + OPTIONAL)
_REQUIRED_SET = frozenset(REQUIRED)
# Bounds (docs/formats.md, "Limits"); the csv module itself refuses a cell over 128 KiB (csv.parse).
MAX_COLUMNS = 1_000  # names in the header; SimpleReport's upload has 73 columns
# One row, its physical lines together (eight cells at the cell limit). The csv module builds a row's cells all at
# once, some 20 bytes of memory per byte of a row of tiny cells, so a row past this is never handed to it.
MAX_ROW_BYTES = 1024 * 1024
# A header of one column holding one of these was written with another separator.
_SEPARATOR_HINTS = ((";", "semicolon"), ("\t", "tab"), ("|", "pipe"))
# One physical line with its terminator; \r\n, \r and \n all end a line (the csv module wants them kept).
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class _Dialect:
    """One CSV layout: its columns, the ones a header must have, and how a row becomes an item."""

    name: str  # for messages: which CSV the header was taken for
    known: frozenset[str]
    required: tuple[str, ...]
    # (known column -> stripped cell, index, line, report id) -> the item's result
    row: Callable[[Mapping[str, str], int, int, str], ItemResult]
    # A row whose cell count differs from the header's is rejected (SimpleReport's rule), rather than read with its
    # missing cells empty and its surplus ignored.
    whole_rows: bool


class _RowTooLong(Exception):
    """The row being read went past MAX_ROW_BYTES: the csv reader is abandoned mid-row."""


class _Lines:
    """Decode the body one physical line at a time (no second copy of it) and remember lines that were not UTF-8.

    An iterator object rather than a generator, so that raising _RowTooLong through the csv reader leaves it usable:
    a new reader goes on from the next line."""

    def __init__(self, raw: bytes) -> None:
        self._matches = _LINE.finditer(raw, len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0)
        self.count = 0
        self._bad: int | None = None
        self.row_bytes = 0  # bytes of the row being read: its reader zeroes it before each row

    def take_bad(self) -> int | None:
        """The first non-UTF-8 line read since the last call, if any (lines are read strictly in order)."""
        bad, self._bad = self._bad, None
        return bad

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        match = next(self._matches)
        self.count += 1
        self.row_bytes += match.end() - match.start()
        if self.row_bytes > MAX_ROW_BYTES:
            raise _RowTooLong  # this line is neither decoded nor given to the csv module
        line = match.group()
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            if self._bad is None:
                self._bad = self.count
            return line.decode("utf-8", errors="replace")


def parse(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """Yield one ItemResult per non-blank data row; a missing required column rejects the whole report."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ContentError("csv.encoding", "the CSV is UTF-16; send it as UTF-8")
    lines = _Lines(raw)
    # strict: a stray quote ("b"c) is reported as csv.parse instead of silently merging cells.
    reader = _csv.reader(lines, strict=True)
    found = _header(reader, lines)
    if found is None:
        return  # empty body or blank lines only: no items
    columns, dialect = found
    index = 0
    while True:
        first_line = lines.count + 1
        lines.row_bytes = 0
        try:
            result = _next(reader, lines, columns, dialect, index, first_line, report_id)
        except StopIteration:
            return
        except _RowTooLong:
            lines.take_bad()
            reader = _csv.reader(lines, strict=True)  # the old one is inside the row: go on from the next line
            result = _failed(index, "csv.row_too_long",
                             f"lines {first_line}-{lines.count}: the row is longer than {MAX_ROW_BYTES:,} bytes")
        except MemoryError:
            raise  # not the content's fault: the report is retried
        except Exception as exc:  # noqa: BLE001 - content problems are permanent: this row fails, the next is read
            lines.take_bad()
            result = _failed(index, "csv.unreadable", f"lines {first_line}-{lines.count}: the row could not be read "
                                                      f"({type(exc).__name__})")
        if result is not None:
            yield result
            index += 1


def _next(reader: Iterator[list[str]], lines: _Lines, columns: list[str], dialect: _Dialect, index: int,
          first_line: int, report_id: str) -> ItemResult | None:
    """The next row's result; None for a blank row. StopIteration at the end of the body."""
    try:
        row = next(reader)
    except _csv.Error as exc:
        lines.take_bad()
        # csv's messages describe the syntax problem, never the cell contents.
        return _failed(index, "csv.parse", f"lines {first_line}-{lines.count}: {exc}")
    if not "".join(row).strip():
        lines.take_bad()
        return None  # blank lines and ",,,," rows spreadsheets leave behind are not data
    bad = lines.take_bad()
    if bad is not None:
        return _failed(index, "csv.encoding", f"line {bad} is not valid UTF-8")
    return _row(row, columns, dialect, index, first_line, report_id)


def _header(reader: Iterator[list[str]], lines: _Lines) -> tuple[list[str], _Dialect] | None:
    """Read the header (skipping leading blank lines) and check the required columns are there, once each.
    Every check is one pass over the names (a header may hold anything up to the row bound)."""
    header = _first_row(reader, lines)
    if header is None:
        return None
    if lines.take_bad() is not None:
        raise ContentError("csv.encoding", "the header row is not valid UTF-8")
    if len(header) > MAX_COLUMNS:
        raise ContentError("csv.too_many_columns", f"the header has more than {MAX_COLUMNS:,} columns")
    # Matching is case-insensitive and ignores surrounding spaces: "Patient_ID " is the patient_id column.
    lowered = [name.strip().lower() for name in header]
    dialect = _dialect(set(lowered))
    columns = [low if low in dialect.known else name.strip() for name, low in zip(header, lowered, strict=True)]
    seen: set[str] = set()
    duplicates: set[str] = set()
    for name in columns:
        if name:
            (duplicates if name in seen else seen).add(name)
    if duplicates:
        raise ContentError("csv.duplicate_column",
                           f"duplicate column(s) in the header: {', '.join(sorted(duplicates))}"[:300])
    missing = [c for c in dialect.required if c not in seen]
    if missing:
        raise ContentError(
            "csv.missing_column",
            f"required column(s) of {dialect.name} missing: {', '.join(missing)}{_hint(header)}"[:1000],
            field=missing[0],
        )
    return columns, dialect


def _first_row(reader: Iterator[list[str]], lines: _Lines) -> list[str] | None:
    """The first row that is not blank (the header); None when the body has none."""
    while True:
        lines.row_bytes = 0
        try:
            row = next(reader, None)
        except _csv.Error as exc:
            raise ContentError("csv.parse", f"the header row cannot be read: {exc}") from None
        except _RowTooLong:
            raise ContentError("csv.row_too_long",
                               f"the header row (or a blank row before it) is longer than {MAX_ROW_BYTES:,} bytes"
                               ) from None
        if row is None or any(cell.strip() for cell in row):
            return row


def _hint(header: list[str]) -> str:
    """Why a header that misses columns may have been misread: one hint for the report, not an error per row."""
    if len(header) == 1:
        for separator, name in _SEPARATOR_HINTS:
            if separator in header[0]:
                return f" (the header looks {name}-separated; use commas)"
    if any(len(name) > 2 and name.strip()[:1] == '"' == name.strip()[-1:] for name in header):
        return " (quoted names follow a space after the comma: a quote must come right after the comma)"
    return ""


def _dialect(names: set[str]) -> _Dialect:
    """The minimal CSV when its required columns are all there, else SimpleReport's when the header looks like it."""
    if names >= _REQUIRED_SET or not simplereport.recognises(names):
        return MINIMAL
    return SIMPLEREPORT


def _row(row: list[str], columns: list[str], dialect: _Dialect, index: int, line: int, report_id: str) -> ItemResult:
    surplus = len(row) - len(columns)
    if dialect.whole_rows:
        if surplus == 1 and not row[-1].strip():
            surplus = 0  # one trailing comma, which SimpleReport's reader allows
        if surplus:
            message = f"line {line}: the row has {len(row)} cells where the header has {len(columns)}"
            return _failed(index, "csv.column_count", message)
    known = dialect.known
    values = {name: cell.strip() for name, cell in zip(columns, row, strict=False) if name in known}
    result = dialect.row(values, index, line, report_id)
    if surplus > 0:
        message = f"line {line}: {surplus} cell(s) beyond the header were ignored"
        result.warnings.append(_issue(index, None, "csv.extra_cells", message))
    return result


def _minimal_row(values: Mapping[str, str], index: int, line: int, report_id: str) -> ItemResult:
    """A row of the project's own CSV: ISO 8601 dates, ELR core column names."""
    result = ItemResult(index=index, item=None)
    for name in REQUIRED:
        if not values.get(name):
            result.errors.append(_issue(index, name, "csv.missing_value", f"line {line}: {name} is empty"))
    collected_text = values.get("specimen_collected_at")
    collected = iso_from_text(collected_text) if collected_text else None
    if collected_text and collected is None:
        message = f"line {line}: specimen_collected_at is not an ISO 8601 date or date-time"
        result.errors.append(_issue(index, "specimen_collected_at", "csv.bad_date", message))
    birth_date = values.get("patient_birth_date") or None
    if birth_date and (len(birth_date) != 10 or iso_from_text(birth_date) != birth_date):
        message = f"line {line}: patient_birth_date is not YYYY-MM-DD"
        result.errors.append(_issue(index, "patient_birth_date", "csv.bad_date", message))
    if result.errors:
        return result
    value, result_code, result_text = codes.result_values(values["result"])
    test: _Test = {
        "test_code": values["test_code"],
        "test_name": values.get("test_name") or None,
        "result": value,
        "result_code": result_code,
        "result_text": result_text,
        "result_units": values.get("result_units") or None,
    }
    # Optional columns are usually absent: look codes up only for values that are there (this runs per row).
    sex, race, ethnicity = values.get("patient_sex"), values.get("patient_race"), values.get("patient_ethnicity")
    specimen = values.get("specimen_type_code")
    result.item = NormalisedItem(
        report_id=report_id,
        item_index=index,
        source_format="csv",
        message_id=values.get("message_id") or f"{report_id}-{index}",
        patient_id=values["patient_id"],
        patient_birth_date=birth_date,
        patient_sex=codes.sex(sex) if sex else None,
        patient_race=codes.coded_or_text(codes.RACE, race) if race else None,
        patient_ethnicity=codes.coded_or_text(codes.ETHNICITY, ethnicity) if ethnicity else None,
        patient_postal_code=values.get("patient_postal_code") or None,
        patient_state=values.get("patient_state") or None,
        **test,
        specimen_collected_at=collected,
        specimen_type_code=codes.specimen_type(specimen) if specimen else None,
        performing_lab_clia=values.get("performing_lab_clia") or None,
        ordering_provider_npi=values.get("ordering_provider_npi") or None,
        observations=[Observation(**test)],
    )
    return result


class _Test(TypedDict):
    """The first result's fields, which are both the item's top-level test fields and its one Observation."""

    test_code: str
    test_name: str | None
    result: str
    result_code: str | None
    result_text: str | None
    result_units: str | None


MINIMAL = _Dialect("the minimal CSV", _KNOWN, REQUIRED, _minimal_row, whole_rows=False)
SIMPLEREPORT = _Dialect(
    "a SimpleReport bulk upload", simplereport.NAMES, simplereport.REQUIRED, simplereport.row, whole_rows=True
)


def _failed(index: int, code: str, message: str) -> ItemResult:
    return ItemResult(index=index, item=None, errors=[_issue(index, None, code, message)])

