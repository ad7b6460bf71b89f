"""The ELR core from a FHIR R4 Bundle's resources: which resources and elements are read, and how they map.

`READ_ELEMENTS` is the one list of what the service reads: fhir.py holds model problems there to be errors and
everywhere else to be warnings. Orders are not results: a MessageHeader with an HL7 v2 order event (O01, O21, ...)
rejects the item, and an Observation whose status says it has no result is not one. References are followed by
fullUrl or `Type/id` (Observation.subject -> Patient, .specimen -> Specimen, .performer -> Organization;
ServiceRequest.requester -> Practitioner(Role)).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, overload

from shared.formats import codes
from shared.formats._dates import iso_from_text, iso_year_or_month
from shared.formats.collection_time import Collected, DateSyntax, collected_at
from shared.formats.items import item_issue as _issue
from shared.models import Issue, NormalisedItem, Observation

_LOINC = "http://loinc.org"
_NPI_MARKS = frozenset({"http://hl7.org/fhir/sid/us-npi", "NPI", "2.16.840.1.113883.4.6", "urn:oid:2.16.840.1.113883.4.6"})
_CLIA_MARKS = frozenset({"urn:oid:2.16.840.1.113883.4.7", "2.16.840.1.113883.4.7", "http://hl7.org/fhir/sid/us-clia", "CLIA"})
_RACE_URLS = ("http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
              "http://ibm.com/fhir/cdm/StructureDefinition/local-race-cd")
_ETHNICITY_URLS = ("http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                   "http://ibm.com/fhir/cdm/StructureDefinition/local-ethnicity",
                   "https://reportstream.cdc.gov/fhir/StructureDefinition/ethnic-group")
READ_EXTENSIONS = frozenset(_RACE_URLS + _ETHNICITY_URLS)
_COLLECTED = DateSyntax(iso_from_text, iso_year_or_month, "fhir.bad_date", "is not a full date or date-time",
                        "fhir.imprecise_date")
_VALUES = ("valueQuantity", "valueString", "valueCodeableConcept", "valueInteger", "valueBoolean", "valueDateTime",
           "valueTime")
# MessageHeader.event[x] codes of HL7 v2 table 0003 whose events are orders or order responses (ORM^O01, OML^O21,
# OML^O33, ...): every 0003 event starting `O` is one. As HL7's `hl7.not_a_result`, such a Bundle is no result.
_ORDER_EVENT = re.compile(r"O[0-9]{2}", re.IGNORECASE)
_ORDER_EVENT_URI = re.compile(r"(?:^|[^A-Za-z0-9])O[0-9]{2}$", re.IGNORECASE)  # `.../O21`, `...#OML_O21`
# Observation.status values that carry no result: not yet produced (registered), not to be (cancelled), or not
# known. `entered-in-error` stays a result: ReportStream sends such a retraction as an ORU^R01 with OBX-11 `W`,
# which HL7 reads as a result (tests/samples/real/reportstream/pairs/sample_CO_20240403), so both formats agree.
NOT_RESULT_STATUSES = frozenset({"registered", "cancelled", "unknown"})
# Resource type -> the elements the ELR core reads. Resources of other types are checked, then dropped.
READ_ELEMENTS: dict[str, frozenset[str]] = {
    "Patient": frozenset({"identifier", "name", "birthDate", "gender", "address", "extension"}),
    "Observation": frozenset({"status", "code", "subject", "specimen", "performer", "effectiveDateTime",
                              "effectivePeriod", *_VALUES}),
    "Specimen": frozenset({"type", "collection"}),
    "Organization": frozenset({"identifier"}),
    "Practitioner": frozenset({"identifier"}),
    "PractitionerRole": frozenset({"practitioner"}),
    "ServiceRequest": frozenset({"requester"}),
    "DiagnosticReport": frozenset({"performer", "result", "specimen", "effectiveDateTime", "effectivePeriod"}),
    "MessageHeader": frozenset({"eventCoding", "eventUri"}),
}


class _Resources:
    """The Bundle's resources, found by type and by reference (fullUrl, `Type/id`, or an absolute URL ending so)."""

    def __init__(self, resources: list[dict[str, Any]], by_full_url: dict[str, dict[str, Any]]) -> None:
        self.all = resources
        self.used: set[int] = set()  # id() of each resource the core read from: its model problems are errors
        self.examined: set[int] = set()  # id() of each Observation looked at as a result: wrong types are errors
        # (id(), element) whose model problems stay warnings although read: the value is left null instead.
        self.lenient: set[tuple[int, str]] = set()
        self.warnings: list[Issue] = []
        self._by_ref = dict(by_full_url)
        for resource in resources:
            kind, rid = _text(resource.get("resourceType")), _text(resource.get("id"))
            if kind and rid:
                self._by_ref.setdefault(f"{kind}/{rid}", resource)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.all if r.get("resourceType") == kind]

    @overload
    def use(self, resource: dict[str, Any]) -> dict[str, Any]: ...
    @overload
    def use(self, resource: dict[str, Any] | None) -> dict[str, Any] | None: ...

    def use(self, resource: dict[str, Any] | None) -> dict[str, Any] | None:
        """The resource, marked read (its model problems are then errors)."""
        if resource is not None:
            self.used.add(id(resource))
        return resource

    def first(self, kind: str) -> dict[str, Any] | None:
        return self.use(next(iter(self.of_type(kind)), None))

    def follow(self, reference: Any, kind: str) -> dict[str, Any] | None:
        """The resource a Reference points at, when it is in the Bundle and of the expected type (marked used)."""
        return self.use(self.find(reference, kind))

    def find(self, reference: Any, kind: str) -> dict[str, Any] | None:
        ref = _text(_get(reference, "reference"))
        if not ref:
            return None
        found = self._by_ref.get(ref)
        if found is None:
            parts = ref.split("/_history/", 1)[0].rstrip("/").split("/")
            found = self._by_ref.get("/".join(parts[-2:])) if len(parts) >= 2 else None
        return found if found is not None and found.get("resourceType") == kind else None

    def observations(self) -> list[dict[str, Any]]:
        """The results: the Observations the DiagnosticReports list, in that order (the order ReportStream writes
        OBX segments); without such a list, every Observation. Answers to ask-at-order-entry questions hang off
        ServiceRequest.supportingInfo instead (HL7 marks them OBX-29 `QST`): they are not results."""
        listed: dict[int, dict[str, Any]] = {}  # by id(): each once, in order
        for report in self.of_type("DiagnosticReport"):
            for ref in _list(report.get("result")):
                found = self.find(ref, "Observation")
                if found is not None:
                    listed.setdefault(id(found), found)
        return list(listed.values()) or self.of_type("Observation")


