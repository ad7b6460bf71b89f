"""OpenTelemetry for the service: one trace per report (ingest -> queue -> processing -> delivery) and its metrics.

The hooks record through the providers that shared/telemetry_export.py sets up, or through the API's no-op objects
when there is nowhere to export to. Attributes carry ids, sizes, counts, formats, outcomes and exception type names:
never report content or exception messages.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, SpanKind, StatusCode

from shared import problems, registry, telemetry_export
from shared.clock import parse_iso
from shared.errors import Refused
from shared.formats import FORMATS, media_type
from shared.problems import TYPE_PREFIX, Problem

# The export set-up that the tests and bench/telemetry.py reach through this module, with the hooks.
from shared.telemetry_export import APP_LOGGER as APP_LOGGER
from shared.telemetry_export import attach_log_export as attach_log_export
from shared.telemetry_export import exception_detail_scrubber as exception_detail_scrubber
from shared.telemetry_export import otlp_pipeline as otlp_pipeline

if TYPE_CHECKING:
    from shared.config import Settings

PREFIX = "lab_intake"
# The queue message field and status row property that carry the W3C trace context of the report's ingest.
TRACEPARENT = "traceparent"
QUEUE = "reports"

# Attribute names: one place, so spans and metrics agree and the README can list them.
REPORT_ID = f"{PREFIX}.report.id"
SENDER = f"{PREFIX}.sender"
FORMAT = f"{PREFIX}.report.format"
SIZE = f"{PREFIX}.report.size_bytes"
REPLAYED = f"{PREFIX}.idempotent_replay"
OUTCOME = f"{PREFIX}.outcome"
ATTEMPT = f"{PREFIX}.attempt"
DEQUEUE_COUNT = f"{PREFIX}.dequeue_count"
PROBLEM = f"{PREFIX}.problem"
ERROR_TYPE = "error.type"

# Seconds, from a small report's milliseconds to a backlog of hours.
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Instruments:
    tracer: trace.Tracer
    accepted: metrics.Counter
    completed: metrics.Counter
    processing_duration: metrics.Histogram
    queue_wait: metrics.Histogram
    # False for the no-op set: the hooks then skip straight to the work (no context, no propagation).
    enabled: bool = True


def instruments_from(
    tracer_provider: trace.TracerProvider, meter_provider: metrics.MeterProvider, enabled: bool = True
) -> Instruments:
    meter = meter_provider.get_meter(PREFIX)
    return Instruments(
        enabled=enabled,
        tracer=tracer_provider.get_tracer(PREFIX),
        accepted=meter.create_counter(
            f"{PREFIX}.reports.accepted", unit="{report}", description="Reports stored and acknowledged (202)."
        ),
        completed=meter.create_counter(
            f"{PREFIX}.reports.completed", unit="{report}",
            description="Reports reaching a terminal status, by outcome (processed, rejected, failed).",
        ),
        processing_duration=meter.create_histogram(
            f"{PREFIX}.processing.duration", unit="s", description="Time one processing try took, by outcome.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        ),
        queue_wait=meter.create_histogram(
            f"{PREFIX}.queue.wait", unit="s",
            description="Time from a report's receipt to the start of its first processing try.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        ),
    )


NO_OP = instruments_from(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), enabled=False)
_current: Instruments | None = None
_lock = threading.Lock()


def _forget() -> None:
    global _current
    _current = None  # the next hook sets up again (reusing the process's OpenTelemetry providers, once made)


registry.remember(_forget, _forget)


def current() -> Instruments:
    """What the hooks record with: the configured instruments, or no-ops when this process never configured."""
    return _current or NO_OP


def install(instruments: Instruments) -> Instruments | None:
    """Use these instruments from now on (tests use in-memory ones); returns the previous ones."""
    global _current
    previous, _current = _current, instruments
    return previous


def configure(settings: Settings | None = None) -> Instruments:
    """Set up export once per process, from the settings; later calls return the same instruments."""
    global _current
    if _current is not None:
        return _current
    with _lock:
        if _current is None:
            if settings is None:
                from shared.config import get_settings

                settings = get_settings()
            try:
                _current = _set_up(settings)
            except Exception as exc:  # noqa: BLE001 - telemetry must never stop reports being taken or processed
                log.warning("telemetry: export not set up (%s); running without it", type(exc).__name__)
                _current = NO_OP
    return _current


def _set_up(settings: Settings) -> Instruments:
    if not telemetry_export.set_up(settings):
        return NO_OP
    return instruments_from(trace.get_tracer_provider(), metrics.get_meter_provider())


def format_of(content_type: str | None) -> str:
    """A report's format for attributes: one of a few names whatever the sender put in its Content-Type."""
    return FORMATS.get(media_type(content_type or ""), "other")


