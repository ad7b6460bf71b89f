"""Unit tests of the core: settings, the status lifecycle, the HL7 ACK, and functions called through main()."""

from __future__ import annotations

import asyncio
import json

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from shared import config, hl7_ack, lifecycle, senders, status
from shared.config import DEVELOPMENT_STORAGE, SettingsError, load_settings
from shared.lifecycle import Status
from shared.storage import Storage
from tests.service import EXAMPLES

CSV = (EXAMPLES / "report.csv").read_bytes()


# --- settings ----------------------------------------------------------------------------------------------------


def test_settings_defaults_and_development_storage() -> None:
    settings = load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert settings.storage.connection_string == DEVELOPMENT_STORAGE
    assert settings.max_report_bytes == 50_000_000
    assert settings.delivery_url is None and settings.public_base_url is None
    assert settings.max_dequeue_count == 5  # from host.json
    assert settings.http_threads == 32


@pytest.mark.parametrize(
    "env, named",
    [({}, "AzureWebJobsStorage"), ({"MAX_REPORT_BYTES": "lots"}, "MAX_REPORT_BYTES"),
     ({"MAX_REPORT_BYTES": "-1"}, "MAX_REPORT_BYTES"), ({"DELIVERY_URL": "ftp://x"}, "DELIVERY_URL"),
     ({"PUBLIC_BASE_URL": "intake.example"}, "PUBLIC_BASE_URL"), ({"HTTP_THREADS": "0"}, "HTTP_THREADS")],
)
def test_bad_setting_fails_naming_it(env: dict, named: str) -> None:
    base = {} if named == "AzureWebJobsStorage" else {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    with pytest.raises(SettingsError, match=named):
        load_settings({**base, **env})


def test_max_dequeue_count_follows_the_host_override() -> None:
    env = {"AzureWebJobsStorage": "x", "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "3"}
    assert load_settings(env).max_dequeue_count == 3


@pytest.mark.parametrize("value, seconds", [("00:10", 600), ("0.00:02:00", 120), ("00:00:30.5", 30.5)])
def test_function_timeout_is_read_as_the_host_reads_it(value: str, seconds: float) -> None:
    """The app and devhost read host.json through one module (shared/hostjson.py): every TimeSpan form the host
    takes is taken, in overrides written with either separator."""
    for name in ("AzureFunctionsJobHost__functionTimeout", "AzureFunctionsJobHost:functionTimeout"):
        assert load_settings({"AzureWebJobsStorage": "x", name: value}).function_timeout_seconds == seconds


def test_an_unbounded_function_timeout_is_refused_at_start() -> None:
    """With functionTimeout -1 no moment comes at which an Idempotency-Key claim can safely be taken over."""
    with pytest.raises(SettingsError, match="functionTimeout"):
        load_settings({"AzureWebJobsStorage": "x", "AzureFunctionsJobHost__functionTimeout": "-1"})


# --- lifecycle ---------------------------------------------------------------------------------------------------


def test_transitions() -> None:
    assert lifecycle.can_move(Status.RECEIVED, Status.QUEUED)
    assert lifecycle.can_move(Status.QUEUED, Status.PROCESSING)
    assert lifecycle.can_move(Status.PROCESSING, Status.FAILED)
    assert lifecycle.can_move(Status.FAILED, Status.RECEIVED)  # replay: `received` first, `queued` once sent
    for terminal in (Status.PROCESSED, Status.REJECTED):
        assert not any(lifecycle.can_move(terminal, s) for s in Status)
    assert lifecycle.can_move(Status.QUEUED, Status.PROCESSED)  # a small report skips `processing`
    assert not lifecycle.can_move(Status.QUEUED, Status.RECEIVED)
    assert lifecycle.can_move(Status.PROCESSING, Status.RECEIVED)  # a forced replay, its invocation long dead


def test_write_refuses_a_forbidden_transition_and_a_stale_etag(app: Storage) -> None:
    from azure.core.exceptions import ResourceModifiedError

    entity = {"PartitionKey": "unit", "RowKey": "01KAAAAAAAAAAAAAAAAAAAAAAA", "status": "processed"}
    app.reports.upsert_entity(entity)
    row = status.read(app.reports, "unit", entity["RowKey"])
    with pytest.raises(lifecycle.TransitionError):
        status.write(app.reports, row, {"status": Status.QUEUED})
    app.reports.upsert_entity({**entity, "status": "failed"})
    stale = status.Row({**row.entity, "status": "failed"}, row.etag)
    with pytest.raises(ResourceModifiedError):
        status.write(app.reports, stale, {"status": Status.QUEUED})


# --- HL7 commit ACK ----------------------------------------------------------------------------------------------


def test_commit_ack_uses_the_senders_delimiters() -> None:
    ack = hl7_ack.commit_ack(b"FHS|^~\\&\nBHS|^~\\&\nMSH$^~\\&$APP$FAC$$$20260101$$ORU^R01$ID-9$P$2.3\nPID$1\n")
    assert ack is not None
    msh, msa = ack.decode().strip("\r").split("\r")
    assert msh.startswith("MSH$^~\\&$LAB-INTAKE$$APP$FAC$") and msh.endswith("$P$2.3")
    assert msa == "MSA$CA$ID-9"
    assert hl7_ack.commit_ack(b"no message here") is None


# --- functions called through main() ----------------------------------------------------------------------------


def _post(key: str, body: bytes, **headers: str) -> func.HttpResponse:
    import ingest_http

    request = func.HttpRequest(
        "POST", "http://localhost:7071/api/reports", body=body,
        headers={"authorization": f"Bearer {key}", "content-type": "text/csv", **headers},
    )
    return asyncio.run(ingest_http.main(request))


def test_ingest_main_stores_then_enqueues(app: Storage) -> None:
    key = senders.add(app.senders, "unit-ingest")
    response = _post(key, CSV)
    assert response.status_code == 202
    body = json.loads(response.get_body())
    row = status.read(app.reports, "unit-ingest", body["id"])
    assert row is not None and row.status in (Status.QUEUED, Status.PROCESSING)
    assert app.container.download_blob(f"raw/unit-ingest/{body['id']}").readall() == CSV


def test_public_base_url_wins(app: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://intake.health.example/")
    config.get_settings.cache_clear()
    key = senders.add(app.senders, "unit-base")
    response = _post(key, CSV, **{"x-forwarded-host": "other.example"})
    assert response.headers["Location"].startswith("https://intake.health.example/api/reports/")


def test_reconcile_timer_enqueues_received_reports_once(app: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between 'blob + row written' and 'message enqueued' leaves a `received` row: the timer sends it."""
    import reconcile_timer
    from shared import intake, work

    monkeypatch.setenv("RECONCILE_AFTER_SECONDS", "0")
    config.get_settings.cache_clear()
    key = senders.add(app.senders, "unit-reconcile")

    def crash(storage: Storage, row: status.Row) -> None:
        raise intake.AzureError("queue unavailable")

    with monkeypatch.context() as patch:
        patch.setattr(work, "send", crash)
        stored = _post(key, CSV)
    assert stored.status_code == 202, "stored, so acknowledged: a 503 would make the sender send it again"
    assert json.loads(stored.get_body())["status"] == "received"
    stuck = list(app.reports.query_entities("PartitionKey eq 'unit-reconcile' and RowKey lt 'a'"))  # rows only
    assert [e["status"] for e in stuck] == ["received"]

    app.queue.clear_messages()
    reconcile_timer.main(TimerRequest())
    reconcile_timer.main(TimerRequest())  # the row is `queued` now: not sent twice
    messages = [json.loads(m.content) for m in app.queue.receive_messages(max_messages=32)]
    assert [m["id"] for m in messages] == [stuck[0]["RowKey"]]
    assert status.read(app.reports, "unit-reconcile", stuck[0]["RowKey"]).status == Status.QUEUED


@pytest.mark.parametrize("framing", [b"\xef\xbb\xbf", b"\x0b", b"\x0b\xef\xbb\xbf"], ids=["bom", "mllp", "mllp-bom"])
def test_commit_ack_answers_the_message_the_parser_reads_first(framing: bytes) -> None:
    """A batch starting with a UTF-8 BOM was ACKed with the second message's control id, and an MLLP-framed body got
    no ACK: the ACK now finds MSH exactly as the parser does."""
    from shared.formats import parse_report

    body = framing + b"MSH|^~\\&|A|B|||20260101||ORU^R01|FIRST|P|2.5.1\rPID|1\rMSH|^~\\&|A|B|||20260101||ORU^R01|SECOND|P|2.5.1\x1c\r"
    ack = hl7_ack.commit_ack(body)
    assert ack is not None and b"MSA|CA|FIRST\r" in ack
    assert len(list(parse_report(body, "application/hl7-v2", "r"))) == 2


def test_since_with_an_unencoded_plus_gets_a_hint_and_the_reading_is_said() -> None:
    from shared.api import parse_list_query
    from shared.problems import Problem

    with pytest.raises(Problem) as refused:
        parse_list_query({"since": "2026-01-31T00:00:00 00:00"}, "s")  # `+00:00` as a browser sends it unencoded
    assert "%2B" in refused.value.detail and "midnight UTC" in refused.value.detail
    assert parse_list_query({"since": "2026-01-31"}, "s").since == "2026-01-31T00:00:00.000Z"
    assert parse_list_query({"since": "2026-01-31T10:00:00"}, "s").since == "2026-01-31T10:00:00.000Z"
    assert parse_list_query({"since": "2026-01-31T10:00:00+02:00"}, "s").since == "2026-01-31T08:00:00.000Z"


def test_the_core_raises_no_http_and_one_table_maps_its_refusals() -> None:
    """Only the HTTP edge (api.py, problems.py) imports azure.functions or builds a response; every kind of refusal
    the core raises has its answer in problems.ANSWERS."""
    import ast
    from pathlib import Path

    from shared import errors, problems

    edge = {"api.py", "problems.py"}
    for path in sorted(Path("shared").rglob("*.py")):
        if path.name in edge:
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "azure.functions" not in imported, path
        assert "func.HttpResponse(" not in path.read_text(), path
    assert set(problems.ANSWERS) == set(errors.Kind)


def test_no_two_modules_of_the_app_import_each_other() -> None:
    import ast
    from pathlib import Path

    imports: dict[str, set[str]] = {}
    for path in Path("shared").rglob("*.py"):
        module = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shared"):
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("shared"))
        imports[module] = found
    pairs = sorted((a, b) for a in imports for b in imports[a] if b in imports and a in imports.get(b, set()) and a < b
                   and not b.startswith(a + "."))  # a package dispatching to its own submodules is no cycle
    assert pairs == []


def test_a_token_scope_never_allows_a_client_no_sender_could_have() -> None:
    """The `client` header becomes a table partition: a name with key characters, or too long, is refused (401)."""
    from shared import keys

    scope = keys.parse_scope("org.*.report")
    assert scope.allows("org.lab") and scope.allows("org")
    assert not scope.allows("org.a/b") and not scope.allows("org.a#b") and not scope.allows("org." + "x" * 70)


def test_an_rsa_key_too_large_to_be_worth_checking_is_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from shared import keys

    huge = rsa.RSAPublicNumbers(65537, (1 << 9000) + 1).public_key()  # 9,001 bits
    pem = huge.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(keys.KeyRegistryError, match="2048 to 8192 bits"):
        keys.load_public_key(pem)