def normalise(
    head: dict[str, Any],
    resources_read: list[dict[str, Any]],
    by_full_url: dict[str, dict[str, Any]],
    index: int,
    report_id: str,
) -> tuple[NormalisedItem | None, list[Issue], _Resources]:
    """The item's ELR core from the Bundle's top-level values and the resources of the types in READ_ELEMENTS.

    Also returns what was read (`used`: the id() of every resource read, so the caller can hold model problems in
    them to be errors, except the `lenient` elements) and the item's own `warnings`.
    """
    resources = _Resources(resources_read, by_full_url)
    item, errors = _core(head, resources, index, report_id)
    return item, errors, resources


def _core(head: dict[str, Any], resources: _Resources, index: int, report_id: str) -> tuple[NormalisedItem | None, list[Issue]]:
    order = _order_event(resources, index)
    if order is not None:
        return None, [order]  # as in HL7: an order's resources would only produce noise here
    listed = resources.observations()
    errors: list[Issue] = []
    if not listed:
        errors.append(_issue(index, "Observation", "fhir.missing_resource", "the Bundle has no Observation"))
        return None, errors
    observations = [o for o in listed if _is_result(resources, o)]
    resources.examined.update(id(o) for o in observations)
    if not observations:
        errors.append(_issue(index, "Observation.status", "fhir.no_result",
                             "no Observation is a result: each has status registered, cancelled or unknown"))
        return None, errors
    observation, error = _first_valid_observation(observations, index)
    if error is not None:
        errors.append(error)
    patient = resources.follow(observation.get("subject"), "Patient") or resources.first("Patient")
    if patient is None:
        errors.append(_issue(index, "Patient", "fhir.missing_resource", "the Bundle has no Patient"))
        return None, errors

    patient_id = _text(_get(patient, "identifier", 0, "value"))
    birth_date = _birth_date(patient)
    name = _get(patient, "name", 0)
    if not patient_id and not (birth_date and (_text(_get(name, "family")) or _text(_get(name, "text")))):
        field = "Patient.identifier[0].value"
        errors.append(_issue(index, field, "fhir.missing_field", f"{field} is empty, and no Patient.name with birthDate"))
    # As for HL7's PID-7 and PID-8: a birth date or sex the service cannot read only rejects the item when the
    # patient's identity rests on it; otherwise it stays null and the sender is warned.
    if patient_id:
        resources.lenient.add((id(patient), "birthDate"))
    gender = _text(patient.get("gender"))
    if gender and codes.sex(gender) is None:
        resources.warnings.append(
            _issue(index, "Patient.gender", "fhir.bad_code", "Patient.gender is not male, female, other or unknown"))
    specimens = _specimens(resources, observation)
    reports = [report for report in resources.of_type("DiagnosticReport") if resources.use(report) is not None]
    collected, error, warning = _collected_at(specimens, reports, observation, index)
    if error is not None:
        errors.append(error)
    if warning is not None:
        resources.warnings.append(warning)
    if errors:
        return None, errors

    normalised = [(o, _observation(o)) for o in observations]
    results = [r for _, r in normalised if r is not None]
    resources.used.update(id(o) for o, r in normalised if r is not None)
    first = results[0]  # the same Observation _first_valid_observation chose
    address = _get(patient, "address", 0)
    return (
        NormalisedItem(
            report_id=report_id,
            item_index=index,
            source_format="fhir",
            message_id=_text(_get(head, "identifier", "value")) or _text(head.get("id")) or f"{report_id}-{index}",
            patient_id=patient_id or None,
            patient_birth_date=birth_date,
            patient_sex=codes.sex(gender),
            patient_race=_extension_code(patient, _RACE_URLS, codes.RACE),
            patient_ethnicity=_extension_code(patient, _ETHNICITY_URLS, codes.ETHNICITY),
            patient_postal_code=_text(_get(address, "postalCode")) or None,
            patient_state=_text(_get(address, "state")) or None,
            **first.model_dump(),
            specimen_collected_at=collected,
            specimen_type_code=next(filter(None, map(_specimen_type, specimens)), None),
            performing_lab_clia=_performing_lab_clia(resources, observation),
            ordering_provider_npi=_ordering_provider_npi(resources),
            observations=results,
        ),
        [],
    )


