"""OpenTelemetry: one trace per report from the sender's POST through the queue to delivery, the metrics, and no
patient data in anything exported. In process with the SDK's in-memory exporters, and end to end through devhost
with a real OTLP/HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import azure.functions as func
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from devhost.azurite import REPO_ROOT, Azurite
from devhost.loopback import LoopbackServer, QuietHandler
from devhost.otlp import OtlpReceiver
from devhost.process import DevHostProcess
from shared import config, senders, status, telemetry, work
from shared.config import SettingsError, load_settings
from shared.models import QueueMessage
from shared.storage import Storage
from tests.downstream import Downstream
from tests.service import poll, start_service

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def marked_reports(marker: str) -> list[tuple[bytes, str]]:
    """Reports whose patient fields hold `marker`: one processed CSV, one processed HL7 v2, one rejected CSV."""
    csv_ok = f"patient_id,test_code,result,specimen_collected_at\n{marker},94500-6,Detected {marker},2026-11-19\n"
    hl7 = (
        "MSH|^~\\&|LAB|LAB^05D0000001^CLIA|INTAKE|DOH|20261120083000||ORU^R01^ORU_R01|M-1|P|2.5.1\r"
        f"PID|1||{marker}^^^HOSP^MR||{marker}^JANE||19840512|F\r"
        "OBR|1||ACC-1|94500-6^SARS-CoV-2 RNA^LN|||20261119141500\r"
        f"OBX|1|ST|94500-6^SARS-CoV-2 RNA^LN||{marker}||||||F\r"
    )
    csv_bad = f"patient_id,test_code,result,specimen_collected_at\n{marker},94500-6,{marker},not-a-date-{marker}\n"
    return [(csv_ok.encode(), "text/csv"), (hl7.encode(), "application/hl7-v2"), (csv_bad.encode(), "text/csv")]


# --- in process, with the SDK's in-memory exporters ----------------------------------------------------------------


@dataclass
class Recorded:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list:
        data = self.metrics.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def exported_text(self) -> str:
        data = self.metrics.get_metrics_data()
        return "\n".join(
            [s.to_json() for s in self.finished()]
            + [lr.to_json() for lr in self.logs.get_finished_logs()]
            + [data.to_json() if data else ""]
        )


@pytest.fixture
def recorded(app: Storage) -> Iterator[Recorded]:
    """The app's telemetry hooks recording into memory (set up as configure() would, with in-memory exporters)."""
    spans, reader, logs = InMemorySpanExporter(), InMemoryMetricReader(), InMemoryLogRecordExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(telemetry.exception_detail_scrubber())
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    handler = telemetry.attach_log_export(logger_provider)
    app_logger = logging.getLogger(telemetry.APP_LOGGER)
    level = app_logger.level
    app_logger.setLevel(logging.INFO)
    previous = telemetry.install(telemetry.instruments_from(tracer_provider, MeterProvider(metric_readers=[reader])))
    yield Recorded(spans, reader, logs)
    telemetry.install(previous)  # type: ignore[arg-type]
    app_logger.removeHandler(handler)
    app_logger.setLevel(level)


def _post(key: str, body: bytes, content_type: str, **headers: str) -> func.HttpResponse:
    import ingest_http

    request = func.HttpRequest(
        "POST", "http://localhost:7071/api/reports", body=body,
        headers={"authorization": f"Bearer {key}", "content-type": content_type, **headers},
    )
    return asyncio.run(ingest_http.main(request))


class _Message:
    def __init__(self, body: bytes, dequeue_count: int = 1) -> None:
        self._body, self.dequeue_count, self.id = body, dequeue_count, None

    def get_body(self) -> bytes:
        return self._body


def _process(storage: Storage, sender: str, report_id: str, dequeue_count: int = 1) -> status.Row:
    import process_queue

    row = status.read(storage.reports, sender, report_id)
    assert row is not None
    body = work.message_for(row).model_dump_json(exclude_none=True).encode()
    try:
        process_queue.main(_Message(body, dequeue_count))
    except Exception:
        pass  # a transient failure: the host would retry
    row = status.read(storage.reports, sender, report_id)
    assert row is not None
    return row


