"""Date/time normalisation shared by the format parsers: everything leaves as ISO 8601 text."""

from __future__ import annotations

import re
from datetime import date, datetime

# HL7 DTM: YYYYMMDD[HH[MM[SS[.S[S[S[S]]]]]]][+/-ZZZZ]. Year- or month-only precision is legal HL7 but useless as a
# collection time, so a day is the minimum we accept.
_DTM = re.compile(
    r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?(?:([+-])(\d{2})(\d{2}))?"
)
_ISO_YEAR_OR_MONTH = re.compile(r"[0-9]{4}(-[0-9]{2})?")


def iso_from_text(text: str) -> str | None:
    """Normalise an ISO 8601 date or date-time (any form Python accepts) to canonical ISO text, else None."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if len(text) <= 10:  # a date has at most 10 characters; trying it first on a date-time costs an exception per row
        try:
            return date.fromisoformat(text).isoformat()
        except ValueError:
            pass
    try:
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        return None


def iso_from_hl7(text: str) -> str | None:
    """Convert an HL7 DTM value to ISO 8601 (date only if the DTM has no time), else None."""
    match = _DTM.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, sign, tz_h, tz_m = match.groups()
    try:
        if hour is None:
            if sign is not None:
                return None  # a UTC offset on a bare date has no meaning
            return date(int(year), int(month), int(day)).isoformat()
        micro = int((frac or "0").ljust(6, "0"))
        value = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0), micro)
    except ValueError:
        return None
    if sign is None:
        return value.isoformat()
    # The offset is written as Python's isoformat() writes a timezone (no timezone object needed: this runs per
    # message): -0000 reads as +00:00, and an offset must stay under a day.
    if int(tz_h) > 23 or int(tz_m) > 59:
        return None
    return value.isoformat() + ("+00:00" if tz_h == tz_m == "00" else f"{sign}{tz_h}:{tz_m}")


def date_from_hl7(text: str) -> str | None:
    """The date part (YYYYMMDD) of an HL7 DT/DTM as YYYY-MM-DD, whatever precision of time follows; else None."""
    if len(text) < 8 or not text[:8].isdigit() or (len(text) > 8 and iso_from_hl7(text) is None):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8])).isoformat()
    except ValueError:
        return None


def hl7_year_or_month(text: str) -> bool:
    """A legal HL7 DT/DTM of year or month precision only (`2024`, `202401`; `0000` is how de-identified feeds blank
    a date): no date, and not to be guessed into one."""
    return text.isdigit() and len(text) in (4, 6)


def iso_year_or_month(text: str) -> bool:
    """A legal FHIR date of year or year-month precision only (`2024`, `2024-01`): no date, as for HL7."""
    return _ISO_YEAR_OR_MONTH.fullmatch(text) is not None
