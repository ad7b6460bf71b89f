"""Azure Table limits for the status row: every property at most 64 KiB, the entity at most 1 MiB.

Azure refuses a write that breaks them (Azurite does not), and a refused write could leave a report unable to
reach a terminal status, so the lists that grow (`errors`, `warnings`, `exceptions`) are capped by count and by
size before every write, and the whole entity is checked.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

MAX_PROPERTY_BYTES = 64 * 1024  # a string property: 32 K UTF-16 code units
MAX_ENTITY_BYTES = 1024 * 1024
# Each list gets a share well under one property, so the three together stay far below the entity limit.
LIST_BUDGET_BYTES = 48 * 1024
MAX_TEXT_CHARS = 500  # one string inside a listed issue or exception (a field path, a message)

MAX_LISTED_ISSUES = 100
ISSUES_TRUNCATED = "report.issues_truncated"
MAX_LISTED_EXCEPTIONS = 50
EXCEPTIONS_OMITTED = "ExceptionsOmitted"
_COUNT = re.compile(r"^(\d+) ")


class RowTooLarge(ValueError):
    """A row that Azure Table storage would refuse; a bug, since every growing list is capped."""


def utf16_bytes(text: str) -> int:
    """Azure stores strings as UTF-16: this is what counts against the 64 KiB property limit."""
    return len(text.encode("utf-16-le", "surrogatepass"))


def json_bytes(value: object) -> int:
    return utf16_bytes(json.dumps(value, separators=(",", ":")))


def _clip(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v[:MAX_TEXT_CHARS] if isinstance(v, str) else v for k, v in entry.items()}


def omitted(marker: dict[str, Any] | None) -> int:
    """How many issues a truncation marker says were left out (0 for anything else)."""
    match = _COUNT.match(str((marker or {}).get("message", "")))
    return int(match.group(1)) if match else 0


def issues_marker(left_out: int) -> dict[str, Any]:
    return {"scope": "report", "index": None, "field": None, "code": ISSUES_TRUNCATED,
            "message": f"{left_out} more not listed"}


def fit_issues(issues: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first issues that fit MAX_LISTED_ISSUES and LIST_BUDGET_BYTES, then one marker counting the rest."""
    left_out = 0
    if issues and issues[-1].get("code") == ISSUES_TRUNCATED:
        left_out, issues = omitted(issues[-1]), issues[:-1]
    kept: list[dict[str, Any]] = []
    size = json_bytes(issues_marker(10**9))  # room for the marker, whatever its count
    for issue in issues:
        issue = _clip(issue)
        size += json_bytes(issue) + 2
        if len(kept) >= MAX_LISTED_ISSUES or size > LIST_BUDGET_BYTES:
            break
        kept.append(issue)
    left_out += len(issues) - len(kept)
    return kept + [issues_marker(left_out)] if left_out else kept


def fit_exceptions(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the first try and the latest ones within MAX_LISTED_EXCEPTIONS and LIST_BUDGET_BYTES; the tries
    between are replaced by one marker that counts them (and names the first one left out)."""
    entries = [_clip(e) for e in entries]
    if len(entries) < 2:
        return entries
    first, rest = entries[0], entries[1:]
    marker = rest.pop(0) if rest[0].get("type") == EXCEPTIONS_OMITTED else None
    left, since = omitted(marker), marker

    def listed() -> list[dict[str, Any]]:
        if not left or since is None:
            return [first, *rest]
        shown = {"attempt": since.get("attempt", 0), "at": since.get("at", ""), "type": EXCEPTIONS_OMITTED,
                 "message": f"{left} more tries not listed"}
        return [first, shown, *rest]

    while len(rest) > 1 and (len(listed()) > MAX_LISTED_EXCEPTIONS or json_bytes(listed()) > LIST_BUDGET_BYTES):
        dropped = rest.pop(0)
        left, since = left + 1, since or dropped
    return listed()


FITTERS = {"errors": fit_issues, "warnings": fit_issues, "exceptions": fit_exceptions}


def fit(name: str, value: object) -> object:
    """The value of property `name` capped to its share of the row (lists that grow); others unchanged."""
    fitter = FITTERS.get(name)
    return fitter(value) if fitter is not None and isinstance(value, list) else value


def property_bytes(value: object) -> int:
    """Size of one property value as Azure counts it (strings UTF-16 with a 4-byte length)."""
    if isinstance(value, str):
        return 4 + utf16_bytes(value)
    if isinstance(value, bytes):
        return 4 + len(value)
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, datetime)):
        return 8
    return 4 + utf16_bytes(str(value))


def entity_bytes(entity: dict[str, Any]) -> int:
    """Azure's size formula: 4 + keys + per property 8 + 2 x name length + value size."""
    size = 4
    for name, value in entity.items():
        if value is None:
            continue
        size += 8 + 2 * len(name) + property_bytes(value)
    return size


def check(entity: dict[str, Any]) -> None:
    """Raise RowTooLarge if Azure would refuse `entity` (every property and the whole)."""
    for name, value in entity.items():
        if isinstance(value, (str, bytes)) and property_bytes(value) - 4 > MAX_PROPERTY_BYTES:
            raise RowTooLarge(f"property {name} is {property_bytes(value) - 4} bytes; Azure allows {MAX_PROPERTY_BYTES}")
    total = entity_bytes(entity)
    if total > MAX_ENTITY_BYTES:
        raise RowTooLarge(f"the row is {total} bytes; Azure allows {MAX_ENTITY_BYTES}")