def _one(spans: list[ReadableSpan], kind: SpanKind, report_id: str | None = None) -> ReadableSpan:
    found = [s for s in spans if s.kind == kind
             and (report_id is None or (s.attributes or {}).get(telemetry.REPORT_ID) == report_id)]
    assert len(found) == 1, [(s.name, s.kind, s.attributes) for s in spans]
    return found[0]


@pytest.fixture
def with_downstream(downstream: Downstream, monkeypatch: pytest.MonkeyPatch) -> Downstream:
    monkeypatch.setenv("DELIVERY_URL", downstream.url)
    config.get_settings.cache_clear()
    return downstream


def test_one_trace_from_the_senders_post_to_delivery(app: Storage, recorded: Recorded, with_downstream: Downstream) -> None:
    key = senders.add(app.senders, "otel-unit")
    marker = f"ZQX{uuid.uuid4().hex}"
    body, content_type = marked_reports(marker)[0]

    response = _post(key, body, content_type, traceparent=TRACEPARENT)
    assert response.status_code == 202
    report_id = json.loads(response.get_body())["id"]
    server = _one(recorded.finished(), SpanKind.SERVER)
    assert server.context.trace_id == int(TRACE_ID, 16)
    assert server.parent is not None and server.parent.span_id == int(PARENT_ID, 16)
    assert server.attributes[telemetry.REPORT_ID] == report_id
    assert server.attributes[telemetry.SENDER] == "otel-unit"
    assert server.attributes[telemetry.FORMAT] == "csv"
    assert server.attributes[telemetry.SIZE] == len(body)
    assert server.attributes["http.response.status_code"] == 202

    # The trace context is stored on the row and travels in the queue message.
    row = status.read(app.reports, "otel-unit", report_id)
    assert row is not None
    message = QueueMessage.model_validate_json(work.message_for(row).model_dump_json(exclude_none=True))
    assert message.traceparent == row.entity["traceparent"]
    assert message.traceparent.startswith(f"00-{TRACE_ID}-{server.context.span_id:016x}-")

    assert _process(app, "otel-unit", report_id).status.value == "processed"
    spans = recorded.finished()
    consumer = _one(spans, SpanKind.CONSUMER)
    client = _one(spans, SpanKind.CLIENT)
    assert consumer.context.trace_id == client.context.trace_id == int(TRACE_ID, 16)
    assert consumer.parent.span_id == server.context.span_id
    assert client.parent.span_id == consumer.context.span_id
    assert consumer.attributes[telemetry.OUTCOME] == "processed"
    assert consumer.attributes[telemetry.ATTEMPT] == 1
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["server.address"] == "127.0.0.1"
    # Downstream gets the delivery span's context, so its own trace continues this one.
    assert with_downstream.received[0].traceparent == f"00-{TRACE_ID}-{client.context.span_id:016x}-01"

    assert [p.value for p in recorded.points("lab_intake.reports.accepted")] == [1]
    assert recorded.points("lab_intake.reports.accepted")[0].attributes == {
        telemetry.FORMAT: "csv", telemetry.SENDER: "otel-unit"}
    completed = recorded.points("lab_intake.reports.completed")
    assert [(p.attributes[telemetry.OUTCOME], p.value) for p in completed] == [("processed", 1)]
    assert [p.count for p in recorded.points("lab_intake.processing.duration")] == [1]
    [waited] = recorded.points("lab_intake.queue.wait")
    assert waited.count == 1 and 0 <= waited.sum < 60
    assert marker not in recorded.exported_text()


