"""HL7 v2 ORU^R01 reports: single messages or FHS/BHS batch files, streamed one message at a time.

The splitting is done here rather than with `hl7`/`hl7apy` (see docs/formats.md: speed and PHI-safe errors).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from dataclasses import dataclass
from functools import lru_cache

from shared.formats import ContentError, ItemResult, codes
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


class _BadMessage(Exception):
    """The message cannot be split at all; carries the issue field and a value-free message."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


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
    for index, lines in enumerate(_messages(raw)):
        yield _item(lines, index, report_id)


def _messages(raw: bytes) -> Iterator[list[bytes]]:
    """Group segment lines into messages; batch wrapper segments only end the message before them."""
    current: list[bytes] = []
    for match in _LINE.finditer(raw):
        line = match.group().strip(_FRAMING)
        if line.startswith(_UTF8_BOM):  # a BOM (file start, or after MLLP framing) must not hide the MSH
            line = line[len(_UTF8_BOM) :].strip(_FRAMING)
        if not line:
            continue
        head = line[:3]
        if head == b"MSH" or head in _BATCH_SEGMENTS:
            if current:
                yield current
            current = [line] if head == b"MSH" else []
        else:
            current.append(line)
    if current:
        yield current


def _item(lines: list[bytes], index: int, report_id: str) -> ItemResult:
    """Validate one message and normalise it, collecting every problem rather than stopping at the first."""
    result = ItemResult(index=index, item=None)
    text, recoded = _decode(lines)
    if recoded:
        result.warnings.append(
            _issue(index, None, "hl7.encoding", "message is not valid UTF-8; it was read as ISO-8859-1")
        )
    try:
        message = _Message(text)
    except _BadMessage as exc:
        result.errors.append(_issue(index, exc.field, "hl7.parse", str(exc)))
        return result
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
    return result


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
        self.seps = _separators(msh)
        self.invalid_lines = 0
        self.segments: list[list[str]] = []
        for line in lines:
            fields = line.split(self.seps.field)
            if not _SEGMENT_ID.fullmatch(fields[0]):
                self.invalid_lines += 1
                continue
            self.segments.append(fields)
        # MSH-1 is the field separator itself, so re-insert it to make field n sit at list index n everywhere.
        self.segments[0].insert(1, self.seps.field)
        seps = self.seps
        self._repetition, self._component, self._subcomponent, self._escape = (
            seps.repetition, seps.component, seps.subcomponent, seps.escape)
        self._by_id: dict[str, list[list[str]]] = {}
        for fields in self.segments:
            self._by_id.setdefault(fields[0], []).append(fields)

    def all(self, segment_id: str) -> list[list[str]]:
        return self._by_id.get(segment_id, [])

    def first(self, segment_id: str) -> list[str] | None:
        found = self._by_id.get(segment_id)
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
    """Apply the ORU^R01 rules of DESIGN section 5 and map the fields onto the ELR core."""
    errors: list[Issue] = []
    msh = message.segments[0]
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

    results, obx_error = _results(message, index)
    obx = results[0][0] if results else None
    if obx_error is not None:
        errors.append(obx_error)

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


def _results(message: _Message, index: int) -> tuple[list[tuple[list[str], Observation]], Issue | None]:
    """Every OBX with an identifier and a value, in order (a panel's results all reach the output); else an issue
    naming what is missing. The first of them is the item's result."""
    segments = message.all("OBX")
    if not segments:
        return [], _issue(index, "OBX", "hl7.missing_segment", "no OBX segment")
    found = []
    for obx in segments:
        if message.value(obx, 3) and message.value(obx, 29) != "QST":  # QST: an ask-at-order-entry answer
            value = _result(message, obx)
            if value:
                found.append((obx, _observation(message, obx, value)))
    if found:
        return found, None
    if not any(message.value(obx, 3) for obx in segments):
        return [], _issue(index, "OBX-3", "hl7.missing_field", "no OBX has an observation identifier (OBX-3)")
    return [], _issue(index, "OBX-5", "hl7.missing_field", "no OBX with an OBX-3 identifier has a value (OBX-5)")


def _observation(message: _Message, obx: list[str], value: str) -> Observation:
    display, system = None, None
    value_type = message.value(obx, 2).upper()
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


def _result(message: _Message, obx: list[str]) -> str:
    """OBX-5 as text: coded values give their code (else text), SN its parts joined, TX/FT all repetitions."""
    if len(obx) <= 5:
        return ""
    value_type = message.value(obx, 2).upper()
    seps = message.seps
    repetitions = obx[5].split(seps.repetition)
    if value_type in _TEXT_TYPES:
        return "\n".join(unescape(rep, seps) for rep in repetitions).strip()
    components = repetitions[0].split(seps.component)
    if value_type in _CODED_TYPES:
        return message.text(_nth(components, 1)) or message.text(_nth(components, 2))
    if value_type == "SN":  # comparator^num1^separator/suffix^num2, e.g. "<^10" or "^1^:^128"
        return "".join(message.text(part) for part in components[:4])
    text = message.text(components[0])
    if value_type == "NM":
        return _number(text)
    if value_type in _DATE_TYPES:
        return iso_from_hl7(text) or text
    return text


def _number(text: str) -> str:
    """An NM value as FHIR writes a decimal: '0065.880' -> '65.880' (precision kept), else as sent."""
    try:
        number = Decimal(text)
    except ArithmeticError:
        return text
    return str(number) if number.is_finite() and "e" not in text.lower() else text


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


def _issue(index: int, field: str | None, code: str, message: str) -> Issue:
    return Issue(scope="item", index=index, field=field, code=code, message=message)
