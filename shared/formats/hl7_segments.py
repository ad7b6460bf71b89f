"""HL7 v2 as text: messages split out of a body or FHS/BHS batch, segments into fields, values read and unescaped.

The splitting is done here rather than with `hl7`/`hl7apy` (see docs/formats.md: speed and PHI-safe errors).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

# Any run of bytes between CR/LF characters is a segment, so \r, \n and \r\n all work and blank lines vanish.
_LINE = re.compile(rb"[^\r\n]+")
_HAS_MSH = re.compile(rb"(?:\A|[\r\n])[ \t\x0b]*(?:\xef\xbb\xbf)?MSH")
_UTF8_BOM = b"\xef\xbb\xbf"
# MLLP framing bytes (VT, FS) and stray spaces sometimes survive in files exported from interface engines.
_FRAMING = b" \t\x0b\x1c"
_BATCH_SEGMENTS = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_DEFAULT_ENCODING = "^~\\&"

# Bounds on one message (docs/formats.md, "Limits"). The parser keeps one message in memory: these keep that within
# a fixed size whatever the body's shape.
MAX_SEGMENTS = 10_000  # segments of one message; past it lines are counted, not kept
MAX_FIELDS = 256  # fields of any segment (HL7's largest segments define about 50)
MAX_FIELD_CHARS = 128 * 1024  # one field read, as the csv module bounds a CSV cell
MAX_REPETITIONS = 1_000  # repetitions of one field read
MAX_COMPONENTS = 1_000  # components of one field read, its repetitions together
# Only a field at least this long can break one of the field bounds: shorter ones skip the counting.
_CHECKED_CHARS = min(MAX_REPETITIONS, MAX_COMPONENTS)


class BadMessage(Exception):
    """The message cannot be split at all; carries the issue field and a value-free message."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class Refused(Exception):
    """The message breaks one of the bounds above: it is rejected with `code`, the rest of it unread."""

    def __init__(self, field: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code


@dataclass(frozen=True)
class Separators:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


class RawMessage(NamedTuple):
    """One message's segment lines as sent: the first MAX_SEGMENTS of them, and how many there were in all."""

    lines: list[bytes]
    segments: int
    observations: int  # OBX segments, kept or not


def has_header(raw: bytes) -> bool:
    """Whether an MSH segment starts any line of the body (after MLLP framing or a BOM)."""
    return _HAS_MSH.search(raw) is not None


def _clean(line: bytes) -> bytes:
    """A segment line without MLLP framing, stray blanks or a UTF-8 BOM (file start, or after MLLP framing), which
    must not hide an MSH."""
    line = line.strip(_FRAMING)
    if line.startswith(_UTF8_BOM):
        line = line[len(_UTF8_BOM) :].strip(_FRAMING)
    return line


def first_header(raw: bytes, scan: int = 64 * 1024) -> bytes | None:
    """The first MSH segment, found as the parser finds messages (the HL7 commit acknowledgement answers it)."""
    for match in _LINE.finditer(raw[:scan]):
        line = _clean(match.group())
        if line.startswith(b"MSH") and len(line) > 4:
            return line
    return None


def messages(raw: bytes) -> Iterator[RawMessage]:
    """Group segment lines into messages; batch wrapper segments only end the message before them.

    Lines past MAX_SEGMENTS are counted but not kept, so a message of a million segments costs no more memory than
    one at the bound."""
    current: list[bytes] = []
    count = observations = 0
    for match in _LINE.finditer(raw):
        line = _clean(match.group())
        if not line:
            continue
        head = line[:3]
        if head == b"MSH" or head in _BATCH_SEGMENTS:
            if count:
                yield RawMessage(current, count, observations)
            current, count, observations = ([line], 1, 0) if head == b"MSH" else ([], 0, 0)
        else:
            count += 1
            if head == b"OBX":
                observations += 1
            if count <= MAX_SEGMENTS:
                current.append(line)
    if count:
        yield RawMessage(current, count, observations)


def decode(lines: list[bytes]) -> tuple[list[str], bool]:
    """Decode a message's lines as UTF-8, or all as ISO-8859-1 (which never fails) if any line is not UTF-8; the
    flag says the latter."""
    try:
        return [line.decode("utf-8") for line in lines], False
    except UnicodeDecodeError:
        return [line.decode("latin-1") for line in lines], True


class Message:
    """One message split into segments of fields; values are read through `value()` which decodes escapes.

    Only the segments in `read` are kept, each split up to field `last_field` (the last element holds the unread
    rest, unsplit), so a segment of many fields costs a fixed number of strings. Every other segment is checked
    against MAX_FIELDS only; the field bounds apply to the fields split of the segments kept."""

    def __init__(self, lines: list[str], read: frozenset[str], last_field: int) -> None:
        msh = lines[0]
        if not msh.startswith("MSH"):
            raise BadMessage(None, "segments found outside of a message: the item does not start with MSH")
        self.seps = seps = separators(msh)
        self._repetition, self._component, self._subcomponent, self._escape = (
            seps.repetition, seps.component, seps.subcomponent, seps.escape)
        self._read, self._last_field = read, last_field
        field = seps.field
        self.invalid_lines = 0
        # MSH-1 is the field separator itself, so re-insert it to make field n sit at list index n everywhere.
        self.msh = msh.split(field, last_field)
        self.msh.insert(1, field)
        if len(msh) > MAX_FIELDS:  # only so long a line can break a bound: nearly every line skips the counting
            self._check("MSH", msh, self.msh)
        self._by_id: dict[str, list[list[str]]] = {"MSH": [self.msh]}
        for line in lines[1:]:
            segment_id = line[:3]
            kept = segment_id in read
            if (len(line) > 3 and line[3] != field) or not (kept or _SEGMENT_ID.fullmatch(segment_id)):
                self.invalid_lines += 1
                continue
            # The other segments (NTE, NK1, ...) are checked, not kept: nothing reads them.
            fields = line.split(field, last_field + 1) if kept else None
            if len(line) > MAX_FIELDS:
                self._check(segment_id, line, fields)
            if fields is not None:
                self._by_id.setdefault(segment_id, []).append(fields)

    def _check(self, segment_id: str, line: str, fields: list[str] | None) -> None:
        """Raise Refused when a segment has too many fields, or a field of a segment kept (as far as it is split)
        is too long or has too many repetitions or components."""
        if line.count(self.seps.field) > MAX_FIELDS:
            raise Refused(segment_id, "hl7.too_many_fields", f"a {segment_id} segment has more than {MAX_FIELDS} fields")
        if fields is None or len(line) < _CHECKED_CHARS:
            return
        for number, raw in enumerate(fields[1 : self._last_field + 1], 1):
            if len(raw) < _CHECKED_CHARS:
                continue
            name = f"{segment_id}-{number}"
            if len(raw) > MAX_FIELD_CHARS:
                raise Refused(name, "hl7.field_too_long", f"{name} is longer than {MAX_FIELD_CHARS:,} characters")
            if raw.count(self._repetition) >= MAX_REPETITIONS:
                raise Refused(name, "hl7.too_many_repetitions",
                              f"{name} has more than {MAX_REPETITIONS:,} repetitions")
            if raw.count(self._component) >= MAX_COMPONENTS:
                raise Refused(name, "hl7.too_many_components", f"{name} has more than {MAX_COMPONENTS:,} components")

    def all(self, segment_id: str) -> list[list[str]]:
        found = self._by_id.get(segment_id)
        if found is not None:
            return found
        if segment_id not in self._read:
            raise ValueError(f"{segment_id} segments are not kept: add the id to those read")  # a parser bug
        return []

    def first(self, segment_id: str) -> list[str] | None:
        found = self._by_id.get(segment_id) or self.all(segment_id)
        return found[0] if found else None

    def value(self, segment: list[str] | None, field: int, component: int = 1) -> str:
        """Field n, first repetition, component c, first sub-component, escapes decoded; '' when absent."""
        if segment is None or field >= len(segment):
            return ""
        raw = segment[field]
        if not raw:
            return ""
        # The hottest code of the parser (~30 reads per message): bounded splits only where needed.
        if self._repetition in raw:
            raw = raw.split(self._repetition, 1)[0]
        if component == 1:
            if self._component in raw:
                raw = raw.split(self._component, 1)[0]
        else:
            parts = raw.split(self._component, component)
            if len(parts) < component:
                return ""
            raw = parts[component - 1]
        return self.text(raw)

    def text(self, raw: str) -> str:
        """Unescape one primitive value (first sub-component of a component)."""
        if self._subcomponent not in raw and self._escape not in raw:
            return raw.strip()
        return unescape(raw.split(self._subcomponent, 1)[0], self.seps).strip()


def nth(parts: list[str], n: int) -> str:
    """Component n (from 1) of a split value; '' when absent."""
    return parts[n - 1] if n <= len(parts) else ""


def separators(msh: str) -> Separators:
    """Read MSH-1 and MSH-2; reject sets a parser could not split unambiguously."""
    if len(msh) < 5:
        raise BadMessage("MSH-1", "MSH segment is too short to hold its separators")
    field = msh[3]
    end = msh.find(field, 4)
    encoding = msh[4:end] if end != -1 else msh[4:]
    if not 2 <= len(encoding) <= 5:
        raise BadMessage("MSH-2", "MSH-2 must hold 4 encoding characters")
    # v2.7 adds a truncation character as a 5th one; it needs no handling when reading.
    chars = encoding[:4] + _DEFAULT_ENCODING[len(encoding[:4]) :]
    used = field + chars
    if len(set(used)) != len(used) or any(c.isalnum() or c.isspace() for c in used):
        raise BadMessage("MSH-2", "MSH-1/MSH-2 separators are not distinct punctuation characters")
    return Separators(field, chars[0], chars[1], chars[2], chars[3])


@lru_cache(maxsize=32)
def _escape_pattern(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(f"{e}([^{e}\r\n]*){e}")


def unescape(value: str, seps: Separators) -> str:
    """Decode HL7 escape sequences; unknown ones are kept verbatim rather than silently dropped."""
    if seps.escape not in value:
        return value
    table = {
        "F": seps.field,
        "S": seps.component,
        "T": seps.subcomponent,
        "R": seps.repetition,
        "E": seps.escape,
        "H": "",
        "N": "",
        ".br": "\n",
    }

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in table:
            return table[code]
        if code[:1] == "X" and len(code) % 2 == 1:
            try:
                return bytes.fromhex(code[1:]).decode("latin-1")
            except ValueError:
                pass
        return match.group(0)

    return _escape_pattern(seps.escape).sub(replace, value)
