"""The HTTP edge: turns azure.functions requests into calls on the core and results into responses."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func
from azure.core.exceptions import AzureError

from shared import (
    auth,
    errors,
    hl7_ack,
    intake,
    listing,
    logs,
    lookup,
    openapi,
    poison,
    problems,
    processing,
    reportstream,
    telemetry,
    tokens,
)
from shared.clock import now_iso, parse_iso, to_iso
from shared.config import Settings, SettingsError, get_settings
from shared.lifecycle import TERMINAL, Status
from shared.media import HL7, JSON
from shared.models import AcceptedReport, Health, Issue, ReportPage, StatusRecord
from shared.problems import (
    Problem,
    bad_request,
    not_found,
    unauthorized,
    unavailable,
    unsupported_media_type,
)
from shared.storage import Storage, get_storage, is_transient

log = logging.getLogger(__name__)

ROUTE_PREFIX = "/api"
# The only hosts that may go into a Location: a DNS name or IP literal, then an optional port.
HOST_PORT = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.\-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::(?P<port>\d{1,5}))?$")
# A media type (RFC 9110 type/subtype) with parameters in printable ASCII, not parsed further: the value is stored
# as a blob header and a row property, so anything longer than a real one is refused before it reaches storage
# (Azure refuses oversized headers, which the sender would otherwise see as a 503 "retry", forever).
MAX_CONTENT_TYPE = 255
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
CONTENT_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}(?:[ \t]*;[\t\x20-\x7e]*)?$")
ASCII_DIGITS = re.compile(r"^[0-9]{1,9}$")

Handler = Callable[[func.HttpRequest, Storage, Settings], func.HttpResponse]


def _json(body: object, status_code: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, separators=(",", ":")), status_code=status_code, headers=headers or {}, mimetype=JSON
    )


def guarded(handler: Handler, req: func.HttpRequest) -> func.HttpResponse:
    """Run a handler so that every failure becomes problem+json: never a stack trace, never a false 202."""
    settings: Settings | None = None
    try:
        settings = get_settings()
        return handler(req, get_storage(), settings)
    except Problem as problem:
        return problem.response()
    except errors.Refused as refused:
        return problems.of(refused).response()
    except auth.AuthError as refused:
        return unauthorized(str(refused)).response()
    except tokens.TokenError as refused:
        return _oauth_error(refused)
    except AzureError as exc:
        log.warning("storage unavailable during %s %s: %s", req.method, _path(req), type(exc).__name__)
        if is_transient(exc):
            return unavailable(settings.retry_after_seconds if settings else 1).response()
        log.error("storage error during %s %s: %s", req.method, _path(req), logs.describe(exc))
    except Exception as exc:  # noqa: BLE001 - the edge answers every failure as problem+json
        # Type and place only: the message and traceback of a library's exception can quote the request's values.
        log.error("unhandled error during %s %s: %s", req.method, _path(req), logs.describe(exc))
    detail = "The request failed unexpectedly" + (": nothing was stored." if req.method == "POST" else ".")
    return Problem(500, "internal", "Internal Server Error", detail).response()


async def answer(handler: Handler, req: func.HttpRequest) -> func.HttpResponse:
    """`guarded(handler, req)` on the HTTP functions' own threads (`on_http_threads`)."""
    return await on_http_threads(guarded, handler, req)


async def on_http_threads(call: Callable[..., func.HttpResponse], *args: Any) -> func.HttpResponse:
    """Run a sender-facing HTTP function's work on threads of its own, for the functions that are async for this
    alone (intake, status, listings, tokens, health).

    The worker runs sync functions on one pool (PYTHON_THREADPOOL_THREAD_COUNT, by default CPUs + 4: six threads
    on two cores), which processing shares: a few large reports being parsed, or deliveries waiting on a slow
    downstream, would hold every thread, and senders would wait for their 202 behind them. These functions wait on
    storage, not on the CPU, so they get threads of their own (HTTP_THREADS): more reports in flight, and their rows
    share transactions (shared/group_commit.py). A request's body is in this process whether or not a thread is
    free, so more threads do not hold more bodies. `POST /api/validate` parses as processing does and stays on the
    worker's pool, which bounds its memory with processing's."""
    context = contextvars.copy_context()  # the invocation's trace and log context, as a sync function has it
    return await asyncio.get_running_loop().run_in_executor(_http_pool(), context.run, call, *args)


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _http_pool() -> ThreadPoolExecutor:
    """Made on first use, in the process that runs the functions (never before devhost forks its workers)."""
    global _pool
    if _pool is not None:  # every request after the first: no lock
        return _pool
    with _pool_lock:
        if _pool is None:
            try:
                threads = get_settings().http_threads
            except SettingsError:
                # `guarded` answers the bad setting as it answers every request
                threads = Settings.model_fields["http_threads"].default
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="http")
        return _pool