def _order_event(resources: _Resources, index: int) -> Issue | None:
    """`fhir.not_a_result` when the MessageHeader's event (eventCoding.code or eventUri) is an HL7 v2 order event."""
    header = resources.first("MessageHeader")
    if header is None:
        return None
    code, uri = _text(_get(header, "eventCoding", "code")), _text(header.get("eventUri"))
    if _ORDER_EVENT.fullmatch(code):
        field = "MessageHeader.eventCoding.code"
    elif _ORDER_EVENT_URI.search(uri):
        field = "MessageHeader.eventUri"
    else:
        return None
    return _issue(index, field, "fhir.not_a_result", f"{field} is an HL7 v2 order event: an order, not a result (R01)")


def _is_result(resources: _Resources, observation: dict[str, Any]) -> bool:
    """False for a status that carries no result. A missing status is only a warning (as ReportStream's lenient
    parser takes it): the Observation stays a result; any status present is read, so a malformed one is an error."""
    if "status" not in observation:
        resources.lenient.add((id(observation), "status"))
        return True
    return _text(observation.get("status")) not in NOT_RESULT_STATUSES


def _birth_date(patient: dict[str, Any]) -> str | None:
    """Patient.birthDate as YYYY-MM-DD; a year or year-month only is not a date and stays null."""
    text = _text(patient.get("birthDate"))
    return text if len(text) == 10 and iso_from_text(text) == text else None


