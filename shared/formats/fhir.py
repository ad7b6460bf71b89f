"""FHIR R4 reports: one Bundle (`application/fhir+json`) or one Bundle per NDJSON line, validated with fhir.resources.

fhir.resources 8 ships R5 (default), R4B and STU3 models; R4B (4.3.0) is the R4-compatible one used here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from shared.formats import ItemResult
from shared.formats._dates import iso_from_text
from shared.models import Issue, NormalisedItem, Observation

_MAX_VALIDATION_ISSUES = 10
_SAFE_TOKEN = re.compile(r"[^A-Za-z0-9_.-]")


def parse_bundle(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """A single Bundle: always exactly one item."""
    yield _item(raw, 0, report_id, "the body")


def parse_ndjson(raw: bytes, report_id: str) -> Iterator[ItemResult]:
    """One Bundle per non-empty line; blank lines are not items."""
    index = 0
    for line_no, line in _lines(raw):
        if not line.strip():
            continue
        yield _item(line, index, report_id, f"line {line_no}")
        index += 1


def _lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """Split on LF without copying the body (CR before LF is whitespace to the JSON parser)."""
    start, line_no = 0, 1
    while start < len(raw):
        end = raw.find(b"\n", start)
        if end == -1:
            end = len(raw)
        yield line_no, raw[start:end]
        start, line_no = end + 1, line_no + 1


def _item(data: bytes, index: int, report_id: str, where: str) -> ItemResult:
    result = ItemResult(index=index, item=None)
    doc, error = _load(data, index, where)
    if error is None:
        result.errors.extend(_validate(doc, index))
    else:
        result.errors.append(error)
    if not result.errors:
        result.item, errors = _normalise(doc, index, report_id)
        result.errors.extend(errors)
    return result


def _load(data: bytes, index: int, where: str) -> tuple[Any, Issue | None]:
    """Parse JSON (bytes, so a UTF-8 BOM is accepted); decimals stay Decimal so '5.40' keeps its precision."""
    try:
        return json.loads(data, parse_float=Decimal), None
    except json.JSONDecodeError as exc:
        where += f" (at line {exc.lineno}, column {exc.colno})"
        return None, _issue(index, None, "fhir.invalid_json", f"{where} is not valid JSON")
    except (ValueError, RecursionError):  # not UTF-8/16/32, absurd numbers, or nesting too deep
        return None, _issue(index, None, "fhir.invalid_json", f"{where} is not valid JSON")


def _validate(doc: Any, index: int) -> list[Issue]:
    if not isinstance(doc, dict):
        return [_issue(index, "resourceType", "fhir.not_bundle", "the item is not a JSON object")]
    kind = doc.get("resourceType")
    if kind != "Bundle":
        shown = _SAFE_TOKEN.sub("?", kind[:40]) if isinstance(kind, str) else "missing"
        return [_issue(index, "resourceType", "fhir.not_bundle", f"resourceType is {shown}, expected Bundle")]
    try:
        Bundle.model_validate(doc)
    except ValidationError as exc:
        return _validation_issues(exc, index)
    except Exception as exc:  # the model library raises KeyError etc. for unknown resource types
        text = f"the Bundle does not match the FHIR R4 model ({type(exc).__name__})"
        return [_issue(index, None, "fhir.invalid", text)]
    return []


def _validation_issues(exc: ValidationError, index: int) -> list[Issue]:
    """One issue per model error, naming the element path; the offending value itself is never repeated."""
    errors = exc.errors(include_url=False)
    issues = []
    for err in errors[:_MAX_VALIDATION_ISSUES]:
        field = _path(err.get("loc", ()))
        text = str(err.get("msg", ""))
        value = err.get("input")
        if isinstance(value, (str, int, float, Decimal)) and str(value) and str(value) in text:
            text = str(err.get("type", "invalid value"))
        issues.append(_issue(index, field or None, "fhir.invalid", f"{field or 'Bundle'}: {text}"[:300]))
    if len(errors) > _MAX_VALIDATION_ISSUES:
        issues[-1].message += f" (and {len(errors) - _MAX_VALIDATION_ISSUES} more model errors)"
    return issues


def _path(loc: tuple[Any, ...]) -> str:
    """('entry', 0, 'resource', 'code') -> 'entry[0].resource.code'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _normalise(doc: dict[str, Any], index: int, report_id: str) -> tuple[NormalisedItem | None, list[Issue]]:
    resources = [
        entry["resource"]
        for entry in doc.get("entry") or []
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
    ]
    patient = next((r for r in resources if r.get("resourceType") == "Patient"), None)
    observations = [r for r in resources if r.get("resourceType") == "Observation"]
    errors: list[Issue] = []
    if patient is None:
        errors.append(_issue(index, "Patient", "fhir.missing_resource", "the Bundle has no Patient"))
    if not observations:
        errors.append(_issue(index, "Observation", "fhir.missing_resource", "the Bundle has no Observation"))
    if errors:
        return None, errors

    patient_id = _text(_get(patient, "identifier", 0, "value"))
    if not patient_id:
        field = "Patient.identifier[0].value"
        errors.append(_issue(index, field, "fhir.missing_field", f"{field} is empty"))
    observation, error = _first_valid_observation(observations, index)
    if error is not None:
        errors.append(error)
        observation = observations[0]
    collected, error = _collected_at(resources, observation, index)
    if error is not None:
        errors.append(error)
    if errors or collected is None:
        return None, errors

    results = [r for r in map(_observation, observations) if r is not None]
    first = results[0]  # the same Observation _first_valid_observation chose
    return (
        NormalisedItem(
            report_id=report_id,
            item_index=index,
            message_id=_text(doc.get("id")) or f"{report_id}-{index}",
            patient_id=patient_id,
            patient_state=_text(_get(patient, "address", 0, "state")) or None,
            test_code=first.test_code,
            test_name=first.test_name,
            result=first.result,
            result_units=first.result_units,
            result_text=first.result_text,
            specimen_collected_at=collected,
            performing_facility=_text(_get(observation, "performer", 0, "display")) or None,
            source_format="fhir",
            observations=results,
        ),
        [],
    )


