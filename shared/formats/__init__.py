"""Report formats: turn a raw report into a stream of per-item results, whatever its content type."""

from __future__ import annotations

from collections.abc import Iterator

from shared.formats.items import ContentError as ContentError
from shared.formats.items import ItemResult as ItemResult
from shared.formats.items import item_issue as item_issue

# Media type (lower case, without parameters) -> format name used in `source_format`.
FORMATS: dict[str, str] = {
    "application/hl7-v2": "hl7v2",
    "application/fhir+json": "fhir",
    "application/fhir+ndjson": "fhir",
    "text/csv": "csv",
}


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
