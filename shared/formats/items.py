"""What every parser yields: one ItemResult per item, issues in one shape, ContentError for a report unusable as a
whole."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.models import Issue, NormalisedItem


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
