"""The core's refusals: what a request asked that cannot be done, and why, with no HTTP attached. The HTTP edge
(shared/problems.py) maps each kind to its problem+json answer; the admin CLI and the processor need no HTTP."""

from __future__ import annotations

from enum import Enum


class Kind(str, Enum):
    BAD_REQUEST = "bad-request"
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type"
    TOO_LARGE = "too-large"
    IN_PROGRESS = "idempotency-key-in-progress"  # the same Idempotency-Key's request is still storing
    KEY_REUSED = "idempotency-key-reused"  # the Idempotency-Key came with another body
    UNAVAILABLE = "storage-unavailable"


class Refused(Exception):
    """A request refused by the core. `slug` names the precise reason where a kind has several (a bad cursor, an
    empty body); `retry_after` says when trying again makes sense."""

    def __init__(self, kind: Kind, detail: str, *, slug: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.slug = slug or kind.value
        self.retry_after = retry_after


def bad_request(detail: str, slug: str = Kind.BAD_REQUEST.value) -> Refused:
    return Refused(Kind.BAD_REQUEST, detail, slug=slug)


def unavailable(retry_after: int, detail: str = "Storage is unavailable; nothing was stored. Retry later.") -> Refused:
    return Refused(Kind.UNAVAILABLE, detail, retry_after=retry_after)


def unsupported_media_type(detail: str) -> Refused:
    return Refused(Kind.UNSUPPORTED_MEDIA_TYPE, detail)


def too_large(size: int, limit: int, setting: str) -> Refused:
    return Refused(Kind.TOO_LARGE, f"The report is {size} bytes; the limit is {limit} ({setting}).")