def _extension_code(resource: dict[str, Any], urls: tuple[str, ...], code_set: codes.CodeSet) -> str | None:
    """Race or ethnicity from the US Core extension (ombCategory, else text) or the code-valued form RS and SR use."""
    for extension in _list(resource.get("extension")):
        if not isinstance(extension, dict) or extension.get("url") not in urls:
            continue
        for part in _list(extension.get("extension")):
            if isinstance(part, dict) and part.get("url") == "ombCategory":
                return codes.coded_or_text(code_set, _text(_get(part, "valueCoding", "code")), _text(_get(part, "valueCoding", "display")))
        concept = extension.get("valueCodeableConcept")
        coding = _get(concept, "coding", 0) or extension.get("valueCoding")
        found = codes.coded_or_text(code_set, _text(_get(coding, "code")), _text(_get(coding, "display")) or _text(_get(concept, "text")))
        if found:
            return found
        for part in _list(extension.get("extension")):
            if isinstance(part, dict) and part.get("url") == "text":
                return codes.coded_or_text(code_set, None, _text(part.get("valueString")))
    return None


def _specimen_type(specimen: dict[str, Any] | None) -> str | None:
    for coding in _list(_get(specimen, "type", "coding")):
        found = codes.specimen_type(_text(_get(coding, "code")), _text(_get(coding, "display")), _text(_get(coding, "system")))
        if found:
            return found
    return codes.specimen_type(None, _text(_get(specimen, "type", "text")))


def _identifiers(resource: dict[str, Any] | None, marks: frozenset[str]) -> list[tuple[str, bool]]:
    """(value, marked) of each identifier, for codes.identifier: marked means its system, type code, or (as
    ReportStream writes HL7's assigning authority) its `assigning-authority` namespace or universal id is in `marks`.
    """
    candidates = []
    for identifier in _list(_get(resource, "identifier")):
        found = {_text(_get(identifier, "system"))} | {_text(_get(c, "code")) for c in _list(_get(identifier, "type", "coding"))}
        for extension in _list(_get(identifier, "extension")):
            if _text(_get(extension, "url")).endswith("/assigning-authority"):
                found |= {_text(_get(part, "valueString")) for part in _list(_get(extension, "extension"))}
        candidates.append((_text(_get(identifier, "value")), bool(found & marks)))
    return candidates


def _performing_lab_clia(resources: _Resources, observation: dict[str, Any]) -> str | None:
    """The CLIA of the Organization performing the Observation (else the DiagnosticReport's performer): an
    identifier of the CLIA shape, else one typed CLIA, else the performer's first identifier."""
    performers = list(_list(observation.get("performer")))
    for report in resources.of_type("DiagnosticReport"):
        performers += _list(resources.use(report).get("performer"))
    candidates = [c for ref in performers for c in _identifiers(resources.follow(ref, "Organization"), _CLIA_MARKS)]
    # As HL7's OBX-23.10, the performing organization's identifier is its CLIA even when not typed as one (RADx
    # MARS self-tests use 00Z... pseudo-CLIAs).
    return codes.identifier(candidates, codes.CLIA) or next((value for value, _ in candidates if value), None)


