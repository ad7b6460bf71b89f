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

from shared.formats import ItemResult, codes
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


_LOINC = "http://loinc.org"
_NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
_CLIA_SYSTEMS = frozenset({"urn:oid:2.16.840.1.113883.4.7", "http://hl7.org/fhir/sid/us-clia"})
_RACE_URLS = ("http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
              "http://ibm.com/fhir/cdm/StructureDefinition/local-race-cd")
_ETHNICITY_URLS = ("http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                   "http://ibm.com/fhir/cdm/StructureDefinition/local-ethnicity")


class _Resources:
    """The Bundle's resources, found by type and by reference (fullUrl, `Type/id`, or an absolute URL ending so)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.all: list[dict[str, Any]] = []
        self._by_ref: dict[str, dict[str, Any]] = {}
        for entry in doc.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            self.all.append(resource)
            full_url = _text(entry.get("fullUrl"))
            if full_url:
                self._by_ref.setdefault(full_url, resource)
            kind, rid = _text(resource.get("resourceType")), _text(resource.get("id"))
            if kind and rid:
                self._by_ref.setdefault(f"{kind}/{rid}", resource)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.all if r.get("resourceType") == kind]

    def follow(self, reference: Any, kind: str) -> dict[str, Any] | None:
        """The resource a Reference points at, when it is in the Bundle and of the expected type."""
        ref = _text(_get(reference, "reference"))
        if not ref:
            return None
        found = self._by_ref.get(ref)
        if found is None:
            parts = ref.split("/_history/", 1)[0].rstrip("/").split("/")
            found = self._by_ref.get("/".join(parts[-2:])) if len(parts) >= 2 else None
        return found if found is not None and found.get("resourceType") == kind else None


def _normalise(doc: dict[str, Any], index: int, report_id: str) -> tuple[NormalisedItem | None, list[Issue]]:
    resources = _Resources(doc)
    observations = resources.of_type("Observation")
    errors: list[Issue] = []
    if not observations:
        errors.append(_issue(index, "Observation", "fhir.missing_resource", "the Bundle has no Observation"))
        return None, errors
    observation, error = _first_valid_observation(observations, index)
    if error is not None:
        errors.append(error)
    patient = resources.follow(observation.get("subject"), "Patient") or next(iter(resources.of_type("Patient")), None)
    if patient is None:
        errors.append(_issue(index, "Patient", "fhir.missing_resource", "the Bundle has no Patient"))
        return None, errors

    patient_id = _text(_get(patient, "identifier", 0, "value"))
    birth_date = _birth_date(patient)
    name = _get(patient, "name", 0)
    if not patient_id and not (birth_date and (_text(_get(name, "family")) or _text(_get(name, "text")))):
        field = "Patient.identifier[0].value"
        errors.append(_issue(index, field, "fhir.missing_field", f"{field} is empty, and no Patient.name with birthDate"))
    specimen = resources.follow(observation.get("specimen"), "Specimen") or next(
        iter(resources.of_type("Specimen")), None
    )
    collected, error = _collected_at(specimen, observation, index)
    if error is not None:
        errors.append(error)
    if errors:
        return None, errors

    results = [r for r in map(_observation, observations) if r is not None]
    first = results[0]  # the same Observation _first_valid_observation chose
    address = _get(patient, "address", 0)
    return (
        NormalisedItem(
            report_id=report_id,
            item_index=index,
            source_format="fhir",
            message_id=_text(_get(doc, "identifier", "value")) or _text(doc.get("id")) or f"{report_id}-{index}",
            patient_id=patient_id or None,
            patient_birth_date=birth_date,
            patient_sex=codes.sex(_text(patient.get("gender"))),
            patient_race=_extension_code(patient, _RACE_URLS, codes.RACE),
            patient_ethnicity=_extension_code(patient, _ETHNICITY_URLS, codes.ETHNICITY),
            patient_postal_code=_text(_get(address, "postalCode")) or None,
            patient_state=_text(_get(address, "state")) or None,
            **first.model_dump(),
            specimen_collected_at=collected,
            specimen_type_code=_specimen_type(specimen),
            performing_lab_clia=_performing_lab_clia(resources, observation),
            ordering_provider_npi=_ordering_provider_npi(resources),
            observations=results,
        ),
        [],
    )


def _birth_date(patient: dict[str, Any]) -> str | None:
    """Patient.birthDate as YYYY-MM-DD; a year or year-month only is not a date and stays null."""
    text = _text(patient.get("birthDate"))
    return text if len(text) == 10 and iso_from_text(text) == text else None


def _extension_code(resource: dict[str, Any], urls: tuple[str, ...], code_set: codes.CodeSet) -> str | None:
    """Race or ethnicity from the US Core extension (ombCategory, else text) or the code-valued form RS and SR use."""
    for extension in resource.get("extension") or []:
        if not isinstance(extension, dict) or extension.get("url") not in urls:
            continue
        for part in extension.get("extension") or []:
            if isinstance(part, dict) and part.get("url") == "ombCategory":
                return codes.coded_or_text(code_set, _text(_get(part, "valueCoding", "code")), _text(_get(part, "valueCoding", "display")))
        concept = extension.get("valueCodeableConcept")
        coding = _get(concept, "coding", 0) or extension.get("valueCoding")
        found = codes.coded_or_text(code_set, _text(_get(coding, "code")), _text(_get(coding, "display")) or _text(_get(concept, "text")))
        if found:
            return found
        for part in extension.get("extension") or []:
            if isinstance(part, dict) and part.get("url") == "text":
                return codes.coded_or_text(code_set, None, _text(part.get("valueString")))
    return None


def _specimen_type(specimen: dict[str, Any] | None) -> str | None:
    for coding in _get(specimen, "type", "coding") or []:
        found = codes.specimen_type(_text(_get(coding, "code")), _text(_get(coding, "display")), _text(_get(coding, "system")))
        if found:
            return found
    return codes.specimen_type(None, _text(_get(specimen, "type", "text")))


def _identifier(resource: dict[str, Any] | None, systems: frozenset[str], type_code: str) -> str | None:
    """The value of the identifier with one of `systems`, or typed `type_code` (identifier.type.coding.code)."""
    for identifier in _get(resource, "identifier") or []:
        system = _text(_get(identifier, "system"))
        kinds = {_text(_get(c, "code")).upper() for c in _get(identifier, "type", "coding") or []}
        if system in systems or type_code in kinds:
            return _text(_get(identifier, "value")) or None
    return None


def _performing_lab_clia(resources: _Resources, observation: dict[str, Any]) -> str | None:
    """The CLIA of the Organization performing the Observation (else the DiagnosticReport's performer)."""
    performers = list(observation.get("performer") or [])
    for report in resources.of_type("DiagnosticReport"):
        performers += report.get("performer") or []
    for reference in performers:
        clia = _identifier(resources.follow(reference, "Organization"), _CLIA_SYSTEMS, "CLIA")
        if clia:
            return clia
    return None


def _ordering_provider_npi(resources: _Resources) -> str | None:
    """The NPI of the Practitioner (directly or through PractitionerRole) that requested the test."""
    for request in resources.of_type("ServiceRequest"):
        requester = request.get("requester")
        practitioner = resources.follow(requester, "Practitioner")
        role = resources.follow(requester, "PractitionerRole")
        if practitioner is None and role is not None:
            practitioner = resources.follow(role.get("practitioner"), "Practitioner")
        npi = _identifier(practitioner, frozenset({_NPI_SYSTEM}), "NPI")
        if npi:
            return npi
    return None


def _observation(resource: dict[str, Any]) -> Observation | None:
    """One Observation with a coded test and a value, as a normalised result; None otherwise."""
    coding = _test_coding(resource)
    code = _text(_get(coding, "code"))
    value, units = _value(resource)
    if not code or not value:
        return None
    concept = resource.get("valueCodeableConcept")
    if isinstance(concept, dict):
        display = _text(_get(concept, "coding", 0, "display")) or _text(concept.get("text"))
        result, result_code, result_text = codes.result_values(value, display or None, _text(_get(concept, "coding", 0, "system")))
    elif "valueString" in resource:
        result, result_code, result_text = codes.result_values(value)
    else:
        result, result_code, result_text = value, None, None
    return Observation(
        test_code=code,
        test_name=_text(_get(coding, "display")) or _text(_get(resource, "code", "text")) or None,
        result=result,
        result_code=result_code,
        result_text=result_text,
        result_units=units or None,
    )


def _test_coding(observation: dict[str, Any]) -> Any:
    """The LOINC coding of Observation.code when there is one, else its first coding."""
    codings = _get(observation, "code", "coding") or []
    return next((c for c in codings if isinstance(c, dict) and c.get("system") == _LOINC), _get(codings, 0))


def _first_valid_observation(observations: list[dict[str, Any]], index: int) -> tuple[dict[str, Any], Issue | None]:
    """Like HL7's first valid OBX: the first Observation with both a coded test and a value."""
    for observation in observations:
        if _text(_get(_test_coding(observation), "code")) and _value(observation)[0]:
            return observation, None
    if not any(_text(_get(_test_coding(o), "code")) for o in observations):
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
    specimen: dict[str, Any] | None, observation: dict[str, Any], index: int
) -> tuple[str | None, Issue | None]:
    """Specimen.collection.collectedDateTime (or collectedPeriod.start), else Observation.effective[x]."""
    candidates = [
        ("Specimen.collection.collectedDateTime", _get(specimen, "collection", "collectedDateTime")),
        ("Specimen.collection.collectedPeriod.start", _get(specimen, "collection", "collectedPeriod", "start")),
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