def test_failures_carry_codes_and_type_names_never_content(
    app: Storage, recorded: Recorded, with_downstream: Downstream
) -> None:
    key = senders.add(app.senders, "otel-fail")
    marker = f"ZQX{uuid.uuid4().hex}"
    ok_csv, hl7, bad_csv = (body for body, _ in marked_reports(marker))

    # Refused at the door: the problem's code and status, not the offending header.
    assert _post(key, ok_csv, f"text/plain; x={marker}").status_code == 415
    refused = _one(recorded.finished(), SpanKind.SERVER)
    assert refused.attributes[telemetry.PROBLEM] == "unsupported-media-type"
    assert refused.attributes["http.response.status_code"] == 415
    assert refused.attributes[telemetry.FORMAT] == "other"
    assert refused.attributes[telemetry.SENDER] == "otel-fail"

    rejected_id = json.loads(_post(key, bad_csv, "text/csv").get_body())["id"]
    assert _process(app, "otel-fail", rejected_id).status.value == "rejected"

    # Downstream down: the delivery waits (the try is not a failure) and says so.
    with_downstream.answers.extend([503])
    hl7_id = json.loads(_post(key, hl7, "application/hl7-v2").get_body())["id"]
    assert _process(app, "otel-fail", hl7_id).status.value == "processing"
    consumer = _one(recorded.finished(), SpanKind.CONSUMER, hl7_id)
    assert consumer.attributes[telemetry.OUTCOME] == "deferred"
    assert not consumer.events, "no exception events: their messages could quote content"
    app.queue.clear_messages()  # the deferred delivery's message: this test processes by hand
    assert _process(app, "otel-fail", hl7_id, dequeue_count=2).status.value == "processed"

    outcomes = {(p.attributes[telemetry.FORMAT], p.attributes[telemetry.OUTCOME]): p.value
                for p in recorded.points("lab_intake.reports.completed")}
    assert outcomes == {("csv", "rejected"): 1, ("hl7v2", "processed"): 1}
    tries = {p.attributes[telemetry.OUTCOME]: p.count for p in recorded.points("lab_intake.processing.duration")}
    assert tries == {"rejected": 1, "deferred": 1, "processed": 1}
    waits = {p.attributes[telemetry.FORMAT]: p.count for p in recorded.points("lab_intake.queue.wait")}
    assert waits == {"csv": 1, "hl7v2": 1}  # first tries only

    # A logged exception keeps its type; its message (which may quote a value) is not exported.
    try:
        raise ValueError(f"bad value {marker}")
    except ValueError:
        logging.getLogger("shared.test").exception("report x: could not parse")
    logged = [lr.log_record for lr in recorded.logs.get_finished_logs()]
    assert any((lr.attributes or {}).get("exception.type") == "ValueError" for lr in logged)
    assert any("delivery tried again in" in str(lr.body) for lr in logged)
    assert marker not in recorded.exported_text()


def test_a_message_without_trace_context_still_processes(app: Storage, recorded: Recorded) -> None:
    """Messages sent before telemetry (or with it off and no `traceparent` from the sender) have no trace context:
    processing starts a trace of its own."""
    key = senders.add(app.senders, "otel-old")
    with_no_telemetry = telemetry.install(telemetry.NO_OP)
    response = _post(key, marked_reports("x")[0][0], "text/csv")
    telemetry.install(with_no_telemetry)  # type: ignore[arg-type]
    report_id = json.loads(response.get_body())["id"]
    row = status.read(app.reports, "otel-old", report_id)
    assert row is not None and "traceparent" not in row.entity
    assert "traceparent" not in work.message_for(row).model_dump_json(exclude_none=True)

    assert _process(app, "otel-old", report_id).status.value == "processed"
    consumer = _one(recorded.finished(), SpanKind.CONSUMER)
    assert consumer.parent is None and consumer.context.trace_id != int(TRACE_ID, 16)


def test_telemetry_settings_are_checked_and_off_by_default() -> None:
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    off = load_settings(base)
    assert off.applicationinsights_connection_string is None and off.otlp_endpoint is None
    with pytest.raises(SettingsError, match="APPLICATIONINSIGHTS_CONNECTION_STRING"):
        load_settings({**base, "APPLICATIONINSIGHTS_CONNECTION_STRING": "not-a-connection-string"})
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        load_settings({**base, "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"})
    assert telemetry._set_up(off) is telemetry.NO_OP


