"""CSV reports: a header row naming the columns (any order), then one item per data row, streamed line by line.

The header says which CSV it is: SimpleReport's bulk upload (shared/formats/simplereport.py) or the project's own
minimal CSV (below). Reading, encodings and syntax errors are the same for both.
"""

from __future__ import annotations

import csv as _csv
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from shared.formats import ContentError, ItemResult, codes, simplereport
from shared.formats._dates import iso_from_text
from shared.models import Issue, NormalisedItem, Observation

REQUIRED = ("patient_id", "test_code", "result", "specimen_collected_at")
# The minimal CSV's optional columns are the ELR core fields of the same name; values go through the code sets.
OPTIONAL = (
    "message_id", "patient_birth_date", "patient_sex", "patient_race", "patient_ethnicity", "patient_postal_code",
    "patient_state", "test_name", "result_units", "specimen_type_code", "performing_lab_clia", "ordering_provider_npi",
)
_KNOWN = frozenset(REQUIRED + OPTIONAL)
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


class _Lines:
    """Decode the body one physical line at a time (no second copy of it) and remember lines that were not UTF-8."""

    def __init__(self, raw: bytes) -> None:
        self._matches = _LINE.finditer(raw, len(_UTF8_BOM) if raw.startswith(_UTF8_BOM) else 0)
        self.count = 0
        self._bad: int | None = None

    def take_bad(self) -> int | None:
        """The first non-UTF-8 line read since the last call, if any (lines are read strictly in order)."""
        bad, self._bad = self._bad, None
        return bad

    def __iter__(self) -> Iterator[str]:
        for match in self._matches:
            self.count += 1
            line = match.group()
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                if self._bad is None:
                    self._bad = self.count
                yield line.decode("utf-8", errors="replace")


def parse(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """Yield one ItemResult per non-blank data row; a missing required column rejects the whole report."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ContentError("csv.encoding", "the CSV is UTF-16; send it as UTF-8")
    lines = _Lines(raw)
    # strict: a stray quote ("b"c) is reported as csv.parse instead of silently merging cells.
    reader = _csv.reader(iter(lines), strict=True)
    found = _header(reader, lines)
    if found is None:
        return  # empty body or blank lines only: no items
    columns, dialect = found
    index = 0
    while True:
        first_line = lines.count + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except _csv.Error as exc:
            # csv's messages describe the syntax problem, never the cell contents.
            lines.take_bad()
            yield _failed(index, "csv.parse", f"lines {first_line}-{lines.count}: {exc}")
            index += 1
            continue
        if not "".join(row).strip():
            lines.take_bad()
            continue  # blank lines and ",,,," rows spreadsheets leave behind are not data
        bad = lines.take_bad()
        if bad is not None:
            yield _failed(index, "csv.encoding", f"line {bad} is not valid UTF-8")
        else:
            yield _row(row, columns, dialect, index, first_line, report_id)
        index += 1


def _header(reader: Iterator[list[str]], lines: _Lines) -> tuple[list[str], _Dialect] | None:
    """Read the header (skipping leading blank lines) and check the required columns are there, once each."""
    try:
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    except _csv.Error as exc:
        raise ContentError("csv.parse", f"the header row cannot be read: {exc}") from None
    if header is None:
        return None
    if lines.take_bad() is not None:
        raise ContentError("csv.encoding", "the header row is not valid UTF-8")
    # Matching is case-insensitive and ignores surrounding spaces: "Patient_ID " is the patient_id column.
    lowered = [name.strip().lower() for name in header]
    dialect = _dialect(lowered)
    columns = [low if low in dialect.known else name.strip() for name, low in zip(header, lowered)]
    named = [c for c in columns if c]
    duplicates = sorted({c for c in named if named.count(c) > 1})
    if duplicates:
        raise ContentError("csv.duplicate_column", f"duplicate column(s) in the header: {', '.join(duplicates)}"[:300])
    missing = [c for c in dialect.required if c not in columns]
    if missing:
        hint = " (the header looks semicolon-separated; use commas)" if len(header) == 1 and ";" in header[0] else ""
        raise ContentError(
            "csv.missing_column",
            f"required column(s) of {dialect.name} missing: {', '.join(missing)}{hint}"[:1000],
            field=missing[0],
        )
    return columns, dialect


def _dialect(columns: list[str]) -> _Dialect:
    """The minimal CSV when its required columns are all there, else SimpleReport's when the header looks like it."""
    if all(name in columns for name in REQUIRED) or not simplereport.recognises(columns):
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
    values = {name: cell.strip() for name, cell in zip(columns, row) if name in known}
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
    test = {
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


MINIMAL = _Dialect("the minimal CSV", _KNOWN, REQUIRED, _minimal_row, whole_rows=False)
SIMPLEREPORT = _Dialect(
    "a SimpleReport bulk upload", simplereport.NAMES, simplereport.REQUIRED, simplereport.row, whole_rows=True
)


def _failed(index: int, code: str, message: str) -> ItemResult:
    return ItemResult(index=index, item=None, errors=[_issue(index, None, code, message)])


def _issue(index: int, field: str | None, code: str, message: str) -> Issue:
    return Issue(scope="item", index=index, field=field, code=code, message=message)
