"""SimpleReport's bulk results upload CSV (ReportStream's `upload-covid-19`): its columns, value rules and ELR mapping.

The rules follow SimpleReport's own validator (TestResultRow, CsvValidatorUtils, the upload guide); docs/formats.md
lists each column and where this service departs from SimpleReport, and why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from functools import cache
from typing import TypedDict
from zoneinfo import ZoneInfo, available_timezones

from shared.formats import codes
from shared.formats._dates import iso_from_text
from shared.formats.items import ItemResult
from shared.formats.items import item_issue as _issue
from shared.models import NormalisedItem, Observation

_ZIP = re.compile(r"[0-9]{5}(?:-[0-9]{4})?")
_PHONE = re.compile(r"[1-9][0-9]{2}-[0-9]{3}-[0-9]{4}")
_EMAIL = re.compile(r"[\w.-]+@(?:[\w-]+\.)+[\w-]{2,4}", re.ASCII)
_CLIA = re.compile(r"[A-Za-z0-9]{2}[Dd][A-Za-z0-9]{7}")
# LOINC: up to 7 digits, a hyphen, the check digit (LOINC's LA/LL/LP identifiers too: SimpleReport's own samples send
# one). SimpleReport checks test_performed_code against its device list instead, which this service does not have;
# the shape is the part of that check it can make.
_LOINC = re.compile(r"(?:L[A-Z])?[0-9]{1,7}-[0-9]")
_SNOMED = re.compile(r"[0-9]{9}|[0-9]{15}")
# M/D/YYYY, one or two digits for month and day; a time is H:mm, then optionally one time zone word.
_DATE = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_DATE_TIME = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})(?: ([0-9]{1,2}):([0-9]{2})(?: (\S+))?)?")

# US states and territories ("NA" is SimpleReport's "unknown / outside the US") and Canadian provinces.
_STATES = frozenset(
    ["AK", "AL", "AR", "AS", "AZ", "CA", "CO", "CT", "DC", "DE", "FL", "FM", "GA", "GU", "HI", "IA", "ID", "IL", "IN", "KS", "KY", "LA", "MA", "MD", "ME", "MH", "MI", "MN", "MO", "MP", "MS", "MT", "NC", "ND", "NE", "NH", "NJ", "NM", "NV", "NY", "OH", "OK", "OR", "PA", "PR", "PW", "RI", "SC", "SD", "TN", "TX", "UT", "VA", "VI", "VT", "WA", "WI", "WV", "WY", "NA", "AB", "BC", "MB", "NB", "NL", "NT", "NS", "NU", "ON", "PE", "QC", "SK", "YT"]
)
# Time zone words SimpleReport accepts after a time, besides IANA zone ids (America/Chicago, US/Eastern, ...).
# A standard or daylight abbreviation is that fixed offset (Arizona writes MST all year; SimpleReport would read a
# June "MST" as MDT); a region word (ET, CT, ...) follows its region's daylight saving time.
_ZONE_WORDS: dict[str, str | int] = {
    "UTC": 0, "UT": 0, "GMT": 0, "Z": 0,
    "EST": -5, "EDT": -4, "CST": -6, "CDT": -5, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
    "AKST": -9, "AKDT": -8, "HST": -10, "HDT": -9, "SST": -11, "AST": -4, "ADT": -3,
    "ET": "US/Eastern", "CT": "US/Central", "MT": "US/Mountain", "PT": "US/Pacific",
    "AK": "US/Alaska", "HI": "US/Hawaii", "AS": "US/Samoa", "ASM": "US/Samoa",
}
_YES_NO_UNKNOWN = frozenset({"y", "yes", "n", "no", "u", "unk"})
# Results SimpleReport takes by name; any code of its result list (codes.RESULTS) is taken too.
_RESULT_NAMES = frozenset({"positive", "negative", "detected", "not detected", "invalid result"})
_RACE_VALUES = frozenset({
    "1002-5", "american indian or alaska native", "2028-9", "asian", "2054-5", "black or african american",
    "2076-8", "native hawaiian or other pacific islander", "2106-3", "white", "2131-1", "other",
    "asku", "ask, but unknown", "unk", "unknown",
})
_ETHNICITY_VALUES = frozenset({"2135-2", "hispanic or latino", "2186-5", "not hispanic or latino", "unk", "unknown"})
_GENDER_IDENTITIES = frozenset({
    "F", "FEMALE", "M", "MALE", "NB", "NON BINARY", "NONBINARY", "TM", "TRANS MAN", "TW", "TRANS WOMAN",
    "O", "OTHER", "R", "REFUSED",
})
_RESULT_STATUSES = frozenset({"f", "c"})


def _calendar_date(month: str, day: str, year: str) -> date | None:
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None  # 2/30: SimpleReport's parser would move it to 2/28; a wrong date is not ours to correct


def iso_date(text: str) -> str | None:
    """`M/D/YYYY` (or ISO `YYYY-MM-DD`, as ReportStream takes it) -> `YYYY-MM-DD`; None when it is neither."""
    match = _DATE.fullmatch(text)
    if match is None:
        iso = iso_from_text(text) if len(text) == 10 else None
        return iso if iso is not None and len(iso) == 10 else None
    found = _calendar_date(*match.groups())
    return found.isoformat() if found is not None else None


def iso_date_time(text: str) -> str | None:
    """`M/D/YYYY[ H:mm[ ZONE]]` (or ISO 8601, as ReportStream takes it) -> ISO 8601; None when it is neither.

    A zone word resolves to its UTC offset at that time; no zone gives no offset (SimpleReport would guess one from
    the provider's address); no time gives a date (SimpleReport would say noon).
    """
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        return iso_from_text(text) if text[:4].isdigit() else None
    month, day, year, hour, minute, zone = match.groups()
    found = _calendar_date(month, day, year)
    if found is None:
        return None
    if hour is None:
        return found.isoformat()
    if int(hour) > 23 or int(minute) > 59:
        return None
    offset = None
    if zone is not None:
        offset = _zone(zone)
        if offset is None:
            return None
    return datetime(found.year, found.month, found.day, int(hour), int(minute), tzinfo=offset).isoformat()


def _zone(word: str) -> tzinfo | None:
    known = _ZONE_WORDS.get(word.upper())
    if isinstance(known, int):
        return timezone(timedelta(hours=known))
    if known is None and word in _zone_ids():
        known = word
    return ZoneInfo(known) if known is not None else None


@cache
def _zone_ids() -> frozenset[str]:
    return frozenset(available_timezones())


def _specimen_code(value: str) -> str | None:
    """A SNOMED CT code (9 or 15 digits, as SimpleReport checks), or a specimen name SimpleReport or the ELR set
    knows; None otherwise."""
    if value.isdigit():
        return value if _SNOMED.fullmatch(value) else None
    return codes.SIMPLEREPORT_SPECIMEN_NAMES.get(value.lower()) or codes.SPECIMEN_TYPES.code(value)


def _genders(value: str) -> bool:
    return all(part.strip().upper() in _GENDER_IDENTITIES for part in value.split(","))


@dataclass(frozen=True)
class Column:
    """One SimpleReport column: whether a value is required, and what an acceptable value looks like."""

    name: str
    required: bool = False
    check: Callable[[str], object] | None = None  # truthy for an acceptable (stripped, non-empty) value
    expected: str = ""  # completes "<column> is not ...": what the value should have been
    code: str = "csv.invalid_value"


def _in(values: frozenset[str]) -> Callable[[str], bool]:
    return lambda value: value.lower() in values


def _matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda value: pattern.fullmatch(value) is not None


class _Rule(TypedDict, total=False):
    """A value rule several columns share, spread into Column(...)."""

    check: Callable[[str], object]
    expected: str
    code: str


_state = _Rule(check=_in(frozenset(s.lower() for s in _STATES)), expected="a two-letter US state or Canadian province")
_zip = _Rule(check=_matches(_ZIP), expected="a 5 or 9 digit ZIP code (12345 or 12345-6789)")
_phone = _Rule(check=_matches(_PHONE), expected="a phone number written 000-000-0000")
_date = _Rule(check=iso_date, expected="a date written M/D/YYYY", code="csv.bad_date")
_date_time = _Rule(
    check=iso_date_time, expected="a date written M/D/YYYY, optionally with H:mm and a time zone", code="csv.bad_date"
)
_yes_no = _Rule(check=_in(_YES_NO_UNKNOWN), expected="Y, YES, N, NO, U or UNK")
_loinc = _Rule(check=_matches(_LOINC), expected="a LOINC code (00000-0)")

# In SimpleReport's order (TestResultRow), which is also the order of errors within a row.
COLUMNS: tuple[Column, ...] = (
    Column("patient_id"),
    Column("patient_last_name", True),
    Column("patient_first_name", True),
    Column("patient_middle_name"),
    Column("patient_street", True),
    Column("patient_street2"),
    Column("patient_city", True),
    Column("patient_state", True, **_state),
    Column("patient_zip_code", True, **_zip),
    Column("patient_county", True),
    Column("patient_phone_number", True, **_phone),
    Column("patient_dob", True, **_date),
    Column("patient_gender"),  # sex; a value SimpleReport does not know is a warning (it records "unknown")
    Column("patient_sex"),  # newer name of the same column; wins when both are given
    Column("patient_race", True, _in(_RACE_VALUES), "a race name or code from the upload guide"),
    Column("patient_ethnicity", True, _in(_ETHNICITY_VALUES), "an ethnicity name or code from the upload guide"),
    Column("patient_preferred_language"),
    Column("patient_email", check=_matches(_EMAIL), expected="an email address"),
    Column("accession_number", True),
    Column("equipment_model_name", True),
    Column("test_performed_code", True, **_loinc),
    Column("test_performed_name"),  # ReportStream's upload-covid-19 column; SimpleReport looks the name up instead
    Column(
        "test_result",
        True,
        lambda v: v.lower() in _RESULT_NAMES or v in codes.RESULTS.names,
        "Positive, Negative, Detected, Not Detected, Invalid Result or a result SNOMED CT code",
    ),
    Column("order_test_date", True, **_date_time),
    Column("specimen_collection_date", **_date_time),
    Column("testing_lab_specimen_received_date", **_date_time),
    Column("test_result_date", True, **_date_time),
    Column("date_result_released", **_date_time),
    Column("specimen_type", True, _specimen_code, "a specimen SNOMED CT code (9 or 15 digits) or specimen name"),
    Column("ordering_provider_id", True),
    Column("ordering_provider_last_name", True),
    Column("ordering_provider_first_name", True),
    Column("ordering_provider_middle_name"),
    Column("ordering_provider_street", True),
    Column("ordering_provider_street2"),
    Column("ordering_provider_city", True),
    Column("ordering_provider_state", True, **_state),
    Column("ordering_provider_zip_code", True, **_zip),
    Column("ordering_provider_phone_number", True, **_phone),
    Column("testing_lab_clia", True, _matches(_CLIA), "a CLIA number (10 characters, the third a D)"),
    Column("testing_lab_name", True),
    Column("testing_lab_street", True),
    Column("testing_lab_street2"),
    Column("testing_lab_city", True),
    Column("testing_lab_state", True, **_state),
    Column("testing_lab_zip_code", True, **_zip),
    Column("testing_lab_phone_number", **_phone),
    Column("pregnant", **_yes_no),
    Column("employed_in_healthcare", **_yes_no),
    Column("symptomatic_for_disease", **_yes_no),
    Column("illness_onset_date", **_date),
    Column("resident_congregate_setting", **_yes_no),
    Column("residence_type", check=codes.RESIDENCE_TYPES.code, expected="a residence type name or SNOMED CT code"),
    Column("hospitalized", **_yes_no),
    Column("icu", **_yes_no),
    Column("ordering_facility_name"),
    Column("ordering_facility_street"),
    Column("ordering_facility_street2"),
    Column("ordering_facility_city"),
    Column("ordering_facility_state", **_state),
    Column("ordering_facility_zip_code", **_zip),
    Column("ordering_facility_phone_number", **_phone),
    Column("comment"),
    Column("test_result_status", check=_in(_RESULT_STATUSES), expected="F or C"),
    Column("test_ordered_code", **_loinc),
    Column("test_kit_name_id"),
    Column("equipment_model_id"),
    Column("genders_of_sexual_partners", check=_genders, expected="a comma-separated list of M, F, TM, TW, NB, O, R"),
    Column("syphilis_history", **_yes_no),
    Column(
        "patient_gender_identity", check=lambda v: v.upper() in _GENDER_IDENTITIES, expected="M, F, TM, TW, NB, O or R"
    ),
)
NAMES = frozenset(column.name for column in COLUMNS)
REQUIRED = tuple(column.name for column in COLUMNS if column.required)
# Columns only this format has: one of them in a header makes the CSV a SimpleReport upload.
_DISTINCTIVE = frozenset({"test_result", "test_performed_code", "accession_number", "patient_last_name",
                          "equipment_model_name", "order_test_date", "testing_lab_clia", "patient_dob"})


def recognises(columns: Collection[str]) -> bool:
    """Whether a header (lower-cased, trimmed names) is a SimpleReport upload's."""
    return not _DISTINCTIVE.isdisjoint(columns)


def row(values: Mapping[str, str], index: int, line: int, report_id: str) -> ItemResult:
    """Validate one data row (column -> stripped cell, known columns only) and map it to the ELR core."""
    result = ItemResult(index=index, item=None)
    for column in COLUMNS:
        value = values.get(column.name, "")
        if not value:
            if column.required:
                message = f"line {line}: {column.name} is empty"
                result.errors.append(_issue(index, column.name, "csv.missing_value", message))
        elif column.check is not None and not column.check(value):
            message = f"line {line}: {column.name} is not {column.expected}"
            result.errors.append(_issue(index, column.name, column.code, message))
    sex_column = "patient_sex" if values.get("patient_sex") else "patient_gender"
    sex = codes.sex(values.get(sex_column))
    if values.get(sex_column) and sex is None:
        message = f"line {line}: {sex_column} is not Male, Female, M, F or Unknown; patient_sex left empty"
        result.warnings.append(_issue(index, sex_column, "csv.ignored_value", message))
    if not result.errors:
        result.item = _item(values, index, report_id, sex)
    return result


def _item(values: Mapping[str, str], index: int, report_id: str, sex: codes.Sex | None) -> NormalisedItem:
    result, result_code, result_text = codes.result_values(values["test_result"])
    observation = Observation(
        test_code=values["test_performed_code"],
        test_name=values.get("test_performed_name") or None,
        result=result,
        result_code=result_code,
        result_text=result_text,
    )
    # SimpleReport and ReportStream both take the order date as the collection date when none is given.
    collected = values.get("specimen_collection_date") or values["order_test_date"]
    provider = values["ordering_provider_id"]
    return NormalisedItem(
        report_id=report_id,
        item_index=index,
        source_format="csv",
        message_id=values["accession_number"],
        patient_id=values.get("patient_id") or None,
        patient_birth_date=iso_date(values["patient_dob"]),
        patient_sex=sex,
        patient_race=codes.RACE.code(values["patient_race"]),
        patient_ethnicity=codes.ETHNICITY.code(values["patient_ethnicity"]),
        patient_postal_code=values["patient_zip_code"],
        patient_state=values["patient_state"].upper(),
        **observation.model_dump(),
        specimen_collected_at=iso_date_time(collected),
        specimen_type_code=_specimen_code(values["specimen_type"]),
        performing_lab_clia=values["testing_lab_clia"],
        # The column holds an NPI or a local code; only an NPI (10 digits) is one.
        ordering_provider_npi=provider if codes.NPI.fullmatch(provider) else None,
        observations=[observation],
    )

