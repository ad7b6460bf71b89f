"""No report value reaches a log, on Azure too: devhost shows what the Python worker forwards (the root logger at
INFO, libraries included) and what the host records of a failed invocation (its exception's message and stack), and
a recognisable fake patient planted in malformed reports of every format appears nowhere in it."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from shared import logs
from tests.downstream import Downstream
from tests.service import Service, own_service, poll

MARK = f"QXPLANTED{uuid.uuid4().hex[:8].upper()}"
NAME = f"{MARK}^QUINCE"


def hl7(*segments: str) -> bytes:
    return "\r".join(segments).encode()


MSH = "MSH|^~\\&|LAB|11D0000001^CLIA|STATE|ST|20240102030405||ORU^R01^ORU_R01|{id}|P|2.5.1"
REPORTS: list[tuple[str, str, bytes]] = [
    ("hl7-bad-number", "application/hl7-v2", hl7(
        MSH.format(id="m1"), f"PID|1||P-1^^^LAB||{NAME}||19800101|F",
        "OBR|1|||94500-6^SARS^LN", f"OBX|1|NM|94500-6^SARS^LN||12{MARK}|||||F")),
    ("hl7-bad-dates", "application/hl7-v2", hl7(
        MSH.format(id=MARK), f"PID|1||{MARK}^^^LAB||{NAME}||{MARK}|{MARK}",
        f"OBR|1|||94500-6^SARS^LN|||{MARK}", f"OBX|1|CWE|94500-6^SARS^LN||{MARK}^{MARK}^SCT||||||F|||{MARK}")),
    ("hl7-garbage", "application/hl7-v2", f"MSH|{MARK}\rPID|{NAME}".encode()),
    ("fhir-wrong-types", "application/fhir+json", json.dumps({
        "resourceType": "Bundle", "type": "message", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p", "name": [{"family": MARK, "given": 5}],
                          "birthDate": MARK, "gender": MARK, "extension": 5, "identifier": [{"value": MARK}]}},
            {"resource": {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p"},
                          "code": {"coding": 5}, "valueQuantity": {"value": MARK}, "performer": 5}},
            {"resource": {"resourceType": [MARK], "id": MARK}},
        ]}).encode()),
    ("fhir-not-json", "application/fhir+json", f'{{"resourceType": "Bundle", "name": "{MARK}", '.encode()),
    ("ndjson-mixed", "application/fhir+ndjson",
     f'{{"resourceType":"Bundle","type":"collection","entry":[{{"resource":{{"resourceType":"Patient",'
     f'"birthDate":"{MARK}"}}}}]}}\n{{"broken": "{MARK}"\n'.encode()),
    ("csv-minimal", "text/csv", f"patient_id,test_code,result,specimen_collected_at\n{MARK},94500-6,{MARK},{MARK}\n"
     .encode()),
    ("csv-simplereport", "text/csv", (
        "patient_last_name,patient_first_name,patient_dob,patient_id,test_result,specimen_type,"
        "testing_lab_clia,test_performed_code\n"
        f"{MARK},{MARK},{MARK},{MARK},{MARK},{MARK},{MARK},{MARK}\n").encode()),
]


@pytest.fixture(scope="module")
def downstream() -> Iterator[Downstream]:
    server = Downstream(default=503).start()  # every delivery fails: the retry path runs too
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(downstream: Downstream) -> Iterator[Service]:
    with own_service(DELIVERY_URL=downstream.url) as running:
        yield running


def test_a_planted_patient_appears_in_no_log(service: Service) -> None:
    ids = []
    for name, content_type, body in REPORTS:
        response = service.post("privacy-lab", body, content_type)
        assert response.status_code == 202, (name, response.text)
        ids.append((name, response.json()["id"]))
        with service.client("privacy-lab") as client:
            checked = client.post("/api/validate", content=body, headers={"Content-Type": content_type})
            assert checked.status_code == 200, (name, checked.text)
            assert MARK not in checked.text, name
    for name, report_id in ids:
        record = poll(lambda rid=report_id: service.report("privacy-lab", rid).json(),
                      lambda r: r["status"] in ("rejected", "processing", "failed", "processed") and (
                          r["status"] != "processing" or r["exceptions"]), timeout=60)
        # The sender's own record names items and fields, never their values.
        assert MARK not in json.dumps(record), (name, record)
    log = service.host.logs()
    assert "accepted from privacy-lab" in log  # the app's own INFO lines are there: the log is the real one
    assert MARK not in log, log[log.index(MARK) - 2000: log.index(MARK) + 200]


def test_the_sdks_request_logging_is_held_at_warning(service: Service) -> None:
    """The worker forwards the root logger at INFO: azure-core would log every storage request (about 20 traces a
    report). The app holds it at WARNING itself; devhost no longer hides it."""
    assert service.post("privacy-lab", REPORTS[-1][2], "text/csv").status_code == 202
    log = service.host.logs()
    assert "Request URL" not in log and "Response status" not in log
    assert logging.getLogger("azure").getEffectiveLevel() == logging.WARNING  # in this process too (shared imported)


def test_a_foreign_exceptions_message_and_traceback_are_dropped_from_every_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.privacy")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            int(f"SMITH^JOHN{MARK}")
        except ValueError as exc:
            logger.exception("parsing failed")
            logger.warning("parsing failed: %s", exc)
            logger.error("again: %(why)s", {"why": exc})
        try:
            raise logs.TryAgain(KeyError(MARK))
        except logs.TryAgain:
            logger.exception("own exception")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert MARK not in text and "SMITH" not in text
    assert text.count("ValueError at tests/test_log_privacy.py:") == 3
    assert "KeyError" in text  # the app's own exception keeps its (value-free) message


def test_an_exception_leaving_processing_carries_no_value(app, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host records the message and stack of what an invocation raises: processing raises a value-free TryAgain,
    its cause hidden (`from None`), and keeps the same value-free text in the report's exceptions. A parser that
    raises rejects the report (its bytes are at fault) instead of failing the try."""
    import traceback

    from shared import processing
    from tests.test_processing import run, submit

    report_id = submit(app, REPORTS[-2][2], "text/csv")
    with monkeypatch.context() as patch:
        def download(*args: object) -> bytes:
            raise ValueError(f"invalid literal for int() with base 10: '{NAME}'")

        patch.setattr(processing, "_download", download)
        with pytest.raises(logs.TryAgain) as raised:
            run(app, report_id)
    recorded = "".join(traceback.format_exception(raised.value))  # what the host would store
    assert MARK not in recorded and raised.value.__suppress_context__
    record = run(app, report_id)  # the next try
    assert MARK not in json.dumps(record) and record["exceptions"][0]["message"].startswith("ValueError at ")

    with monkeypatch.context() as patch:
        def parse(*args: object) -> Iterator[object]:
            raise TypeError(f"unhashable: {NAME}")
            yield  # a generator, as the parsers are

        patch.setattr(processing, "parse_report", parse)
        rejected = run(app, submit(app, REPORTS[-2][2], "text/csv"))
    assert rejected["status"] == "rejected" and rejected["errors"][0]["code"] == "report.unreadable"
    assert MARK not in json.dumps(rejected)
