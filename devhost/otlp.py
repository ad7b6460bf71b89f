"""A minimal OTLP/HTTP receiver on loopback (protobuf, as the app's exporter sends): keeps what it is sent, so
tests and benchmarks can read the spans, metrics and logs the running service exported."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import cast

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from devhost.loopback import LoopbackServer, QuietHandler

REQUESTS: dict[str, type[Message]] = {
    "/v1/traces": ExportTraceServiceRequest,
    "/v1/metrics": ExportMetricsServiceRequest,
    "/v1/logs": ExportLogsServiceRequest,
}


@dataclass
class OtlpReceiver(LoopbackServer):
    """Start with `start()`; `endpoint` is what OTEL_EXPORTER_OTLP_ENDPOINT should say."""

    requests: dict[str, list[Message]] = field(default_factory=lambda: {path: [] for path in REQUESTS})
    raw: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return self.base_url

    def start(self) -> OtlpReceiver:
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.read_body()
                kind = REQUESTS.get(self.path)
                if kind is None:
                    self.answer(404)
                    return
                message = kind.FromString(body)
                with outer.lock:
                    outer.requests[self.path].append(message)
                    outer.raw.append(body)
                self.answer(200, {"Content-Type": "application/x-protobuf"})

        self.serve(Handler)
        return self

    def spans(self) -> list[Span]:
        with self.lock:
            requests = cast(list[ExportTraceServiceRequest], self.requests["/v1/traces"])  # REQUESTS' type for the path
            return [s for r in requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    def metrics(self) -> list[Metric]:
        with self.lock:
            requests = cast(list[ExportMetricsServiceRequest], self.requests["/v1/metrics"])
            return [m for r in requests for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]

    def logs(self) -> list[LogRecord]:
        with self.lock:
            requests = cast(list[ExportLogsServiceRequest], self.requests["/v1/logs"])
            return [lr for r in requests for rl in r.resource_logs for sl in rl.scope_logs for lr in sl.log_records]

    def everything(self) -> str:
        """All that was received, as bytes decoded loosely and as JSON: for searching for what must not be there."""
        with self.lock:
            texts = [b.decode("utf-8", "replace") for b in self.raw]
            texts += [MessageToJson(m) for ms in self.requests.values() for m in ms]
        return "\n".join(texts)
