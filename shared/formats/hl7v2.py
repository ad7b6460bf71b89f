"""HL7 v2 ORU^R01 reports: single messages or FHS/BHS batch files, streamed one message at a time and mapped onto
the ELR core (hl7_segments.py splits the text)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from shared.formats import codes
from shared.formats._dates import date_from_hl7, hl7_year_or_month, iso_from_hl7
from shared.formats.collection_time import Collected, DateSyntax, collected_at
from shared.formats.hl7_segments import MAX_COMPONENTS as MAX_COMPONENTS
from shared.formats.hl7_segments import MAX_FIELD_CHARS as MAX_FIELD_CHARS
from shared.formats.hl7_segments import MAX_FIELDS as MAX_FIELDS
from shared.formats.hl7_segments import MAX_REPETITIONS as MAX_REPETITIONS
from shared.formats.hl7_segments import MAX_SEGMENTS as MAX_SEGMENTS
from shared.formats.hl7_segments import BadMessage, Message, Refused, decode, has_header, messages, nth, unescape
from shared.formats.items import ContentError, ItemResult
from shared.formats.items import item_issue as _issue
from shared.models import Issue, NormalisedItem, Observation

_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
_TEXT_TYPES = frozenset({"TX", "FT"})
_ORDER_TYPES = frozenset({"ORM", "OML"})
_DATE_TYPES = frozenset({"DT", "DTM", "TS"})
# HL7 NM: an optional sign, ASCII digits, an optional decimal point; nothing else. Decimal() and float() would also
# take '1_5', '1e3', 'NaN' and other scripts' digits ('٥'), so the shape is checked here, not left to them.
_NM = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
# SN: comparator ^ number ^ separator/suffix ^ number; the comparator and separator values of HL7's SN definition.
_SN_COMPARATORS = frozenset({"", ">", "<", ">=", "<=", "=", "<>"})
_SN_SEPARATORS = frozenset({"", "-", "+", "/", ".", ":"})
_COLLECTED = DateSyntax(iso_from_hl7, hl7_year_or_month, "hl7.bad_date",
                        "is not an HL7 date/time (YYYYMMDD[HHMM[SS[.S]]][+/-ZZZZ])", "hl7.imprecise_date")

# The report's 10,000-item cap does not bound what one message holds: this, with the segment bounds of hl7_segments
# (re-exported above: they are this format's limits too), keeps one message within a fixed size (docs/formats.md,
# "Limits").
MAX_OBSERVATIONS = 1_000  # OBX segments of one message (every one can become an Observation)
# The highest field number read (OBX-29): segments are split at most this far.
_LAST_FIELD_READ = 29
# The segments read: only they are split into fields.
_READ_SEGMENTS = frozenset({"MSH", "PID", "ORC", "OBR", "OBX", "SPM"})


def parse(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """Yield one ItemResult per message (or per run of segments outside any message), in order."""
    if not has_header(raw):
        raise ContentError("hl7.parse", "no MSH segment found: the body is not an HL7 v2 message or batch")
    for index, (lines, segments, observations) in enumerate(messages(raw)):
        yield _item(lines, segments, observations, index, report_id)


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
    text, recoded = decode(lines)
    if recoded:
        result.warnings.append(
            _issue(index, None, "hl7.encoding", "message is not valid UTF-8; it was read as ISO-8859-1")
        )
    try:
        message = Message(text, _READ_SEGMENTS, _LAST_FIELD_READ)
    except BadMessage as exc:
        result.errors.append(_issue(index, exc.field, "hl7.parse", str(exc)))
        return
    except Refused as exc:
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


def _normalise(
    message: Message, index: int, report_id: str, warnings: list[Issue]
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


def _birth_date(message: Message, pid: list[str] | None, index: int) -> tuple[str | None, Issue | None]:
    """PID-7 as YYYY-MM-DD (a time part is dropped); null when absent or given only to the year or month."""
    value = message.value(pid, 7)
    if not value:
        return None, None
    converted = date_from_hl7(value)
    if converted is None:
        if hl7_year_or_month(value):
            return None, None
        return None, _issue(index, "PID-7", "hl7.bad_date", "PID-7 is not an HL7 date (YYYYMMDD)")
    return converted, None


def _performing_lab_clia(message: Message, msh: list[str], obx: list[str]) -> str | None:
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


def _ordering_provider_npi(message: Message) -> str | None:
    """ORC-12.1, else OBR-16.1, when it is an NPI (XCN-13 or XCN-9 `NPI`, or the NPI's ten digits)."""
    for segment, field in ((message.first("ORC"), 12), (message.first("OBR"), 16)):
        value = message.value(segment, field)
        if value and (codes.NPI.fullmatch(value) or "NPI" in (message.value(segment, field, 13).upper(),
                                                              message.value(segment, field, 9).upper())):
            return value
    return None


def _check_type(message: Message, msh: list[str], index: int) -> list[Issue]:
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


def _results(message: Message, index: int) -> tuple[list[tuple[list[str], Observation]], list[Issue]]:
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


def _observation(message: Message, obx: list[str], value: str, value_type: str) -> Observation:
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


def _result(message: Message, obx: list[str], value_type: str) -> str | None:
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
        return message.text(nth(components, 1)) or message.text(nth(components, 2))
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


def _collected_at(message: Message, obx: list[str] | None, index: int) -> Collected:
    """SPM-17.1, else OBR-7, else OBX-14 (the ELR guide's fallbacks) by the rule both formats share."""
    return collected_at(_collection_times(message, obx), _COLLECTED, index)


def _collection_times(message: Message, obx: list[str] | None) -> Iterator[tuple[str, str]]:
    """Each fallback field's value, from the first segment that gives one (a year-only SPM-17 passes over to OBR-7,
    not to another SPM)."""
    for field, segments, number in (("SPM-17", message.all("SPM"), 17), ("OBR-7", message.all("OBR"), 7),
                                    ("OBX-14", (obx,), 14)):
        yield field, next(filter(None, (message.value(segment, number) for segment in segments)), "")


def _specimen_type_code(message: Message) -> str | None:
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

