"""The OpenAPI 3.1 document of the HTTP API (GET /api/openapi.json), built from the code's own models and rules.

Bodies come from the pydantic models the handlers answer with, bounds and patterns from the modules that enforce
them, so the document cannot drift from the code; a schemathesis test fuzzes the running service against it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic.json_schema import models_json_schema

from shared import idempotency, intake, listing, tokens
from shared.formats import FORMATS
from shared.lifecycle import Status
from shared.media import HL7, JSON
from shared.models import AcceptedReport, Health, ReportPage, StatusRecord
from shared.problems import PROBLEM_JSON, ProblemDetails
from shared.reportstream import SubmissionHistory

REF = "#/components/schemas/{model}"

# Reusable responses: name -> (status, description, headers).
_PROBLEMS: dict[str, tuple[str, str, list[str]]] = {
    "BadRequest": ("400", "A malformed request: query parameter, header or body (problem+json says which).", []),
    "Unauthorized": ("401", "Missing, unknown, revoked or disabled API key.", ["WWW-Authenticate"]),
    "NotFound": ("404", "No such report for this sender (another sender's report gets the same answer).", []),
    "Conflict": ("409", "A request with the same Idempotency-Key is still being stored; retry.", ["Retry-After"]),
    "TooLarge": ("413", "The body is over MAX_REPORT_BYTES.", []),
    "UnsupportedMediaType": ("415", "Content-Type is not one of the supported formats, or is malformed.", []),
    "KeyReused": ("422", "The Idempotency-Key was used before with a different body or Content-Type.", []),
    "Unavailable": ("503", "Storage is unavailable and nothing was stored (or, when the detail says so, storage did "
                           "not answer and the outcome is unknown); retry after Retry-After.", ["Retry-After"]),
    "Internal": ("500", "An unexpected failure, as problem+json without internals; for a submission, before anything "
                        "was stored.", []),
    "ReadUnavailable": ("503", "Storage is unavailable; retry after Retry-After.", ["Retry-After"]),
}
# Problems every authenticated read can answer.
_READ_PROBLEMS = ("Unauthorized", "ReadUnavailable", "Internal")

_HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "The report's status URL: built from PUBLIC_BASE_URL, else from a valid "
                                "X-Forwarded-Host or Host (relative when neither is valid).",
                 "required": True, "schema": {"type": "string", "format": "uri-reference"}},
    "Retry-After": {"description": "Seconds to wait before polling or retrying.", "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "WWW-Authenticate": {"description": "The scheme to authenticate with.", "required": True,
                         "schema": {"type": "string", "pattern": "^Bearer"}},
    "HistoryLocation": {"description": "The submission's history URL (GET /api/waters/report/{id}/history).",
                        "required": True, "schema": {"type": "string", "format": "uri-reference"}},
    "Cache-Control": {"description": "Tokens and token errors are never cached.", "required": True,
                      "schema": {"type": "string", "enum": ["no-store"]}},
    "Idempotent-Replayed": {"description": "Present (true) when this answer replays an earlier request's.",
                            "schema": {"type": "string", "enum": ["true"]}},
}


def _schemas() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "serialization") for m in (StatusRecord, AcceptedReport, ReportPage, Health, ProblemDetails,
                                         SubmissionHistory)],
        ref_template=REF,
    )
    schemas: dict[str, Any] = defs["$defs"]
    schemas.pop(Status.__name__, None)  # written inline below, like the other fields' enums
    for schema in schemas.values():
        # Every field is always in the JSON the service sends (null when unset), defaults or not.
        schema["required"] = list(schema.get("properties", {}))
    statuses = [s.value for s in Status]
    for name in ("StatusRecord", "AcceptedReport"):
        schemas[name]["properties"]["status"] = {"title": "Status", "type": "string", "enum": statuses}
    return schemas


_OAUTH_SCHEMAS: dict[str, Any] = {
    "TokenResponse": {"type": "object", "required": ["access_token", "token_type", "expires_in", "scope"],
                      "properties": {"access_token": {"type": "string"}, "token_type": {"enum": ["bearer"]},
                                     "expires_in": {"type": "integer"}, "scope": {"type": "string"},
                                     "sub": {"type": "string"}, "expires_at_seconds": {"type": "integer"}}},
    "OAuthError": {"type": "object", "required": ["error", "error_description"],
                   "properties": {"error": {"enum": ["invalid_request", "invalid_client", "invalid_scope",
                                                     "unsupported_grant_type"]},
                                  "error_description": {"type": "string"}}},
}


def _problem_response(description: str, headers: list[str]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="ProblemDetails")}}},
    }
    if headers:
        response["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return response


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _json_response(description: str, model: str, headers: list[str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {JSON: {"schema": {"$ref": REF.format(model=model)}}}}
    if headers:
        response["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return response


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


def _submit() -> dict[str, Any]:
    accepted = _json_response("Stored: processing follows. `status` is `queued`, or `received` when the queue "
                              "message could not be sent yet (the reconciler sends it).", "AcceptedReport",
                              ["Location", "Retry-After", "Idempotent-Replayed"])
    # A Media Type Object has no `description` (OpenAPI 3.1): the schema carries it.
    accepted["content"][HL7] = {"schema": {"type": "string",
                                           "description": "With `Accept: application/hl7-v2` on an HL7 v2 report: "
                                                          "the commit acknowledgement (MSA|CA)."}}
    return {
        "operationId": "submitReport",
        "summary": "Submit a report (stored durably, processed later)",
        "description": "`Accept: application/hl7-v2` on an HL7 v2 report asks for an HL7 commit acknowledgement "
                       "instead of JSON.",
        "security": [{"bearer": []}],
        "parameters": [
            _header("Idempotency-Key", "Same key and same body: the original answer again, no new report.",
                    {"type": "string", "minLength": 1, "maxLength": 255,
                     "pattern": idempotency.KEY.pattern}),
            _header("Content-Digest", "RFC 9530 `sha-256=:<base64>:`; a mismatch is a 400 and nothing is stored.",
                    {"type": "string"}),
        ],
        "requestBody": {
            "required": True,
            "description": "The report as the sender has it; `charset` and other parameters are allowed.",
            "content": {media: {"schema": {"type": "string"}} for media in FORMATS},
        },
        "responses": {
            "202": accepted,
            **{code: _ref(name) for name, (code, _, _) in _PROBLEMS.items()
               if name not in ("NotFound", "ReadUnavailable")},
        },
    }


def _list() -> dict[str, Any]:
    return {
        "operationId": "listReports",
        "summary": "The caller's reports, newest first, a page at a time",
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "status", "in": "query", "required": False,
             "description": "Only reports in this status. A `received` report (the queue was unreachable at "
                            "intake) is listed only with `status=received` until the reconciler queues it.",
             "schema": {"enum": [s.value for s in Status]}},
            {"name": "since", "in": "query", "required": False,
             "description": "Only reports updated at or after this ISO 8601 date-time.",
             "schema": {"type": "string", "format": "date-time"}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": listing.MAX_LIMIT,
                        "default": listing.DEFAULT_LIMIT}},
            {"name": "cursor", "in": "query", "required": False,
             "description": "`next_cursor` of the previous page.",
             "schema": {"type": "string", "pattern": listing.CURSOR.pattern}},
        ],
        "responses": {"200": _json_response("One page.", "ReportPage"), "400": _ref("BadRequest"),
                      **_read_problems()},
    }


def _read() -> dict[str, Any]:
    return {
        "operationId": "getReport",
        "summary": "One report's status record",
        "security": [{"bearer": []}],
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": _json_response("Terminal: processed, rejected or failed.", "StatusRecord"),
            "202": _json_response("Not terminal yet: poll again after Retry-After.", "StatusRecord",
                                  ["Retry-After"]),
            "404": _ref("NotFound"),
            **_read_problems(),
        },
    }


def _client_header() -> dict[str, Any]:
    return _header("client", "The sender to act as (`org.sender`): required with an organisation-wide token, "
                             "optional with an API key or a one-sender token (must then name that sender).",
                   {"type": "string", "maxLength": 200})


def _token() -> dict[str, Any]:
    fields = {
        "scope": {"type": "string", "description": "`org.sender.report` or `org.*.report`."},
        "grant_type": {"type": "string", "enum": [tokens.GRANT_TYPE]},
        "client_assertion_type": {"type": "string", "enum": [tokens.ASSERTION_TYPE]},
        "client_assertion": {"type": "string", "description": "The sender's JWT (RS256, RS384 or ES384)."},
    }
    oauth_error = {"content": {JSON: {"schema": {"$ref": REF.format(model="OAuthError")}}},
                   "headers": {"Cache-Control": {"$ref": "#/components/headers/Cache-Control"}}}
    return {
        "operationId": "token",
        "summary": "Trade a signed JWT assertion for an access token (SMART Backend Services, as ReportStream)",
        "description": "The form may come URL-encoded or, as SimpleReport sends it, as plain `name=value` pairs "
                       "joined by `&`.",
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": fields}}}},
        "responses": {
            "200": {"description": "The access token (valid for `expires_in` seconds).",
                    "content": {JSON: {"schema": {"$ref": REF.format(model="TokenResponse")}}},
                    "headers": {"Cache-Control": {"$ref": "#/components/headers/Cache-Control"}}},
            "400": {"description": "A malformed request (RFC 6749 section 5.2).", **oauth_error},
            "401": {"description": "The assertion is refused: invalid_client.", **oauth_error},
            "500": _ref("Internal"),
            "503": _ref("ReadUnavailable"),
        },
    }


def _waters() -> dict[str, Any]:
    submit = _submit()
    created = _json_response("Stored: processing follows (`overallStatus` `Received`).", "SubmissionHistory",
                             ["Idempotent-Replayed"])
    created["headers"]["Location"] = {"$ref": "#/components/headers/HistoryLocation"}
    return {
        "operationId": "submitWaters",
        "summary": "Submit a report as to ReportStream's /api/waters: the same intake, answered 201",
        "description": "Stored and processed exactly as POST /api/reports. `processing`, `x-functions-key` and "
                       "`x-api-version` are accepted and ignored.",
        "security": [{"bearer": []}],
        "parameters": [
            *submit["parameters"], _client_header(),
            _header("payloadName", "The sender's name for the file, kept as `externalName`.",
                    {"type": "string", "pattern": intake.EXTERNAL_NAME.pattern}),
        ],
        "requestBody": submit["requestBody"],
        "responses": {
            "201": created,
            **{code: value for code, value in submit["responses"].items() if code != "202"},
        },
    }


def _history() -> dict[str, Any]:
    return {
        "operationId": "submissionHistory",
        "summary": "ReportStream's submission history of one report",
        "security": [{"bearer": []}],
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "description": "The report id, as a UUID or a ULID.", "schema": {"type": "string"}},
                       _client_header()],
        "responses": {"200": _json_response("The submission history.", "SubmissionHistory"),
                      "404": _ref("NotFound"), **_read_problems()},
    }


def _validate() -> dict[str, Any]:
    return {
        "operationId": "validate",
        "summary": "Check a report without sending it: processing's parsing and validation, nothing stored",
        "security": [{"bearer": []}],
        "parameters": [_client_header()],
        "requestBody": {"required": True, "description": "The report; at most VALIDATE_MAX_BYTES.",
                        "content": {media: {"schema": {"type": "string"}} for media in FORMATS}},
        "responses": {
            "200": _json_response("`overallStatus` `Valid`, or `Error` with the errors found.", "SubmissionHistory"),
            "400": _ref("BadRequest"), "413": _ref("TooLarge"), "415": _ref("UnsupportedMediaType"),
            **_read_problems(),
        },
    }


def _read_problems() -> dict[str, Any]:
    return {_PROBLEMS[name][0]: _ref(name) for name in _READ_PROBLEMS}


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The whole OpenAPI document (paths carry the `api` route prefix, so the server URL is the host's root)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Lab report intake",
            "version": "1",
            "description": "Laboratories post reports (HL7 v2, FHIR, CSV); they are stored at once and processed "
                           "later. Errors are RFC 9457 problem+json.",
        },
        "paths": {
            "/api/reports": {"post": _submit(), "get": _list()},
            "/api/reports/{id}": {"get": _read()},
            "/api/token": {"post": _token()},
            "/api/waters": {"post": _waters()},
            "/api/waters/report/{id}/history": {"get": _history()},
            "/api/validate": {"post": _validate()},
            "/api/health": {"get": {
                "operationId": "health",
                "summary": "Whether storage answers, and the queue depths (anonymous)",
                "responses": {"200": _json_response("Storage answers.", "Health"),
                              "503": _ref("Unavailable")},
            }},
            "/api/openapi.json": {"get": {
                "operationId": "openapi",
                "summary": "This document (anonymous)",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A sender API key from `shared.admin senders add`, or an "
                                                          "access token from POST /api/token (also accepted bare: "
                                                          "`Authorization: <token>`)."}},
            "schemas": {**_schemas(), **_OAUTH_SCHEMAS},
            "headers": _HEADERS,
            "responses": {name: _problem_response(description, headers)
                          for name, (_, description, headers) in _PROBLEMS.items()},
        },
    }
