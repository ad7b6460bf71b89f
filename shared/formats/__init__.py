"""Report formats: turn a raw report into a stream of per-item results, whatever its content type."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.models import Issue, NormalisedItem

# Media type (lower case, without parameters) -> format name used in `source_format`.
FORMATS: dict[str, str] = {
    "application/hl7-v2": "hl7v2",
    "application/fhir+json": "fhir",
    "application/fhir+ndjson": "fhir",
    "text/csv": "csv",
}


@dataclass
class ItemResult:
    """The outcome for one item: `item` is set when accepted; `errors` explain a rejection."""

    index: int
    item: NormalisedItem | None
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


class ContentError(Exception):
    """The report as a whole is unusable (e.g. not HL7 at all, undecodable, no header): it is `rejected`."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.issue = Issue(scope="report", code=code, message=message, field=field)


def item_issue(index: int, field: str | None, code: str, message: str) -> Issue:
    """An error or warning about one item: the one shape every format's parser reports in."""
    return Issue(scope="item", index=index, field=field, code=code, message=message)


def media_type(content_type: str) -> str:
    """`text/csv; charset=utf-8` -> `text/csv`."""
    return content_type.split(";", 1)[0].strip().lower()


def parse_report(raw: bytes, content_type: str, report_id: str) -> Iterator[ItemResult]:
    """Yield one ItemResult per item, in order, lazily; raise ContentError for report-level problems."""
    kind = media_type(content_type)
    if kind == "application/hl7-v2":
        from shared.formats import hl7v2

        return hl7v2.parse(raw, report_id)
    if kind == "application/fhir+json":
        from shared.formats import fhir

        return fhir.parse_bundle(raw, report_id)
    if kind == "application/fhir+ndjson":
        from shared.formats import fhir

        return fhir.parse_ndjson(raw, report_id)
    if kind == "text/csv":
        from shared.formats import csv

        return csv.parse(raw, report_id)
    raise ContentError("report.unsupported_content_type", f"unsupported content type {kind!r}")
