"""Pydantic models at the service's boundaries: queue messages, status records, issues and normalised items."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.lifecycle import Status


class QueueMessage(BaseModel):
    """The work signal on the `reports` queue : small, versioned, never the report itself.

    Optional fields are left out of the JSON when unset, and unknown ones are ignored, so older and newer
    processors read each other's messages."""

    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    id: str
    sender: str
    blob: str
    sha256: str
    content_type: str
    # W3C trace context of the report's ingest, so processing joins its trace; absent when telemetry was off.
    traceparent: str | None = None
    # Set on a message sent again to wait out a downstream or storage outage (shared/deferral.py): since when the
    # report waits, how many times it was put off, and whether only its delivery is left to do.
    deferred_since: str | None = None
    deferrals: int | None = None
    deliver_only: bool | None = None


class Issue(BaseModel):
    """One error or warning about a report or one of its items. `code` values are stable and documented."""

    scope: Literal["report", "item"]
    index: int | None = None
    field: str | None = None
    code: str
    message: str


class ExceptionEntry(BaseModel):
    """One failed processing try; kept across replays so operators see the whole history."""

    attempt: int
    at: str
    type: str
    message: str


class ItemCounts(BaseModel):
    total: int
    accepted: int
    rejected: int


class Delivery(BaseModel):
    status: Literal["pending", "delivered", "failed"]
    at: str | None = None
    http_status: int | None = None


class StatusRecord(BaseModel):
    """What GET /api/reports/{id} returns: the status row, as the sender sees it."""

    id: str
    sender: str
    status: Status
    content_type: str
    size_bytes: int
    sha256: str
    received_at: str
    updated_at: str
    completed_at: str | None = None
    attempts: int = 0
    items: ItemCounts | None = None
    errors: list[Issue] = Field(default_factory=list)
    warnings: list[Issue] = Field(default_factory=list)
    exceptions: list[ExceptionEntry] = Field(default_factory=list)
    delivery: Delivery | None = None
    external_name: str | None = None  # the sender's name for the file (ReportStream's payloadName)


class AcceptedReport(BaseModel):
    """The 202 answer to POST /api/reports: enough to find the report again, and proof of what was stored."""

    id: str
    status: str  # queued or received; an idempotent replay shows the report's current status
    sender: str
    content_type: str
    size_bytes: int
    sha256: str
    received_at: str
    status_url: str


class ReportPage(BaseModel):
    """One page of GET /api/reports, newest first; pass `next_cursor` back as `cursor` for the next page."""

    reports: list[StatusRecord]
    next_cursor: str | None


class Health(BaseModel):
    """GET /api/health when storage answers."""

    status: Literal["ok"]
    queue_depth: int
    poison_depth: int


class Observation(BaseModel):
    """One result of an item. A panel (several OBX, several Observations) keeps every result here."""

    test_code: str
    test_name: str | None = None
    result: str  # a coded result gives its code, a number its digits as sent, text its text
    result_code: str | None = None  # SNOMED CT code of a coded qualitative result, e.g. 260373001
    result_text: str | None = None  # display text of a coded result, e.g. "Detected"
    result_units: str | None = None


class NormalisedItem(BaseModel):
    """One accepted item, as one line of `results/{sender}/{id}.ndjson`: the ELR core (docs/formats.md).

    Field order is fixed and every field is always written, so the same raw report always gives the same bytes.
    The same values come out whatever the source format; a field the source does not carry is null, never guessed.
    The top-level test and result fields are those of the item's first result; `observations` holds them all.
    """

    report_id: str
    item_index: int
    source_format: Literal["hl7v2", "fhir", "csv"]
    message_id: str
    patient_id: str | None = None
    patient_birth_date: str | None = None  # YYYY-MM-DD
    patient_sex: Literal["F", "M", "O", "U"] | None = None  # HL7 table 0001 letters
    patient_race: str | None = None  # CDC race code when known, else the sender's text
    patient_ethnicity: str | None = None  # CDC ethnicity code when known, else the sender's text
    patient_postal_code: str | None = None
    patient_state: str | None = None
    test_code: str
    test_name: str | None = None
    result: str
    result_code: str | None = None
    result_text: str | None = None
    result_units: str | None = None
    specimen_collected_at: str | None = None  # ISO 8601, the sender's offset kept, none added
    specimen_type_code: str | None = None  # SNOMED CT
    performing_lab_clia: str | None = None
    ordering_provider_npi: str | None = None
    observations: list[Observation] = Field(default_factory=list)
