"""Where telemetry goes: OpenTelemetry SDK providers exporting to Azure Monitor or an OTLP collector, and the export
of the app's own logs with exception detail scrubbed. The hooks that record into them are in shared/telemetry.py.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from opentelemetry import metrics, trace

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

    from shared.config import Settings

    Providers = tuple[TracerProvider, MeterProvider, LoggerProvider]

SERVICE_NAME = "lab-report-intake"
# The app's own loggers (`shared.*`): the only logs exported. They name ids and exception types, never content.
APP_LOGGER = "shared"
# Application Insights' fixed-ratio sampler, by the name Azure Monitor's OpenTelemetry distros give it.
FIXED_PERCENTAGE_SAMPLER = "microsoft.fixed_percentage"

log = logging.getLogger(__name__)


def set_up(settings: Settings) -> bool:
    """Make the global providers export where the settings say, once per process; False when there is nowhere."""
    from opentelemetry.sdk.trace import TracerProvider

    if isinstance(trace.get_tracer_provider(), TracerProvider):
        # The Functions worker (or another part of the process) already set up OpenTelemetry: use its providers.
        return True
    if settings.applicationinsights_connection_string:
        providers, destination = azure_monitor_pipeline(settings.applicationinsights_connection_string), "Azure Monitor"
    elif settings.otlp_endpoint:
        providers, destination = otlp_pipeline(), "OTLP"
    else:
        return False
    _make_global(providers)
    log.info("telemetry: exporting to %s", destination)
    return True


def azure_monitor_pipeline(connection_string: str) -> Providers:
    """Tracer, meter and logger providers exporting to Application Insights. The exporters keep what they could not
    send on disk and retry it (under the temporary directory unless told otherwise)."""
    from azure.monitor.opentelemetry.exporter import (
        AzureMonitorLogExporter,
        AzureMonitorMetricExporter,
        AzureMonitorTraceExporter,
    )

    return _pipeline(
        AzureMonitorTraceExporter(connection_string=connection_string),
        AzureMonitorMetricExporter(connection_string=connection_string),
        AzureMonitorLogExporter(connection_string=connection_string),
        sampler=_azure_monitor_sampler(),
    )


def otlp_pipeline() -> Providers:
    """Tracer, meter and logger providers exporting OTLP over http/protobuf. The exporters read
    OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout) and the processors OTEL_BSP_*, OTEL_BLRP_* and
    OTEL_METRIC_EXPORT_INTERVAL themselves, as every OpenTelemetry SDK does."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return _pipeline(OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter())


def _pipeline(
    spans: SpanExporter, measurements: MetricExporter, logs: LogRecordExporter, sampler: Sampler | None = None
) -> Providers:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = _resource()
    # No sampler: the SDK's, from OTEL_TRACES_SAMPLER (every span by default).
    tracer_provider = TracerProvider(resource=resource, sampler=sampler)
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(measurements)])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(exception_detail_scrubber())
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(logs))
    return tracer_provider, meter_provider, logger_provider


def _azure_monitor_sampler() -> Sampler | None:
    from azure.monitor.opentelemetry.exporter import ApplicationInsightsSampler

    name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip()
    if not name:
        # A fixed ratio decides by trace id, the same way in every process and for every span of the trace, so a
        # report's ingest span is never dropped while its processing span is kept (as a rate-limited sampler may).
        return ApplicationInsightsSampler(sampling_ratio=1.0)
    if name == FIXED_PERCENTAGE_SAMPLER:
        return ApplicationInsightsSampler(sampling_ratio=_sampling_ratio(os.environ.get("OTEL_TRACES_SAMPLER_ARG")))
    return None


def _sampling_ratio(text: str | None) -> float:
    """OTEL_TRACES_SAMPLER_ARG as a ratio from 0 to 1; a bad value keeps every trace (with a warning) rather than
    switching telemetry off."""
    try:
        ratio = float(text) if text else 1.0
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        log.warning("telemetry: OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1; keeping every trace")
        return 1.0
    return ratio


def _resource() -> Resource:
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, OTELResourceDetector, Resource
    from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the service's own name applies only when
    # they name none (the SDK then says `unknown_service`).
    configured = Resource.create()
    if str(configured.attributes.get(SERVICE_NAME_KEY, "")).startswith("unknown_service"):
        configured = configured.merge(Resource({SERVICE_NAME_KEY: SERVICE_NAME}))
    # Azure names each instance of the app in WEBSITE_INSTANCE_ID; Application Insights shows it as the role
    # instance (else the SDK's random id per process), unless OTEL_RESOURCE_ATTRIBUTES names one.
    instance = os.environ.get("WEBSITE_INSTANCE_ID")
    if instance and SERVICE_INSTANCE_ID not in OTELResourceDetector().detect().attributes:
        configured = configured.merge(Resource({SERVICE_INSTANCE_ID: instance}))
    return configured


def _make_global(providers: Providers) -> None:
    from opentelemetry._logs import set_logger_provider

    tracer_provider, meter_provider, logger_provider = providers
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    set_logger_provider(logger_provider)
    attach_log_export(logger_provider)


def attach_log_export(logger_provider: LoggerProvider) -> logging.Handler:
    """Export the app's own log records (those of `shared.*`) through this provider."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    handler = LoggingHandler(logger_provider=logger_provider)
    logging.getLogger(APP_LOGGER).addHandler(handler)
    return handler


def exception_detail_scrubber() -> LogRecordProcessor:
    """A log record processor that keeps a logged exception's type and drops its message and stack trace, which
    can quote the values being handled. It must run before the exporting processor."""
    from opentelemetry.sdk._logs import LogRecordProcessor

    class ScrubExceptionDetail(LogRecordProcessor):
        def on_emit(self, log_record: ReadWriteLogRecord) -> None:
            attributes = log_record.log_record.attributes
            if attributes:
                for key in ("exception.message", "exception.stacktrace"):
                    if key in attributes:
                        del attributes[key]  # type: ignore[attr-defined]  # the SDK's attributes are mutable here

        def shutdown(self) -> None:
            pass

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return ScrubExceptionDetail()