def _observation(resource: dict[str, Any]) -> Observation | None:
    """One Observation with a coded test and a value, as a normalised result; None otherwise."""
    code = _text(_get(resource, "code", "coding", 0, "code"))
    result, units = _value(resource)
    if not code or not result:
        return None
    concept = resource.get("valueCodeableConcept")
    display = (_text(_get(concept, "coding", 0, "display")) or _text(_get(concept, "text"))) if concept else ""
    return Observation(
        test_code=code,
        test_name=_text(_get(resource, "code", "coding", 0, "display")) or _text(_get(resource, "code", "text")) or None,
        result=result,
        result_text=display or None,
        result_units=units or None,
    )


def _first_valid_observation(observations: list[dict[str, Any]], index: int) -> tuple[dict[str, Any], Issue | None]:
    """Like HL7's first valid OBX: the first Observation with both a coded test and a value."""
    for observation in observations:
        if _text(_get(observation, "code", "coding", 0, "code")) and _value(observation)[0]:
            return observation, None
    if not any(_text(_get(o, "code", "coding", 0, "code")) for o in observations):
        field = "Observation.code.coding[0].code"
        return observations[0], _issue(index, field, "fhir.missing_field", f"no Observation has {field}")
    return observations[0], _issue(
        index,
        "Observation.value[x]",
        "fhir.missing_field",
        "no coded Observation has a value (valueQuantity, valueString, ...)",
    )


def _value(observation: dict[str, Any]) -> tuple[str, str]:
    """(result, units) from the value[x] types a lab result uses; coded values give their code first."""
    quantity = observation.get("valueQuantity")
    if isinstance(quantity, dict):
        return _text(quantity.get("value")), _text(quantity.get("unit")) or _text(quantity.get("code"))
    if "valueString" in observation:
        return _text(observation["valueString"]), ""
    concept = observation.get("valueCodeableConcept")
    if isinstance(concept, dict):
        coded = _text(_get(concept, "coding", 0, "code")) or _text(_get(concept, "coding", 0, "display"))
        return coded or _text(concept.get("text")), ""
    if "valueInteger" in observation:
        return _text(observation["valueInteger"]), ""
    if isinstance(observation.get("valueBoolean"), bool):
        return ("true" if observation["valueBoolean"] else "false"), ""
    return "", ""


def _collected_at(
    resources: list[dict[str, Any]], observation: dict[str, Any], index: int
) -> tuple[str | None, Issue | None]:
    """Specimen.collection.collectedDateTime, else Observation.effectiveDateTime (or effectivePeriod.start)."""
    candidates = [
        ("Specimen.collection.collectedDateTime", _get(r, "collection", "collectedDateTime"))
        for r in resources
        if r.get("resourceType") == "Specimen"
    ] + [
        ("Observation.effectiveDateTime", observation.get("effectiveDateTime")),
        ("Observation.effectivePeriod.start", _get(observation, "effectivePeriod", "start")),
    ]
    for field, value in candidates:
        text = _text(value)
        if not text:
            continue
        converted = iso_from_text(text)
        if converted is None:
            return None, _issue(index, field, "fhir.bad_date", f"{field} is not a full date or date-time")
        return converted, None
    field = "Specimen.collection.collectedDateTime"
    return None, _issue(
        index,
        field,
        "fhir.missing_field",
        "no collection time: no Specimen.collection.collectedDateTime nor Observation.effective[x]",
    )


def _get(node: Any, *path: str | int) -> Any:
    """Follow keys and list indexes; None as soon as the shape does not fit."""
    for step in path:
        if isinstance(step, int):
            node = node[step] if isinstance(node, list) and -len(node) <= step < len(node) else None
        else:
            node = node.get(step) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return ""
    return str(value).strip()


def _issue(index: int, field: str | None, code: str, message: str) -> Issue:
    return Issue(scope="item", index=index, field=field, code=code, message=message)