def _mark_error(span: trace.Span, exc: BaseException) -> None:
    """Exception type names (or the HTTP status) only: an exception's message may quote the values it handled."""
    code = getattr(exc, "http_status", None)
    failure = getattr(exc, "failure_type", None) or type(exc.__cause__ or exc).__name__
    span.set_attribute(ERROR_TYPE, str(code) if code else failure)
    span.set_status(StatusCode.ERROR)


def _enabled_call(signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Instruments, dict[str, Any] | None]:
    """The process's instruments and, when telemetry is on, the call's arguments by name (so the wrapped function
    may gain parameters); the arguments are bound once, and not at all once telemetry is known to be off."""
    if _current is not None and not _current.enabled:
        return _current, None
    given = signature.bind(*args, **kwargs).arguments
    instruments = _current or configure(given["settings"])
    return instruments, (given if instruments.enabled else None)


def traced_ingest(route: str) -> Callable[[F], F]:
    """The SERVER span of a POST to `route` (intake's own, or ReportStream's /api/waters), continuing the sender's W3C
    `traceparent` when it sent one."""
    return functools.partial(_traced_ingest, route)


def _traced_ingest(route: str, handler: F) -> F:
    signature = inspect.signature(handler)

    @functools.wraps(handler)
    def run(*args: Any, **kwargs: Any) -> Any:
        instruments, given = _enabled_call(signature, args, kwargs)
        if given is None:
            return handler(*args, **kwargs)
        req, tracer = given["req"], instruments.tracer
        attributes = {"http.request.method": "POST", "http.route": route}
        with tracer.start_as_current_span(
            f"POST {route}", context=propagate.extract(req.headers), kind=SpanKind.SERVER,
            attributes=attributes, record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                response = handler(*args, **kwargs)
            except (Problem, Refused) as raised:  # answered as problem+json by the HTTP edge
                problem = raised if isinstance(raised, Problem) else problems.of(raised)
                span.set_attributes({
                    "http.response.status_code": problem.status, ERROR_TYPE: str(problem.status),
                    PROBLEM: problem.type.removeprefix(TYPE_PREFIX),
                })
                if problem.status >= 500:
                    span.set_status(StatusCode.ERROR)
                raise
            except BaseException as exc:
                _mark_error(span, exc)
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            return response

    return cast(F, run)  # functools.wraps: run takes and returns what the wrapped function does


def submission(sender: str, content_type: str | None, size: int) -> None:
    """Ingest: who sent what kind of report, and how big (never what it says)."""
    if not current().enabled:
        return
    trace.get_current_span().set_attributes({SENDER: sender, FORMAT: format_of(content_type), SIZE: size})


def report_accepted(report_id: str, sender: str, content_type: str | None, replayed: bool = False) -> None:
    if not current().enabled:
        return
    trace.get_current_span().set_attributes({REPORT_ID: report_id, REPLAYED: replayed})
    if not replayed:
        current().accepted.add(1, {FORMAT: format_of(content_type), SENDER: sender})


def context_fields() -> dict[str, str]:
    """The current trace context as stored beside a report (row and queue message); empty when not tracing."""
    if not current().enabled:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {TRACEPARENT: carrier[TRACEPARENT]} if TRACEPARENT in carrier else {}


def traced_processing(process: F) -> F:
    """The CONSUMER span of one processing try, a child of the report's ingest when its message carries the trace
    context; any span the host started for this invocation is linked. Records the try's duration by outcome."""

    signature = inspect.signature(process)

    @functools.wraps(process)
    def run(*args: Any, **kwargs: Any) -> Any:
        instruments, given = _enabled_call(signature, args, kwargs)
        if given is None:
            return process(*args, **kwargs)
        tracer, dequeue_count = instruments.tracer, given["dequeue_count"]
        fields = _message_fields(given["body"])
        carrier = {TRACEPARENT: fields[TRACEPARENT]} if isinstance(fields.get(TRACEPARENT), str) else {}
        host_span = trace.get_current_span().get_span_context()
        links = [Link(host_span)] if carrier and host_span.is_valid else None
        report_format = format_of(fields.get("content_type"))
        attributes = {
            "messaging.operation.type": "process",
            "messaging.destination.name": QUEUE,
            REPORT_ID: str(fields.get("id", "")),
            SENDER: str(fields.get("sender", "")),
            FORMAT: report_format,
            DEQUEUE_COUNT: dequeue_count,
        }
        started = time.perf_counter()
        outcome = "error"
        with tracer.start_as_current_span(
            f"process {QUEUE}", context=propagate.extract(carrier), kind=SpanKind.CONSUMER, links=links,
            attributes=attributes, record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                result = process(*args, **kwargs)
                outcome = str(result)
            except BaseException as exc:
                _mark_error(span, exc)
                raise
            finally:
                span.set_attribute(OUTCOME, outcome)
                instruments.processing_duration.record(
                    time.perf_counter() - started, {FORMAT: report_format, OUTCOME: outcome}
                )
            return result

    return cast(F, run)  # functools.wraps: run takes and returns what the wrapped function does


def _message_fields(body: bytes) -> dict[str, Any]:
    try:
        fields = json.loads(body)
    except ValueError:
        return {}
    return fields if isinstance(fields, dict) else {}


def processing_started(received_at: str | None, content_type: str | None, attempt: int) -> None:
    """The report's first try starts: record how long it waited since its receipt (queue, retries not counted)."""
    if not current().enabled:
        return
    trace.get_current_span().set_attribute(ATTEMPT, attempt)
    if attempt != 1 or not received_at:
        return
    try:
        waited = time.time() - parse_iso(received_at).timestamp()
    except ValueError:
        return
    current().queue_wait.record(max(waited, 0.0), {FORMAT: format_of(content_type)})


def report_completed(sender: str, content_type: str | None, outcome: str) -> None:
    """A report reached a terminal status (counted where the status row changes, whoever changed it). Sets up
    export if this process has not yet: a timer's give-up path may be the first thing a worker process runs."""
    try:
        instruments = configure()
    except Exception:  # noqa: BLE001 - no valid settings here (a tool, not the app): nothing to export to
        return
    if instruments.enabled:
        instruments.completed.add(1, {FORMAT: format_of(content_type), SENDER: sender, OUTCOME: outcome})


@contextmanager
def client_call(method: str, url: str, headers: dict[str, str]) -> Iterator[trace.Span]:
    """The CLIENT span of an outgoing request; puts the trace context into `headers`. The URL's path and query
    are left out: a downstream URL may hold a key."""
    instruments = current()
    if not instruments.enabled:
        yield trace.INVALID_SPAN
        return
    parts = urlsplit(url)
    attributes: dict[str, Any] = {"http.request.method": method, "url.scheme": parts.scheme}
    if parts.hostname:
        attributes["server.address"] = parts.hostname
    attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    with instruments.tracer.start_as_current_span(
        method, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        propagate.inject(headers)
        try:
            yield span
        except BaseException as exc:
            _mark_error(span, exc)
            raise