def _ordering_provider_npi(resources: _Resources) -> str | None:
    """The NPI of the Practitioner (directly or through PractitionerRole) that requested the test."""
    candidates = []
    for request in resources.of_type("ServiceRequest"):
        requester = resources.use(request).get("requester")
        practitioner = resources.follow(requester, "Practitioner")
        role = resources.follow(requester, "PractitionerRole")
        if practitioner is None and role is not None:
            practitioner = resources.follow(role.get("practitioner"), "Practitioner")
        candidates += _identifiers(practitioner, _NPI_MARKS)
    return codes.identifier(candidates, codes.NPI)


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
    codings = _list(_get(observation, "code", "coding"))
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
        # A FHIR decimal is a JSON number, kept as sent (_text); anything else given is a value too, so that the
        # Observation counts as read and fhir.py's JSON type check rejects the item rather than drop the result.
        value = quantity.get("value")
        text = _text(value) or ("" if value is None or value == "" else "?")
        return text, _text(quantity.get("unit")) or _text(quantity.get("code"))
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
    if observation.get("valueBoolean") is not None:  # not a JSON boolean: read, so its type error rejects the item
        return _text(observation["valueBoolean"]) or "?", ""
    if "valueDateTime" in observation:  # e.g. an illness onset date asked at order entry
        text = _text(observation["valueDateTime"])
        return iso_from_text(text) or text, ""
    if "valueTime" in observation:
        return _text(observation["valueTime"]), ""
    return "", ""


def _specimens(resources: _Resources, observation: dict[str, Any]) -> list[dict[str, Any]]:
    """The Specimens to read, in order: the Observation's, its DiagnosticReport's, then any in the Bundle.

    ReportStream's bundles carry an empty placeholder Specimen for the OBR beside the SPM one, so the first
    with the element wanted is used, as HL7's first SPM with SPM-17 is.
    """
    refs = [observation.get("specimen")] + [
        ref for report in resources.of_type("DiagnosticReport") for ref in _list(report.get("specimen"))
    ]
    found = {id(s): s for s in (resources.find(ref, "Specimen") for ref in refs) if s is not None}
    for specimen in resources.of_type("Specimen"):
        found.setdefault(id(specimen), specimen)
    return [s for s in found.values() if resources.use(s) is not None]


def _collected_at(
    specimens: list[dict[str, Any]], reports: list[dict[str, Any]], observation: dict[str, Any], index: int
) -> Collected:
    """The first Specimen.collection.collected[x], else DiagnosticReport.effective[x], else Observation.effective[x]
    (HL7's SPM-17, OBR-7, OBX-14), by the rule both formats share. Each Specimen's and DiagnosticReport's elements
    are candidates: a year-only one passes over to the next."""
    candidates = [
        (field, _get(specimen, "collection", *path))
        for specimen in specimens
        for field, path in (("Specimen.collection.collectedDateTime", ("collectedDateTime",)),
                            ("Specimen.collection.collectedPeriod.start", ("collectedPeriod", "start")))
    ] + [  # as HL7's OBR-7, which ReportStream maps to and from DiagnosticReport.effective[x]
        (f"DiagnosticReport.{field}", _get(report, *path))
        for report in reports
        for field, path in (("effectiveDateTime", ("effectiveDateTime",)), ("effectivePeriod.start", ("effectivePeriod", "start")))
    ] + [
        ("Observation.effectiveDateTime", observation.get("effectiveDateTime")),
        ("Observation.effectivePeriod.start", _get(observation, "effectivePeriod", "start")),
    ]
    return collected_at(((field, _text(value)) for field, value in candidates), _COLLECTED, index)


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


def _list(value: Any) -> list[Any]:
    """A JSON array as is; any other JSON type (a model problem fhir.py reports) reads as empty."""
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return ""
    if isinstance(value, Decimal):
        return _decimal_text(value)
    return str(value).strip()


def _decimal_text(value: Decimal) -> str:
    """A JSON number as sent: the parser keeps every digit, and positional notation writes them back (`4.10`,
    `0.0000001`; str() would give `1E-7`). Only a number sent with a positive exponent keeps one (`1E+2`): written
    out, `100` would claim more precision than was sent."""
    exponent = value.as_tuple().exponent
    return format(value, "f") if isinstance(exponent, int) and exponent <= 0 else str(value)

