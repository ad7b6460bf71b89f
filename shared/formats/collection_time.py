"""The specimen collection time's fallback rule, one for HL7 v2 and FHIR: the first full date among the fields given."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from shared.formats.items import item_issue
from shared.models import Issue


@dataclass(frozen=True)
class DateSyntax:
    """How one format writes a date/time, and the codes of the issues about it."""

    to_iso: Callable[[str], str | None]  # ISO 8601 text, None when the value is no date/time of the format
    year_or_month: Callable[[str], bool]  # a legal value of year or month precision only
    bad_code: str
    bad_text: str  # follows the field's name: "is not ..."
    imprecise_code: str


class Collected(NamedTuple):
    value: str | None
    error: Issue | None
    warning: Issue | None


def collected_at(candidates: Iterable[tuple[str, str]], syntax: DateSyntax, index: int) -> Collected:
    """The first candidate (field name, value) with a value, as ISO 8601, with an error and a warning; null when
    none is given, and an error when the value is no date/time at all.

    Both formats list the ELR guide's fallbacks in order (HL7's SPM-17, OBR-7, OBX-14, and FHIR's elements mapped to
    and from them). A value of year or month precision only (`0000` is how de-identified feeds blank these) is not a
    date/time: the next candidate is tried, and when none has one the value is null with a warning naming the first
    such field, never a date made up from the year."""
    imprecise: str | None = None
    for field, value in candidates:
        if not value:
            continue
        if syntax.year_or_month(value):
            imprecise = imprecise or field
            continue
        converted = syntax.to_iso(value)
        if converted is None:
            return Collected(None, item_issue(index, field, syntax.bad_code, f"{field} {syntax.bad_text}"), None)
        return Collected(converted, None, None)
    if imprecise is not None:
        return Collected(None, None, item_issue(
            index, imprecise, syntax.imprecise_code,
            f"{imprecise} gives only a year or month, not a date: specimen_collected_at is null"))
    return Collected(None, None, None)
