"""The one error shape of the HTTP API: RFC 9457 problem details (`application/problem+json`)."""

from __future__ import annotations

import azure.functions as func
from pydantic import BaseModel

from shared.errors import Kind, Refused

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:lab-intake:problem:"


class ProblemDetails(BaseModel):
    """The body of every error answer (RFC 9457); `type` is a stable URN a client can branch on."""

    type: str
    title: str
    status: int
    detail: str


class Problem(Exception):
    """Raised anywhere in request handling; the HTTP edge turns it into a problem+json response."""

    def __init__(
        self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.type = TYPE_PREFIX + slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})

    def details(self) -> ProblemDetails:
        return ProblemDetails(type=self.type, title=self.title, status=self.status, detail=self.detail)

    def response(self) -> func.HttpResponse:
        return func.HttpResponse(
            self.details().model_dump_json(), status_code=self.status, headers=self.headers, mimetype=PROBLEM_JSON
        )


def unauthorized(detail: str = "A valid sender API key is required: Authorization: Bearer <key>.") -> Problem:
    return Problem(401, "unauthorized", "Unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="reports"'})


def not_found(detail: str = "No such report.") -> Problem:
    return Problem(404, "not-found", "Not Found", detail)


def bad_request(detail: str, slug: str = "bad-request") -> Problem:
    return Problem(400, slug, "Bad Request", detail)


def unavailable(retry_after: int, detail: str = "Storage is unavailable; nothing was stored. Retry later.") -> Problem:
    return Problem(503, "storage-unavailable", "Service Unavailable", detail, {"Retry-After": str(retry_after)})


def unsupported_media_type(detail: str) -> Problem:
    return Problem(415, "unsupported-media-type", "Unsupported Media Type", detail)


# The core's refusals as HTTP answers: kind -> (status, title). One table, here at the edge.
ANSWERS: dict[Kind, tuple[int, str]] = {
    Kind.BAD_REQUEST: (400, "Bad Request"),
    Kind.UNSUPPORTED_MEDIA_TYPE: (415, "Unsupported Media Type"),
    Kind.TOO_LARGE: (413, "Content Too Large"),
    Kind.IN_PROGRESS: (409, "Conflict"),
    Kind.KEY_REUSED: (422, "Unprocessable Content"),
    Kind.UNAVAILABLE: (503, "Service Unavailable"),
}


def of(refused: Refused) -> Problem:
    status, title = ANSWERS[refused.kind]
    headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after is not None else None
    return Problem(status, refused.slug, title, refused.detail, headers)