def test_set_up_is_lazy_and_its_failure_never_stops_the_work(
    app: Storage, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = telemetry.install(None)  # type: ignore[arg-type]  # as in a process that has not set up yet
    try:
        # The first terminal write sets up export, whatever ran it (a timer's give-up path may come first).
        monkeypatch.setattr(telemetry, "_set_up", lambda settings: mine)
        telemetry.report_completed("otel-lazy", "text/csv", "failed")
        assert [p.value for p in recorded.points("lab_intake.reports.completed")] == [1]

        telemetry.install(None)  # type: ignore[arg-type]

        def broken(settings: object) -> telemetry.Instruments:
            raise RuntimeError("exporter cannot start")

        monkeypatch.setattr(telemetry, "_set_up", broken)
        assert telemetry.configure() is telemetry.NO_OP
        key = senders.add(app.senders, "otel-lazy")
        assert _post(key, b"patient_id,test_code,result,specimen_collected_at\n1,2,3,2026-01-01\n",
                     "text/csv").status_code == 202
    finally:
        telemetry.install(mine)  # type: ignore[arg-type]


# --- end to end: devhost + Azurite exporting OTLP/HTTP to a receiver on loopback ----------------------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


def test_devhost_exports_one_trace_per_report_over_otlp(
    receiver: OtlpReceiver, downstream: Downstream, azurite: Azurite, start_devhost: Callable[..., DevHostProcess]
) -> None:
    # The receiver is set up first so that it outlives devhost, whose exporters flush when it stops.
    service = start_service(
        azurite, start_devhost, DELIVERY_URL=downstream.url, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100", OTEL_BLRP_SCHEDULE_DELAY="100", OTEL_METRIC_EXPORT_INTERVAL="300",
    )
    marker = f"ZQX{uuid.uuid4().hex}"
    reports = marked_reports(marker)
    first = service.post("otel-e2e", *reports[0], traceparent=TRACEPARENT)
    assert first.status_code == 202
    others = [service.post("otel-e2e", body, content_type).json()["id"] for body, content_type in reports[1:]]
    assert service.post("otel-e2e", b"x", f"text/plain; {marker}").status_code == 415
    report_id = first.json()["id"]
    outcomes = [service.wait_terminal("otel-e2e", i)["status"] for i in [report_id, *others]]
    assert outcomes == ["processed", "processed", "rejected"]

    def trace_of(report: str) -> dict[SpanKind, object]:
        spans = receiver.spans()
        ours = [s for s in spans if any(a.key == telemetry.REPORT_ID and a.value.string_value == report
                                        for a in s.attributes)]
        trace_ids = {s.trace_id for s in ours}
        return {s.kind: s for s in spans if s.trace_id in trace_ids}

    kinds = poll(lambda: trace_of(report_id), lambda t: len(t) == 3, timeout=30)
    server, consumer, client = (kinds[k] for k in (2, 5, 3))  # OTLP's SPAN_KIND_SERVER, _CONSUMER, _CLIENT
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == PARENT_ID
    assert consumer.parent_span_id == server.span_id
    assert client.parent_span_id == consumer.span_id
    [delivered] = [r for r in downstream.received if r.idempotency_key == report_id]
    assert delivered.traceparent == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    # Reports sent without a traceparent each start a trace of their own.
    assert len({next(iter(trace_of(i).values())).trace_id for i in others} | {server.trace_id}) == 3

    def metric_names() -> set[str]:
        return {m.name for m in receiver.metrics()}

    wanted = {"lab_intake.reports.accepted", "lab_intake.reports.completed", "lab_intake.processing.duration",
              "lab_intake.queue.wait"}
    poll(metric_names, lambda names: wanted <= names, timeout=30)
    poll(receiver.logs, lambda logs: any("accepted from otel-e2e" in lr.body.string_value for lr in logs), timeout=30)
    assert marker not in receiver.everything()


# --- Azure Monitor: the distro's exporter posting to a stand-in ingestion endpoint on loopback ---------------------

AZURE_MONITOR_RUN = """
import asyncio, json, sys
import azure.functions as func
import ingest_http, process_queue
from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger_provider
from shared import senders, status, work
from shared.storage import get_storage

body, traceparent = sys.argv[1].encode(), sys.argv[2]
storage = get_storage()
key = senders.add(storage.senders, "otel-azmon")
request = func.HttpRequest("POST", "http://localhost/api/reports", body=body, headers={
    "authorization": f"Bearer {key}", "content-type": "text/csv", "traceparent": traceparent})
report_id = json.loads(asyncio.run(ingest_http.main(request)).get_body())["id"]

class Message:
    dequeue_count = 1
    id = None
    def get_body(self):
        row = status.read(storage.reports, "otel-azmon", report_id)
        return work.message_for(row).model_dump_json(exclude_none=True).encode()

process_queue.main(Message())
for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(), get_logger_provider()):
    provider.force_flush()
print(report_id)
"""


class _Ingestion(LoopbackServer):
    """Answers Application Insights' track endpoint (and live metrics' ping) and keeps every envelope."""

    def __init__(self) -> None:
        self.envelopes: list[dict] = []
        self.raw: list[bytes] = []
        outer = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.read_body()
                outer.raw.append(body)
                received = json.loads(body) if self.path.startswith("/v2.1/track") else []
                outer.envelopes.extend(received)
                # The exporter reads the answer: anything but all items accepted makes it keep them for later.
                answer = json.dumps({"itemsReceived": len(received), "itemsAccepted": len(received), "errors": []})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer.encode())

        self.serve(Handler)


