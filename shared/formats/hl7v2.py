"""HL7 v2 ORU^R01 reports: single messages or FHS/BHS batch files, streamed one message at a time.

The splitting is done here rather than with `hl7`/`hl7apy` (see docs/formats.md: speed and PHI-safe errors).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from shared.formats import ContentError, ItemResult, codes
from shared.formats import item_issue as _issue
from shared.formats._dates import date_from_hl7, iso_from_hl7
from shared.models import Issue, NormalisedItem, Observation

# Any run of bytes between CR/LF characters is a segment, so \r, \n and \r\n all work and blank lines vanish.
_LINE = re.compile(rb"[^\r\n]+")
_HAS_MSH = re.compile(rb"(?:\A|[\r\n])[ \t\x0b]*(?:\xef\xbb\xbf)?MSH")
_UTF8_BOM = b"\xef\xbb\xbf"
# MLLP framing bytes (VT, FS) and stray spaces sometimes survive in files exported from interface engines.
_FRAMING = b" \t\x0b\x1c"
_BATCH_SEGMENTS = frozenset({b"FHS", b"BHS", b"BTS", b"FTS"})
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
_TEXT_TYPES = frozenset({"TX", "FT"})
_ORDER_TYPES = frozenset({"ORM", "OML"})
_DATE_TYPES = frozenset({"DT", "DTM", "TS"})
_DEFAULT_ENCODING = "^~\\&"
# HL7 NM: an optional sign, ASCII digits, an optional decimal point; nothing else. Decimal() and float() would also
# take '1_5', '1e3', 'NaN' and other scripts' digits ('٥'), so the shape is checked here, not left to them.
_NM = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
# SN: comparator ^ number ^ separator/suffix ^ number; the comparator and separator values of HL7's SN definition.
_SN_COMPARATORS = frozenset({"", ">", "<", ">=", "<=", "=", "<>"})
_SN_SEPARATORS = frozenset({"", "-", "+", "/", ".", ":"})

# Bounds on one message (docs/formats.md, "Limits"). The report's 10,000-item cap does not bound what one message
# holds, and the parser keeps one message in memory: these keep that within a fixed size whatever the body's shape.
MAX_SEGMENTS = 10_000  # segments of one message; past it lines are counted, not kept
MAX_OBSERVATIONS = 1_000  # OBX segments of one message (every one can become an Observation)
MAX_FIELDS = 256  # fields of any segment (HL7's largest segments define about 50)
MAX_FIELD_CHARS = 128 * 1024  # one field read, as the csv module bounds a CSV cell
MAX_REPETITIONS = 1_000  # repetitions of one field read
MAX_COMPONENTS = 1_000  # components of one field read, its repetitions together
# Only a field at least this long can break one of the field bounds: shorter ones skip the counting.
_CHECKED_CHARS = min(MAX_REPETITIONS, MAX_COMPONENTS)
# The highest field number read (OBX-29). Segments are split at most this far, so a segment of many fields costs a
# fixed number of strings; the last element holds the unread rest, unsplit. The field bounds apply to fields 1-29
# of the segments read (below), whether or not that field is.
_LAST_FIELD_READ = 29
# The segments read: only they are split into fields. Every other segment is checked against MAX_FIELDS only.
_READ_SEGMENTS = frozenset({"MSH", "PID", "ORC", "OBR", "OBX", "SPM"})


class _BadMessage(Exception):
    """The message cannot be split at all; carries the issue field and a value-free message."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class _Refused(Exception):
    """The message breaks one of the bounds above: it is rejected with `code`, the rest of it unread."""

    def __init__(self, field: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code


@dataclass(frozen=True)
class _Separators:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


def parse(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """Yield one ItemResult per message (or per run of segments outside any message), in order."""
    if not _HAS_MSH.search(raw):
        raise ContentError("hl7.parse", "no MSH segment found: the body is not an HL7 v2 message or batch")
    for index, (lines, segments, observations) in enumerate(_messages(raw)):
        yield _item(lines, segments, observations, index, report_id)


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


def _messages(raw: bytes) -> Iterator[tuple[list[bytes], int, int]]:
    """Group segment lines into messages; batch wrapper segments only end the message before them.

    Yields (lines, segment count, OBX count). Lines past MAX_SEGMENTS are counted but not kept, so a message of a
    million segments costs no more memory than one at the bound."""
    current: list[bytes] = []
    count = observations = 0
    for match in _LINE.finditer(raw):
        line = _clean(match.group())
        if not line:
            continue
        head = line[:3]
        if head == b"MSH" or head in _BATCH_SEGMENTS:
            if count:
                yield current, count, observations
            current, count, observations = ([line], 1, 0) if head == b"MSH" else ([], 0, 0)
        else:
            count += 1
            if head == b"OBX":
                observations += 1
            if count <= MAX_SEGMENTS:
                current.append(line)
    if count:
        yield current, count, observations


def _item(lines: list[bytes], segments: int, observations: int, index: int, report_id: str) -> ItemResult:
    """One message's result. Content problems are permanent, so whatever goes wrong reading it (a parser bug that
    some input reaches) rejects this item alone, naming only the exception's type, and the next item is read."""
    result = ItemResult(index=index, item=None)
    try:
        _read(result, lines, segments, observations, index, report_id)
    except MemoryError:
        raise  # not the content's fault: the report is retried
    except Exception as exc:  # noqa: BLE001 - any other failure is this item's, and its message may hold values
        result.item = None
        result.errors.append(
            _issue(index, None, "hl7.unreadable", f"the message could not be read ({type(exc).__name__})")
        )
    return result


def _read(result: ItemResult, lines: list[bytes], segments: int, observations: int, index: int, report_id: str) -> None:
    """Validate one message and normalise it into `result`, collecting every problem rather than stopping at the
    first (a bound broken stops it: the rest of the message is not read)."""
    if segments > MAX_SEGMENTS:
        result.errors.append(_issue(index, None, "hl7.too_many_segments",
                                    f"the message has more than {MAX_SEGMENTS:,} segments"))
    if observations > MAX_OBSERVATIONS:
        result.errors.append(_issue(index, "OBX", "hl7.too_many_observations",
                                    f"the message has more than {MAX_OBSERVATIONS:,} OBX segments; split it"))
    if result.errors:
        return
    text, recoded = _decode(lines)
    if recoded:
        result.warnings.append(
            _issue(index, None, "hl7.encoding", "message is not valid UTF-8; it was read as ISO-8859-1")
        )
    try:
        message = _Message(text)
    except _BadMessage as exc:
        result.errors.append(_issue(index, exc.field, "hl7.parse", str(exc)))
        return
    except _Refused as exc:
        result.errors.append(_issue(index, exc.field, exc.code, str(exc)))
        return
    if message.invalid_lines:
        result.warnings.append(
            _issue(
                index,
                None,
                "hl7.invalid_segment",
                f"{message.invalid_lines} line(s) without a valid segment id were ignored",
            )
        )
    item, errors = _normalise(message, index, report_id, result.warnings)
    result.errors.extend(errors)
    result.item = item if not errors else None


def _decode(lines: list[bytes]) -> tuple[list[str], bool]:
    """Decode a message's lines as UTF-8, or all as ISO-8859-1 (which never fails) if any line is not UTF-8."""
    try:
        return [line.decode("utf-8") for line in lines], False
    except UnicodeDecodeError:
        return [line.decode("latin-1") for line in lines], True


class _Message:
    """One message split into segments of fields; values are read through `value()` which decodes escapes."""

    def __init__(self, lines: list[str]) -> None:
        msh = lines[0]
        if not msh.startswith("MSH"):
            raise _BadMessage(None, "segments found outside of a message: the item does not start with MSH")
        self.seps = seps = _separators(msh)
        self._repetition, self._component, self._subcomponent, self._escape = (
            seps.repetition, seps.component, seps.subcomponent, seps.escape)
        field = seps.field
        self.invalid_lines = 0
        # MSH-1 is the field separator itself, so re-insert it to make field n sit at list index n everywhere.
        self.msh = msh.split(field, _LAST_FIELD_READ)
        self.msh.insert(1, field)
        if len(msh) > MAX_FIELDS:  # only so long a line can break a bound: nearly every line skips the counting
            self._check("MSH", msh, self.msh)
        self._by_id: dict[str, list[list[str]]] = {"MSH": [self.msh]}
        for line in lines[1:]:
            segment_id = line[:3]
            read = segment_id in _READ_SEGMENTS
            if (len(line) > 3 and line[3] != field) or not (read or _SEGMENT_ID.fullmatch(segment_id)):
                self.invalid_lines += 1
                continue
            # The other segments (NTE, NK1, ...) are checked, not kept: nothing reads them.
            fields = line.split(field, _LAST_FIELD_READ + 1) if read else None
            if len(line) > MAX_FIELDS:
                self._check(segment_id, line, fields)
            if fields is not None:
                self._by_id.setdefault(segment_id, []).append(fields)

    def _check(self, segment_id: str, line: str, fields: list[str] | None) -> None:
        """Raise _Refused when a segment has too many fields, or a field of a segment read (as far as it is split)
        is too long or has too many repetitions or components."""
        if line.count(self.seps.field) > MAX_FIELDS:
            raise _Refused(segment_id, "hl7.too_many_fields", f"a {segment_id} segment has more than {MAX_FIELDS} fields")
        if fields is None or len(line) < _CHECKED_CHARS:
            return
        for number, raw in enumerate(fields[1 : _LAST_FIELD_READ + 1], 1):
            if len(raw) < _CHECKED_CHARS:
                continue
            name = f"{segment_id}-{number}"
            if len(raw) > MAX_FIELD_CHARS:
                raise _Refused(name, "hl7.field_too_long", f"{name} is longer than {MAX_FIELD_CHARS:,} characters")
            if raw.count(self._repetition) >= MAX_REPETITIONS:
                raise _Refused(name, "hl7.too_many_repetitions",
                               f"{name} has more than {MAX_REPETITIONS:,} repetitions")
            if raw.count(self._component) >= MAX_COMPONENTS:
                raise _Refused(name, "hl7.too_many_components", f"{name} has more than {MAX_COMPONENTS:,} components")

    def all(self, segment_id: str) -> list[list[str]]:
        found = self._by_id.get(segment_id)
        if found is not None:
            return found
        if segment_id not in _READ_SEGMENTS:
            raise ValueError(f"{segment_id} segments are not kept: add the id to _READ_SEGMENTS")  # a parser bug
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


def _nth(parts: list[str], n: int) -> str:
    return parts[n - 1] if n <= len(parts) else ""


def _separators(msh: str) -> _Separators:
    """Read MSH-1 and MSH-2; reject sets a parser could not split unambiguously."""
    if len(msh) < 5:
        raise _BadMessage("MSH-1", "MSH segment is too short to hold its separators")
    field = msh[3]
    end = msh.find(field, 4)
    encoding = msh[4:end] if end != -1 else msh[4:]
    if not 2 <= len(encoding) <= 5:
        raise _BadMessage("MSH-2", "MSH-2 must hold 4 encoding characters")
    # v2.7 adds a truncation character as a 5th one; it needs no handling when reading.
    chars = encoding[:4] + _DEFAULT_ENCODING[len(encoding[:4]) :]
    used = field + chars
    if len(set(used)) != len(used) or any(c.isalnum() or c.isspace() for c in used):
        raise _BadMessage("MSH-2", "MSH-1/MSH-2 separators are not distinct punctuation characters")
    return _Separators(field, chars[0], chars[1], chars[2], chars[3])


@lru_cache(maxsize=32)
def _escape_pattern(escape: str) -> re.Pattern[str]:
    e = re.escape(escape)
    return re.compile(f"{e}([^{e}\r\n]*){e}")


def unescape(value: str, seps: _Separators) -> str:
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


def _normalise(
    message: _Message, index: int, report_id: str, warnings: list[Issue]
) -> tuple[NormalisedItem | None, list[Issue]]:
    """Apply the ORU^R01 rules (docs/formats.md) and map the fields onto the ELR core."""
    errors: list[Issue] = []
    msh = message.msh
    errors.extend(_check_type(message, msh, index))
    if errors:
        return None, errors  # another message type's segments would only produce noise here

    pid = message.first("PID")
    patient_id = message.value(pid, 3)
    birth_date, birth_error = _birth_date(message, pid, index)
    if pid is None:
        errors.append(_issue(index, "PID", "hl7.missing_segment", "no PID segment"))
    elif not patient_id and not (message.value(pid, 5) and birth_date):
        errors.append(
            _issue(index, "PID-3", "hl7.missing_field", "PID-3 (patient identifier) is empty, and no PID-5 name with PID-7 birth date")
        )
    # A birth date or sex the service cannot read is only fatal when the patient's identity rests on it: with a
    # PID-3 identifier it stays null and the sender is warned (de-identified feeds put placeholders there).
    if birth_error is not None:
        (warnings if patient_id else errors).append(birth_error)
    sex_value = message.value(pid, 8)
    sex = codes.sex(sex_value) if sex_value else None
    if sex_value and sex is None:
        warnings.append(_issue(index, "PID-8", "hl7.bad_code", "PID-8 (administrative sex) is not an HL7 table 0001 code"))

    results, obx_errors = _results(message, index)
    obx = results[0][0] if results else None
    errors.extend(obx_errors)

    collected, date_error, date_warning = _collected_at(message, obx, index)
    if date_error is not None:
        errors.append(date_error)
    if date_warning is not None:
        warnings.append(date_warning)

    if errors or obx is None:
        return None, errors
    observations = [observation for _, observation in results]
    first = observations[0]
    return (
        NormalisedItem(
            report_id=report_id,
            item_index=index,
            source_format="hl7v2",
            message_id=message.value(msh, 10) or f"{report_id}-{index}",
            patient_id=patient_id or None,
            patient_birth_date=birth_date,
            patient_sex=sex,
            patient_race=codes.coded_or_text(codes.RACE, message.value(pid, 10), lambda: message.value(pid, 10, 2)),
            patient_ethnicity=codes.coded_or_text(
                codes.ETHNICITY, message.value(pid, 22), lambda: message.value(pid, 22, 2)
            ),
            patient_postal_code=message.value(pid, 11, 5) or None,
            patient_state=message.value(pid, 11, 4) or None,
            test_code=first.test_code,
            test_name=first.test_name,
            result=first.result,
            result_code=first.result_code,
            result_text=first.result_text,
            result_units=first.result_units,
            specimen_collected_at=collected,
            specimen_type_code=_specimen_type_code(message),
            performing_lab_clia=_performing_lab_clia(message, msh, obx),
            ordering_provider_npi=_ordering_provider_npi(message),
            observations=observations,
        ),
        [],
    )


def _birth_date(message: _Message, pid: list[str] | None, index: int) -> tuple[str | None, Issue | None]:
    """PID-7 as YYYY-MM-DD (a time part is dropped); null when absent or given only to the year or month."""
    value = message.value(pid, 7)
    if not value:
        return None, None
    converted = date_from_hl7(value)
    if converted is None:
        if value.isdigit() and len(value) in (4, 6):
            return None, None  # legal DTM at year or month precision: not a date, and not guessed into one
        return None, _issue(index, "PID-7", "hl7.bad_date", "PID-7 is not an HL7 date (YYYYMMDD)")
    return converted, None


def _performing_lab_clia(message: _Message, msh: list[str], obx: list[str]) -> str | None:
    """OBX-23.10 (ELR: the performing organization's identifier, its CLIA), else OBX-15, else MSH-4.2 when those
    are CLIA numbers (typed CLIA, or of the CLIA shape)."""
    performer = message.value(obx, 23, 10)
    if performer:
        return performer
    for segment, field, component, kind in ((obx, 15, 1, 3), (msh, 4, 2, 3)):
        value = message.value(segment, field, component)
        if value and (codes.CLIA.fullmatch(value) or message.value(segment, field, kind).upper() == "CLIA"):
            return value
    return None


def _ordering_provider_npi(message: _Message) -> str | None:
    """ORC-12.1, else OBR-16.1, when it is an NPI (XCN-13 or XCN-9 `NPI`, or the NPI's ten digits)."""
    for segment, field in ((message.first("ORC"), 12), (message.first("OBR"), 16)):
        value = message.value(segment, field)
        if value and (codes.NPI.fullmatch(value) or "NPI" in (message.value(segment, field, 13).upper(),
                                                              message.value(segment, field, 9).upper())):
            return value
    return None


def _check_type(message: _Message, msh: list[str], index: int) -> list[Issue]:
    kind, trigger = message.value(msh, 9, 1), message.value(msh, 9, 2)
    if not kind:
        return [_issue(index, "MSH-9", "hl7.missing_field", "MSH-9 (message type) is empty")]
    if (kind.upper(), trigger.upper()) == ("ORU", "R01"):
        return []
    # The type is not patient data, but it is still sender input: keep it short and printable.
    shown = re.sub(r"[^A-Za-z0-9_^]", "?", f"{kind}^{trigger}"[:16])
    if kind.upper() in _ORDER_TYPES:
        return [_issue(index, "MSH-9", "hl7.not_a_result", f"message type {shown} is an order, not a result (ORU^R01)")]
    return [_issue(index, "MSH-9", "hl7.unsupported_message_type", f"message type {shown} is not ORU^R01")]


def _results(message: _Message, index: int) -> tuple[list[tuple[list[str], Observation]], list[Issue]]:
    """Every OBX with an identifier and a value, in order (a panel's results all reach the output); else issues
    naming what is missing or malformed. The first of them is the item's result."""
    segments = message.all("OBX")
    if not segments:
        return [], [_issue(index, "OBX", "hl7.missing_segment", "no OBX segment")]
    found = []
    malformed: list[tuple[int, str]] = []  # (OBX position, value type) of values that are not what OBX-2 says
    for position, obx in enumerate(segments, 1):
        if message.value(obx, 3) and message.value(obx, 29) != "QST":  # QST: an ask-at-order-entry answer
            value_type = message.value(obx, 2).upper()
            value = _result(message, obx, value_type)
            if value is None:
                malformed.append((position, value_type))
            elif value:
                found.append((obx, _observation(message, obx, value, value_type)))
    if malformed:
        return found, [_bad_number(index, malformed)]
    if found:
        return found, []
    if not any(message.value(obx, 3) for obx in segments):
        return [], [_issue(index, "OBX-3", "hl7.missing_field", "no OBX has an observation identifier (OBX-3)")]
    return [], [_issue(index, "OBX-5", "hl7.missing_field", "no OBX with an OBX-3 identifier has a value (OBX-5)")]


def _bad_number(index: int, malformed: list[tuple[int, str]]) -> Issue:
    """One issue for every malformed number of the message: the first named, the others counted (never shown)."""
    position, value_type = malformed[0]
    shape = ("an HL7 SN structured numeric (comparator^number^separator^number)" if value_type == "SN"
             else "an HL7 NM number (an optional sign, ASCII digits, an optional decimal point)")
    more = f" (and {len(malformed) - 1} more OBX)" if len(malformed) > 1 else ""
    return _issue(index, "OBX-5", "hl7.bad_number", f"OBX-5 of OBX {position}{more} is not {shape}")


def _observation(message: _Message, obx: list[str], value: str, value_type: str) -> Observation:
    display, system = None, None
    if value_type in _CODED_TYPES:
        display, system = message.value(obx, 5, 2) or None, message.value(obx, 5, 3)
    if value_type in _CODED_TYPES or value_type in ("ST", ""):
        result, result_code, result_text = codes.result_values(value, display, system)
    else:
        result, result_code, result_text = value, None, None
    return Observation(
        test_code=message.value(obx, 3),
        test_name=message.value(obx, 3, 2) or message.value(obx, 3, 9) or None,  # CWE-9: the original text
        result=result,
        result_code=result_code,
        result_text=result_text,
        result_units=message.value(obx, 6) or None,
    )


def _result(message: _Message, obx: list[str], value_type: str) -> str | None:
    """OBX-5 as text: coded values give their code (else text), SN its parts joined, TX/FT all repetitions.
    None when an NM or SN value is not a number of that type."""
    if len(obx) <= 5:
        return ""
    seps = message.seps
    repetitions = obx[5].split(seps.repetition)
    if value_type in _TEXT_TYPES:
        return "\n".join(unescape(rep, seps) for rep in repetitions).strip()
    components = repetitions[0].split(seps.component)
    if value_type in _CODED_TYPES:
        return message.text(_nth(components, 1)) or message.text(_nth(components, 2))
    if value_type == "SN":  # comparator^num1^separator/suffix^num2, e.g. "<^10" or "^1^:^128"
        return _structured_number([message.text(part) for part in components[:4]])
    text = message.text(components[0])
    if value_type == "NM":
        return _number(text) if text else ""
    if value_type in _DATE_TYPES:
        return iso_from_hl7(text) or text
    return text


def _number(text: str) -> str | None:
    """An NM value as FHIR writes a decimal: '0065.880' -> '65.880', '+.5' -> '0.5' (its digits and precision
    kept, never an exponent); None when it is not an NM."""
    if text.isdigit() and text.isascii():  # the usual whole number, without the regular expression
        return text.lstrip("0") or "0"
    match = _NM.fullmatch(text)
    if match is None:
        return None
    sign, whole, fraction = match.groups()
    if not whole and not fraction:
        return None  # a sign or a point alone
    return ("-" if sign == "-" else "") + (whole.lstrip("0") or "0") + (f".{fraction}" if fraction else "")


def _structured_number(parts: list[str]) -> str | None:
    """An SN value's parts joined ('<^10' -> '<10', '^1^:^128' -> '1:128'), as sent; None when a part is not what
    SN allows there, or no number is given."""
    comparator, first, separator, second = parts + [""] * (4 - len(parts))
    if comparator not in _SN_COMPARATORS or separator not in _SN_SEPARATORS:
        return None
    if not (first or second):
        return None if comparator or separator else ""
    if any(number and _number(number) is None for number in (first, second)):
        return None
    return "".join(parts)


def _collected_at(message: _Message, obx: list[str] | None, index: int) -> tuple[str | None, Issue | None, Issue | None]:
    """SPM-17.1, else OBR-7, else OBX-14 (the ELR guide's fallbacks) as ISO 8601, with an error and a warning.

    Null when none is given. A legal DTM of year or month precision only (`0000` is how de-identified feeds blank
    these) is not a date/time: the next fallback is tried, and when none has one the value is null with a warning,
    never a date made up from the year."""
    imprecise: str | None = None
    for field, segments, number in (("SPM-17", message.all("SPM"), 17), ("OBR-7", message.all("OBR"), 7),
                                    ("OBX-14", (obx,), 14)):
        for segment in segments:
            value = message.value(segment, number)
            if not value:
                continue
            if value.isdigit() and len(value) in (4, 6):
                imprecise = imprecise or field
                break
            converted = iso_from_hl7(value)
            if converted is None:
                return None, _issue(index, field,
                                    "hl7.bad_date", f"{field} is not an HL7 date/time (YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])"), None
            return converted, None, None
    if imprecise is not None:
        return None, None, _issue(index, imprecise, "hl7.imprecise_date",
                                  f"{imprecise} gives only a year or month, not a date: specimen_collected_at is null")
    return None, None, None


def _specimen_type_code(message: _Message) -> str | None:
    """SPM-4 of the first SPM that has one, as a SNOMED CT code."""
    for spm in message.all("SPM"):
        code = message.value(spm, 4)
        if code:
            return codes.specimen_type(code, None, message.value(spm, 4, 3)) or codes.specimen_type(
                None, message.value(spm, 4, 2))
        name = message.value(spm, 4, 2)
        if name:
            return codes.specimen_type(None, name)
    return None

