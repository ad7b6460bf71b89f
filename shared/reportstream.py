"""ReportStream's view of a report: the submission history body (`DetailedSubmissionHistory`) that its senders'
clients read, built from the status record. The status mapping lives here and nowhere else."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field
from ulid import ULID

from shared import row_limits
from shared.lifecycle import Status
from shared.models import Issue, StatusRecord

OverallStatus = Literal["Received", "Waiting to Deliver", "Delivered", "Error", "Not Delivering", "Valid"]
BODY_FORMATS = {"application/hl7-v2": "HL7", "application/fhir+json": "FHIR", "application/fhir+ndjson": "FHIR",
                "text/csv": "CSV"}


class FeedbackMessage(BaseModel):
    """One consolidated error or warning: the same problem on several items is one entry with their indices."""

    scope: Literal["parameter", "report", "item"]
    indices: list[int] | None = Field(default=None, description="1-based item numbers (item scope only)")
    trackingIds: list[str] | None = None
    field: str | None = None
    message: str
    errorCode: str = Field(description="This service's stable issue code (see docs/formats.md)")


class Destination(BaseModel):
    organization: str
    organization_id: str
    service: str
    itemCount: int
    itemCountBeforeQualityFiltering: int
    sending_at: str | None = None
    filteredReportRows: list[str] = Field(default_factory=list)
    filteredReportItems: list[dict[str, Any]] = Field(default_factory=list)
    sentReports: list[dict[str, Any]] = Field(default_factory=list)
    downloadedReports: list[dict[str, Any]] = Field(default_factory=list)


class SubmissionHistory(BaseModel):
    """ReportStream's `DetailedSubmissionHistory`, field for field as its clients read it."""

    id: str | None = Field(description="The report id as a UUID (the ULID's 128 bits); null for a validation")
    submissionId: int | None = Field(default=None, description="Always null: use id (ReportStream's numeric action "
                                                               "id has no counterpart here)")
    reportId: str | None = None
    overallStatus: OverallStatus
    timestamp: str
    plannedCompletionAt: str | None = None
    actualCompletionAt: str | None = None
    sender: str | None
    reportItemCount: int | None
    errorCount: int
    warningCount: int
    httpStatus: int
    destinations: list[Destination] = Field(default_factory=list)
    destinationCount: int
    actionName: Literal["receive", "none"]
    externalName: str | None = None
    topic: str | None = None
    bodyFormat: str
    fileName: str = ""
    errors: list[FeedbackMessage]
    warnings: list[FeedbackMessage]


def to_uuid(report_id: str) -> str:
    return str(ULID.from_str(report_id).to_uuid())


def from_any(text: str) -> str | None:
    """A report id given as a ULID or as ReportStream's UUID form, as the ULID; None if it is neither."""
    text = text.strip()
    if len(text) == 26:
        try:
            return str(ULID.from_str(text.upper()))
        except ValueError:
            return None
    if len(text) in (32, 36):
        try:
            return str(ULID.from_uuid(uuid.UUID(text)))
        except ValueError:
            return None
    return None


def overall_status(record: StatusRecord) -> OverallStatus:
    current = record.status
    if current is Status.PROCESSING and record.delivery is not None and record.delivery.status == "pending":
        return "Waiting to Deliver"  # the results are made; the downstream is waited for
    if current in (Status.RECEIVED, Status.QUEUED, Status.PROCESSING):
        return "Received"
    if current is Status.REJECTED:
        return "Error"
    if current is Status.FAILED:
        return "Not Delivering"
    if record.delivery is not None and record.delivery.status != "delivered":
        return "Waiting to Deliver"
    return "Delivered"  # delivered downstream, or no downstream: the results are with the agency


def feedback(issues: list[Issue]) -> tuple[list[FeedbackMessage], int]:
    """ReportStream's consolidated messages, and how many issues they stand for (counting those a status row
    could not list)."""
    merged: dict[tuple[str, str | None, str, str], FeedbackMessage] = {}
    count = 0
    for issue in issues:
        if issue.code == row_limits.ISSUES_TRUNCATED:
            count += row_limits.omitted(issue.model_dump())
            continue
        count += 1
        key = (issue.scope, issue.field, issue.code, issue.message)
        entry = merged.get(key)
        if entry is None:
            entry = merged[key] = FeedbackMessage(
                scope=issue.scope, field=issue.field, message=issue.message, errorCode=issue.code,
                indices=[] if issue.scope == "item" else None,
            )
        if issue.index is not None and entry.indices is not None:
            entry.indices.append(issue.index + 1)
    return list(merged.values()), count


def history(record: StatusRecord, http_status: int = 200) -> SubmissionHistory:
    errors, error_count = feedback(record.errors)
    warnings, warning_count = feedback(record.warnings)
    destinations = _destinations(record)
    report_uuid = to_uuid(record.id)
    return SubmissionHistory(
        id=report_uuid, reportId=report_uuid, overallStatus=overall_status(record), timestamp=record.received_at,
        actualCompletionAt=record.completed_at, sender=record.sender,
        reportItemCount=record.items.total if record.items else None, errorCount=error_count,
        warningCount=warning_count, httpStatus=http_status, destinations=destinations,
        destinationCount=len(destinations), actionName="receive", externalName=record.external_name,
        bodyFormat=_body_format(record.content_type), errors=errors, warnings=warnings,
    )


def validation(sender: str | None, content_type: str, timestamp: str, total: int, errors: list[Issue],
               warnings: list[Issue]) -> SubmissionHistory:
    """The answer to POST /api/validate: `Valid` when nothing is wrong, else `Error` with what is."""
    error_list, error_count = feedback(errors)
    warning_list, warning_count = feedback(warnings)
    return SubmissionHistory(
        id=None, overallStatus="Error" if error_count else "Valid", timestamp=timestamp, sender=sender,
        reportItemCount=total, errorCount=error_count, warningCount=warning_count, httpStatus=200,
        destinationCount=0, actionName="none", bodyFormat=_body_format(content_type), errors=error_list,
        warnings=warning_list,
    )


def _body_format(content_type: str) -> str:
    return BODY_FORMATS.get(content_type.split(";", 1)[0].strip().lower(), "")


def _destinations(record: StatusRecord) -> list[Destination]:
    if record.delivery is None:
        return []
    accepted = record.items.accepted if record.items else 0
    return [Destination(
        organization="Downstream (DELIVERY_URL)", organization_id="downstream", service="delivery",
        itemCount=accepted, itemCountBeforeQualityFiltering=record.items.total if record.items else 0,
        sending_at=record.delivery.at,
    )]