def _own_url(req: func.HttpRequest) -> tuple[str, str, str]:
    """Scheme, host[:port] and path of the request URL; empty where the URL (built from a Host header the front end
    let through, such as `[1]`) does not parse."""
    try:
        own = urlsplit(req.url)
        return own.scheme, own.netloc, own.path
    except ValueError:
        return "", "", ""


def _path(req: func.HttpRequest) -> str:
    return _own_url(req)[2] or "?"


def authenticate(req: func.HttpRequest, storage: Storage, settings: Settings, sending: bool = True) -> auth.Principal:
    """The caller, from an API key or an access token (Bearer or bare), and the `client` header or parameter."""
    client = req.headers.get("client") or req.params.get("client")
    return auth.authenticate(storage, req.headers.get("authorization"), client, settings.auth_cache_seconds, sending)


def base_url(req: func.HttpRequest, settings: Settings) -> str:
    """The public base URL: configured, else from X-Forwarded-* or the request's Host when each is a valid host[:port].

    With neither valid the base is empty and Location is relative (RFC 9110 allows it): a header the client made
    up never reaches a Location or a status_url.
    """
    if settings.public_base_url:
        return settings.public_base_url
    own_scheme, own_netloc, _ = _own_url(req)
    proto = (req.headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower()
    forwarded = (req.headers.get("x-forwarded-host") or "").split(",")[0].strip()
    netloc = next((h for h in (forwarded, own_netloc) if _valid_host(h)), None)
    if netloc is None:
        return ""
    scheme = proto if proto in ("http", "https") else own_scheme if own_scheme in ("http", "https") else "http"
    return f"{scheme}://{netloc}"


def _valid_host(value: str) -> bool:
    match = HOST_PORT.match(value)
    return match is not None and (match["port"] is None or 1 <= int(match["port"]) <= 65535)


def status_url(base: str, report_id: str) -> str:
    return f"{base}{ROUTE_PREFIX}/reports/{report_id}"


# --- POST /api/reports ---------------------------------------------------------------------------------------


def _submission(req: func.HttpRequest, sender: str, external_name: str | None = None) -> intake.Submission:
    return intake.Submission(
        sender=sender,
        body=req.get_body() or b"",
        content_type=checked_content_type(req.headers.get("content-type")),
        idempotency_key=req.headers.get("idempotency-key"),
        content_digest=req.headers.get("content-digest"),
        content_length=req.headers.get("content-length"),
        external_name=external_name,
        allow_duplicate=_flag(req.params.get("allowDuplicate") or req.params.get("allowduplicate")),
    )


def _flag(value: str | None) -> bool:
    """A boolean query parameter as ReportStream read them: `true` (any case) is true, anything else false."""
    return (value or "").strip().lower() == "true"


@telemetry.traced_ingest("/api/reports")
def ingest(req: func.HttpRequest, storage: Storage, settings: Settings) -> func.HttpResponse:
    submission = _submission(req, authenticate(req, storage, settings).require_sender())
    accepted = intake.accept(storage, settings, submission)
    record = accepted.record
    location = status_url(base_url(req, settings), record.id)
    headers = {"Location": location, "Retry-After": str(settings.retry_after_seconds)}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    if _wants_hl7_ack(req, record):
        ack = _commit_ack(submission.body, record.id)
        if ack is not None:
            return func.HttpResponse(ack, status_code=202, headers=headers, mimetype=HL7)
    body = AcceptedReport(
        id=record.id, status=record.status.value, sender=record.sender, content_type=record.content_type,
        size_bytes=record.size_bytes, sha256=record.sha256, received_at=record.received_at, status_url=location,
    )
    return _json(body.model_dump(mode="json"), 202, headers)


def _commit_ack(body: bytes, report_id: str) -> bytes | None:
    """The HL7 commit acknowledgement, or None (JSON instead): the report is stored, so nothing may turn it into an
    error answer now."""
    try:
        return hl7_ack.commit_ack(body)
    except Exception as exc:  # noqa: BLE001 - stored already: nothing may turn the 202 into an error now
        log.warning("report %s: no HL7 acknowledgement (%s); answering JSON", report_id, type(exc).__name__)
        return None


def checked_content_type(value: str | None) -> str | None:
    """The Content-Type header if it is a well-formed media type of sane length; else 415 before anything is stored."""
    if value is None or (len(value) <= MAX_CONTENT_TYPE and CONTENT_TYPE.match(value)):
        return value
    raise unsupported_media_type(
        f"Content-Type must be a well-formed media type of at most {MAX_CONTENT_TYPE} ASCII characters.")


def _wants_hl7_ack(req: func.HttpRequest, record: StatusRecord) -> bool:
    accept = (req.headers.get("accept") or "").lower()
    return HL7 in accept and record.content_type.lower().startswith(HL7)


# --- GET /api/reports[/{id}] ---------------------------------------------------------------------------------


def report_status(req: func.HttpRequest, storage: Storage, settings: Settings) -> func.HttpResponse:
    principal = authenticate(req, storage, settings, sending=False)
    report_id = req.route_params.get("id")
    if not report_id:
        return _list(req, storage, principal.require_sender())
    # Unknown, malformed and other senders' ids get the same answer, so existence does not leak.
    row = lookup.find_report(storage, principal, report_id)
    if row is None:
        raise not_found()
    record = row.record()
    body = record.model_dump(mode="json")
    if record.status in TERMINAL:
        return _json(body, 200)
    return _json(body, 202, {"Retry-After": str(settings.retry_after_seconds)})


def _list(req: func.HttpRequest, storage: Storage, sender: str) -> func.HttpResponse:
    query = parse_list_query(req.params, sender)
    page = listing.list_reports(storage.reports, query)
    return _json(ReportPage(reports=page.reports, next_cursor=page.next_cursor).model_dump(mode="json"), 200)


def parse_list_query(params: Mapping[str, str], sender: str) -> listing.Query:
    get = params.get
    status_value = get("status") or None
    try:
        wanted = Status(status_value) if status_value else None
    except ValueError:
        raise bad_request(f"status must be one of {', '.join(s.value for s in Status)}.", "bad-query") from None
    since = get("since") or None
    if since is not None:
        try:
            since = to_iso(parse_iso(since))
        except (ValueError, OverflowError):  # OverflowError: a valid date that leaves the calendar in UTC
            hint = (" A '+' in a query string reads as a space: send the offset as %2B (or use Z)."
                    if " " in since.strip() else "")
            raise bad_request("since must be an ISO 8601 date-time, e.g. 2026-01-31T00:00:00Z (a date alone means "
                              f"its midnight UTC; a time without an offset is UTC).{hint}", "bad-query") from None
    limit_text = get("limit") or str(listing.DEFAULT_LIMIT)
    # ASCII digits only: str.isdigit() also takes '²' and '٥'.
    if not ASCII_DIGITS.match(limit_text) or not 1 <= int(limit_text) <= listing.MAX_LIMIT:
        raise bad_request(f"limit must be a whole number from 1 to {listing.MAX_LIMIT}.", "bad-query")
    cursor = get("cursor") or None
    if cursor is not None and not listing.CURSOR.match(cursor):
        raise bad_request("cursor is not one this API returned.", "bad-query")
    return listing.Query(sender=sender, status=wanted, since=since, limit=int(limit_text), cursor=cursor)


# --- ReportStream's sender API: POST /api/token, POST /api/waters, GET .../history, POST /api/validate -------------

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _oauth_error(refused: tokens.TokenError) -> func.HttpResponse:
    """RFC 6749 section 5.2: the token endpoint's errors are OAuth JSON, not problem+json."""
    return _json({"error": refused.error, "error_description": refused.description}, refused.status, dict(NO_STORE))


def token(req: func.HttpRequest, storage: Storage, settings: Settings) -> func.HttpResponse:
    fields = tokens.parse_form(req.get_body() or b"", dict(req.params))
    grant = tokens.issue(storage.keys, storage.tokenids, fields, _audiences(req, settings))
    return _json({"access_token": grant.access_token, "token_type": "bearer", "expires_in": grant.expires_in,
                  "scope": grant.scope, "sub": grant.scope, "expires_at_seconds": grant.expires_at}, 200,
                 dict(NO_STORE))


def _audiences(req: func.HttpRequest, settings: Settings) -> list[str]:
    """What an assertion's `aud` may be: this service's token URL or base URL (with or without a trailing slash),
    or its bare host name, which ReportStream's own example used."""
    base = base_url(req, settings)
    if not base:
        return []
    host = urlsplit(base).netloc
    return [f"{base}{ROUTE_PREFIX}/token", base, f"{base}/", f"{base}{ROUTE_PREFIX}", host]


def history_url(base: str, report_id: str) -> str:
    return f"{base}{ROUTE_PREFIX}/waters/report/{reportstream.to_uuid(report_id)}/history"


@telemetry.traced_ingest("/api/waters")
def waters(req: func.HttpRequest, storage: Storage, settings: Settings) -> func.HttpResponse:
    """ReportStream's submission: the intake of POST /api/reports, answered 201 with the submission history."""
    sender = authenticate(req, storage, settings).require_sender()
    external_name = req.headers.get("payloadname") or req.params.get("payloadName") or req.params.get("payloadname")
    accepted = intake.accept(storage, settings, _submission(req, sender, external_name))
    record = accepted.record
    headers = {"Location": history_url(base_url(req, settings), record.id)}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(reportstream.history(record, 201).model_dump(mode="json"), 201, headers)


def history(req: func.HttpRequest, storage: Storage, settings: Settings) -> func.HttpResponse:
    principal = authenticate(req, storage, settings, sending=False)
    row = lookup.find_report(storage, principal, req.route_params.get("id") or "")
    if row is None:
        raise not_found()
    return _json(reportstream.history(row.record()).model_dump(mode="json"), 200)


def validate(req: func.HttpRequest, storage: Storage, settings: Settings) -> func.HttpResponse:
    """A dry run: processing's own parsing and validation, synchronously, with nothing stored or logged."""
    principal = authenticate(req, storage, settings, sending=False)
    content_type = checked_content_type(req.headers.get("content-type")) or ""
    intake.check_format(content_type)
    body = req.get_body() or b""
    intake.check_size(body, settings.validate_max_bytes, "VALIDATE_MAX_BYTES")
    parsed = processing.parse_items(body, content_type, "validation", processing.Discard())
    result = reportstream.validation(
        principal.sender, content_type, now_iso(), parsed.counts.total,
        [Issue.model_validate(i) for i in parsed.errors.listed()],
        [Issue.model_validate(i) for i in parsed.warnings.listed()],
    )
    return _json(result.model_dump(mode="json"), 200)


# --- GET /api/openapi.json ---------------------------------------------------------------------------------------


def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
    """Anonymous and storage-free: the document is built from the code alone."""
    return _json(openapi.document(), 200)


# --- GET /api/health ---------------------------------------------------------------------------------------------


def health(req: func.HttpRequest, storage: Storage, settings: Settings) -> func.HttpResponse:
    queue_depth = storage.queue.get_queue_properties().approximate_message_count
    if queue_depth is None:  # Azure always sends the count; without it, storage did not really answer (503)
        raise RuntimeError("the queue's properties carry no message count")
    poison_depth = poison.depth(storage)
    return _json(Health(status="ok", queue_depth=queue_depth, poison_depth=poison_depth).model_dump(mode="json"), 200)


def health_guarded(req: func.HttpRequest) -> func.HttpResponse:
    """Health must answer 503 (not 500) whenever storage does not, including on the first, resource-creating call."""
    try:
        return health(req, get_storage(), get_settings())
    except Exception as exc:  # noqa: BLE001 - health answers 503 for anything storage does
        log.warning("health check: storage unavailable (%s)", type(exc).__name__)
        return Problem(503, "storage-unavailable", "Service Unavailable", "Storage does not answer.",
                       {"Retry-After": "5"}).response()
