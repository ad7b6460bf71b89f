"""Telemetry's cost per report: intake (POST through ingest_http.main) and processing (process_queue.main) timed in
one process against an in-memory Azurite, with telemetry off (the hooks on the API's no-op objects, as when no
exporter is configured) and on (OTLP http/protobuf to a receiver on loopback, batch export as deployed), in
interleaved rounds; then the hooks alone around no work, off and on.

    .venv/bin/python -m bench.telemetry [--reports 300] [--rounds 3]

Prints one JSON document (medians and p95 per stage and mode, the difference, the hooks' own cost per report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable

import azure.functions as func

from bench.load import latency_summary
from bench.reports import HL7, small_report
from devhost.azurite import Azurite
from devhost.otlp import OtlpReceiver
from shared import status, telemetry, work


class _Message:
    def __init__(self, body: bytes) -> None:
        self._body, self.dequeue_count, self.id = body, 1, None

    def get_body(self) -> bytes:
        return self._body


def _round(key: str, reports: int, start: int, traceparent: str | None) -> tuple[list[float], list[float]]:
    """Post `reports` reports, then process each; returns the per-report seconds of each stage."""
    import ingest_http
    import process_queue
    from shared.storage import get_storage

    storage = get_storage()
    headers = {"authorization": f"Bearer {key}", "content-type": HL7}
    if traceparent:
        headers["traceparent"] = traceparent
    intake, processing, ids = [], [], []
    loop = asyncio.new_event_loop()  # one loop, as the worker has: a loop per call would be timed too
    for n in range(start, start + reports):
        request = func.HttpRequest("POST", "http://localhost/api/reports", body=small_report(n), headers=headers)
        began = time.perf_counter()
        response = loop.run_until_complete(ingest_http.main(request))
        intake.append(time.perf_counter() - began)
        assert response.status_code == 202, response.get_body()
        ids.append(json.loads(response.get_body())["id"])
    loop.close()
    for report_id in ids:
        row = status.read(storage.reports, "bench-otel", report_id)
        assert row is not None
        body = work.message_for(row).model_dump_json(exclude_none=True).encode()
        began = time.perf_counter()
        process_queue.main(_Message(body))
        processing.append(time.perf_counter() - began)
    return intake, processing


def _hooks_per_report(instruments: telemetry.Instruments, times: int) -> float:
    """Seconds per report spent in the hooks alone (every hook a report passes through once, around no work)."""
    telemetry.install(instruments)
    response = func.HttpResponse(status_code=202)
    ingest = telemetry.traced_ingest(lambda req, storage, settings: response)
    process = telemetry.traced_processing(lambda storage, settings, body, count: "processed")
    request = func.HttpRequest("POST", "http://localhost/api/reports", body=b"", headers={"content-type": HL7})
    body = b'{"v":1,"id":"01J","sender":"s","blob":"b","sha256":"x","content_type":"text/csv"}'
    headers: dict[str, str] = {}

    def one() -> None:
        ingest(request, None, None)
        telemetry.submission("s", HL7, 1000)
        telemetry.context_fields()
        telemetry.report_accepted("01J", "s", HL7)
        process(None, None, body, 1)
        telemetry.processing_started("2026-01-01T00:00:00Z", HL7, 1)
        with telemetry.client_call("POST", "http://127.0.0.1:1/x", headers):
            pass
        telemetry.report_completed("s", HL7, "processed")

    return _per_call(one, times)


def _per_call(fn: Callable[[], None], times: int) -> float:
    began = time.perf_counter()
    for _ in range(times):
        fn()
    return (time.perf_counter() - began) / times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=300, help="reports per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    receiver = OtlpReceiver().start()
    azurite = Azurite(silent=True)
    azurite.start(timeout=60)
    try:
        os.environ.update({
            "AzureWebJobsStorage": azurite.connection_string,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,  # read by the exporters; configure() is bypassed
            "DELIVERY_URL": "", "APPLICATIONINSIGHTS_CONNECTION_STRING": "",
        })
        from shared import senders
        from shared.storage import get_storage

        telemetry.install(telemetry.NO_OP)  # the hooks must not set up export from the environment themselves
        key = senders.add(get_storage().senders, "bench-otel")
        tracer_provider, meter_provider, logger_provider = telemetry.otlp_pipeline()
        modes = {"off": telemetry.NO_OP, "on": telemetry.instruments_from(tracer_provider, meter_provider)}
        samples: dict[str, dict[str, list[float]]] = {m: {"intake": [], "processing": []} for m in modes}
        _round(key, 20, 0, None)  # warm up: imports, connections, caches
        start = 1000
        for _ in range(args.rounds):
            for mode, instruments in modes.items():
                telemetry.install(instruments)
                handler = telemetry.attach_log_export(logger_provider) if mode == "on" else None
                traceparent = f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"
                intake, processing = _round(key, args.reports, start, traceparent)
                start += args.reports
                samples[mode]["intake"] += intake
                samples[mode]["processing"] += processing
                if handler is not None:
                    import logging

                    logging.getLogger(telemetry.APP_LOGGER).removeHandler(handler)
        tracer_provider.force_flush()
        meter_provider.force_flush()
        logger_provider.force_flush()
        result: dict[str, object] = {
            "reports_per_mode": args.reports * args.rounds,
            "spans_received": len(receiver.spans()),
            "log_records_received": len(receiver.logs()),
        }
        for stage in ("intake", "processing"):
            off, on = samples["off"][stage], samples["on"][stage]
            result[stage] = {
                "off": latency_summary(off),
                "on": latency_summary(on),
                "median_difference_ms": round((statistics.median(on) - statistics.median(off)) * 1000, 3),
            }
        hooks = {mode: round(_hooks_per_report(instruments, 20_000) * 1e6, 1) for mode, instruments in modes.items()}
        tracer_provider.force_flush()
        result["hooks_alone_us_per_report"] = hooks
        print(json.dumps(result, indent=2))
        tracer_provider.shutdown()
        meter_provider.shutdown()
        logger_provider.shutdown()
    finally:
        azurite.stop()
        receiver.stop()


if __name__ == "__main__":
    main()