def test_azure_monitor_gets_the_same_trace_and_metrics(azurite: Azurite, tmp_path: Path) -> None:
    ingestion = _Ingestion()
    try:
        marker = f"ZQX{uuid.uuid4().hex}"
        env = {
            **os.environ, "AzureWebJobsStorage": azurite.connection_string, "DELIVERY_URL": "",
            "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
            f"IngestionEndpoint={ingestion.base_url}/;LiveEndpoint={ingestion.base_url}/",
            # Nothing leaves the machine: no SDK usage reports, no cloud metadata look-ups; offline retry files
            # go to this test's directory.
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service", "TMPDIR": str(tmp_path),
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        }
        done = subprocess.run(
            [sys.executable, "-c", AZURE_MONITOR_RUN, marked_reports(marker)[0][0].decode(), TRACEPARENT],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report_id = done.stdout.split()[-1]
        in_trace = [e for e in ingestion.envelopes if e["tags"].get("ai.operation.id") == TRACE_ID]
        requests = {e["data"]["baseData"]["name"]: e for e in in_trace if e["name"].endswith(".Request")}
        assert set(requests) == {"POST /api/reports", "process reports"}, [e["name"] for e in in_trace]
        assert requests["POST /api/reports"]["data"]["baseData"]["properties"][telemetry.REPORT_ID] == report_id
        assert requests["process reports"]["tags"]["ai.operation.parentId"] == requests["POST /api/reports"][
            "data"]["baseData"]["id"]
        metric_names = {m["name"] for e in ingestion.envelopes if e["name"].endswith(".Metric")
                        for m in e["data"]["baseData"]["metrics"]}
        assert {"lab_intake.reports.accepted", "lab_intake.reports.completed"} <= metric_names
        assert not any(marker.encode() in raw for raw in ingestion.raw)
    finally:
        ingestion.stop()


def test_the_role_instance_is_the_azure_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Azure's WEBSITE_INSTANCE_ID names the instance in Application Insights; a configured one wins."""
    from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME

    from shared import telemetry_export

    monkeypatch.setenv("WEBSITE_INSTANCE_ID", "a1b2c3")
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    attributes = telemetry_export._resource().attributes
    assert attributes[SERVICE_INSTANCE_ID] == "a1b2c3" and attributes[SERVICE_NAME] == telemetry_export.SERVICE_NAME
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=mine")
    assert telemetry_export._resource().attributes[SERVICE_INSTANCE_ID] == "mine"


def test_a_bad_sampling_ratio_keeps_every_trace_instead_of_switching_telemetry_off() -> None:
    from shared import telemetry_export

    assert telemetry_export._sampling_ratio("0.25") == 0.25
    assert telemetry_export._sampling_ratio(None) == 1.0
    assert telemetry_export._sampling_ratio("a quarter") == 1.0 and telemetry_export._sampling_ratio("2") == 1.0


def test_a_reportstream_submission_is_traced_under_its_own_route(app: Storage, recorded: Recorded) -> None:
    import waters_http

    key = senders.add(app.senders, "otel-waters")
    body, content_type = marked_reports(f"ZQX{uuid.uuid4().hex}")[0]
    request = func.HttpRequest("POST", "http://localhost:7071/api/waters", body=body,
                               headers={"authorization": f"Bearer {key}", "content-type": content_type})
    assert asyncio.run(waters_http.main(request)).status_code == 201
    [span] = [s for s in recorded.finished() if s.kind == SpanKind.SERVER]
    assert span.name == "POST /api/waters" and span.attributes["http.route"] == "/api/waters"
