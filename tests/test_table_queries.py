"""Every table query the app, devhost and the admin CLI make is one Azure can answer by seeking,
and a listing page costs the same with a year of history: checked on the wire, by a recording proxy in front of
Azurite's table endpoint."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest
from ulid import ULID

from devhost.azurite import REPO_ROOT, Azurite, connection_string
from devhost.process import DevHostProcess
from shared import activity, status, status_entity
from shared.clock import to_iso
from shared.lifecycle import Status
from shared.models import StatusRecord
from shared.storage import Storage, raw_blob_name
from tests.history import seed
from tests.service import EXAMPLES, TERMINAL, add_sender, admin, app_env, poll
from tests.simplereport_client import new_rsa_key, public_pem
from tests.storage_proxy import Call, StorageProxy, unbounded_reason

CSV = (EXAMPLES / "report.csv").read_bytes()
GROWING = {"reports", "idempotency", "reportactivity", "checkpoints", "tokenids", "fingerprints", "poisoned"}
SMALL = {"senders", "keys"}  # one row per sender or sender key: read by key, never scanned by the app


class Wire:
    """A clean Azurite whose table endpoint is reached through a recording proxy, and devhost on it."""

    def __init__(self, azurite: Azurite, proxy: StorageProxy, host: DevHostProcess, conn: str) -> None:
        self.azurite, self.proxy, self.host, self.conn = azurite, proxy, host, conn

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.host.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


@pytest.fixture(scope="module")
def wire() -> Iterator[Wire]:
    with Azurite() as azurite:
        blob, queue, table = azurite.ports
        with StorageProxy(table) as proxy:
            conn = connection_string(blob, queue, proxy.port)
            host = DevHostProcess(app_dir=REPO_ROOT, env=app_env(conn)).start()
            try:
                yield Wire(azurite, proxy, host, conn)
            finally:
                host.stop()
                host.close()


def wait_terminal(client: httpx.Client, report_id: str) -> dict:
    return poll(lambda: client.get(f"/api/reports/{report_id}"), lambda r: r.json().get("status") in TERMINAL).json()


def stuck_report(storage: Storage, sender: str) -> str:
    """A report whose ingest died after storing its row (and whose blob is gone): what the reconciler is for."""
    report_id = str(ULID())
    now = to_iso(datetime.now(UTC))
    record = StatusRecord(id=report_id, sender=sender, status=Status.RECEIVED.value, content_type="text/csv",
                          size_bytes=3, sha256="0" * 64, received_at=now, updated_at=now)
    activity.record(storage.activity, sender, report_id)
    status.create(storage.reports, status_entity.new_entity(record, raw_blob_name(sender, report_id)))
    return report_id


def senders_query_problem(call: Call) -> str | None:
    """The senders table stays small, but is still only read one partition at a time, by key alone."""
    clauses = re.split(r"\s+and\s+", call.query.get("$filter", ""))
    return None if clauses and all(c.strip().startswith("PartitionKey eq") for c in clauses) else "not by key"


def reportstream_flows(wire: Wire, tmp_path: Path) -> None:
    """ReportStream's senders: a token, a submission with an organisation-wide token, history reads (with and
    without `client`, by UUID), a validation."""
    signing = new_rsa_key()
    (tmp_path / "wire.pem").write_bytes(public_pem(signing))
    admin(wire.conn, "keys", "add", "wire_org.*.report", "--kid", "wire", str(tmp_path / "wire.pem"))
    add_sender(wire.conn, "wire_org.lab")
    now = int(time.time())
    signed = jwt.encode({"iss": "wire_org", "sub": "wire_org", "aud": wire.host.url, "exp": now + 60,
                         "jti": str(ULID())}, signing, algorithm="RS256", headers={"kid": "wire"})
    token = httpx.post(f"{wire.host.url}/api/token", content=(
        "scope=wire_org.*.report&grant_type=client_credentials&client_assertion_type="
        f"urn:ietf:params:oauth:client-assertion-type:jwt-bearer&client_assertion={signed}").encode()).json()
    with httpx.Client(base_url=wire.host.url, headers={"Authorization": token["access_token"]}) as client:
        posted = client.post("/api/waters", content=CSV, headers={"Content-Type": "text/csv",
                                                                  "client": "wire_org.lab"})
        assert posted.status_code == 201, posted.text
        history = f"/api/waters/report/{posted.json()['id']}/history"
        poll(lambda: client.get(history).json(), lambda h: h["overallStatus"] == "Delivered")
        assert client.get(history, headers={"client": "wire_org.other"}).status_code == 200
        assert client.post("/api/validate", content=CSV, headers={"Content-Type": "text/csv"}).status_code == 200


def test_everyday_work_makes_only_bounded_table_queries(wire: Wire, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    key = add_sender(wire.conn, "lab-wire")
    with wire.client(key) as client:
        posted = [client.post("/api/reports", content=CSV, headers={"Content-Type": "text/csv"}) for _ in range(3)]
        posted.append(client.post("/api/reports", content=b"nope\n", headers={"Content-Type": "text/csv"}))
        for _ in range(2):
            posted.append(client.post("/api/reports", content=CSV,
                                      headers={"Content-Type": "text/csv", "Idempotency-Key": "k-1"}))
        ids = sorted({r.json()["id"] for r in posted})
        assert len(ids) == 5
        for report_id in ids:
            wait_terminal(client, report_id)

        hour_ago = to_iso(datetime.now(UTC) - timedelta(hours=1))
        cursor, seen = None, []
        while True:
            page = client.get("/api/reports", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [r["id"] for r in page["reports"]]
            if not (cursor := page["next_cursor"]):
                break
        assert seen == sorted(ids, reverse=True)
        for params in ({"status": "rejected"}, {"since": hour_ago}, {"status": "processed", "since": hour_ago},
                       {"limit": 1000}):
            assert client.get("/api/reports", params=params).status_code == 200

        storage = Storage.from_connection_string(wire.conn)
        stuck = stuck_report(storage, "lab-wire")
        monkeypatch.setenv("RECONCILE_AFTER_SECONDS", "0")
        assert "1 report(s) re-enqueued" in admin(wire.conn, "reconcile").stdout
        assert wait_terminal(client, stuck)["status"] == "failed"  # its raw blob is missing
        storage.container.upload_blob(raw_blob_name("lab-wire", stuck), b"abc")  # (a replay needs its raw body)
        replayed = admin(wire.conn, "poison", "replay", "--id", stuck)  # no --sender: found from the id
        assert f"replayed {stuck} (lab-wire)" in replayed.stdout
        wait_terminal(client, stuck)

        reportstream_flows(wire, tmp_path)

    admin(wire.conn, "poison", "list")
    admin(wire.conn, "senders", "rotate", "lab-wire")
    admin(wire.conn, "senders", "disable", "lab-wire")
    admin(wire.conn, "senders", "enable", "lab-wire")
    admin(wire.conn, "senders", "list")

    queries = [call for call in wire.proxy.take() if call.is_query]
    problems = [(c.table, c.query.get("$filter"), unbounded_reason(c)) for c in queries
                if c.table in GROWING and unbounded_reason(c)]
    problems += [(c.table, c.query.get("$filter"), "scan") for c in queries
                 if c.table in SMALL and senders_query_problem(c)]
    assert not problems, problems
    assert {c.table for c in queries} >= {"reports", "reportactivity", "senders"}
    assert all(c.table in GROWING | SMALL for c in queries), {c.table for c in queries}
    assert any("s~received~" in c.query.get("$filter", "") for c in queries)  # the reconciler's own query was seen


@pytest.mark.parametrize("days", [365])
def test_a_listing_page_costs_one_query_with_a_year_of_history(wire: Wire, days: int) -> None:
    now = datetime.now(UTC)
    direct = Storage.from_connection_string(wire.azurite.connection_string)  # seeding need not be recorded
    key = add_sender(wire.conn, "lab-year")
    seed(direct.reports, "lab-year", 20_000, now - timedelta(minutes=1), timedelta(days=days))
    wire.proxy.take()

    def page(**params: object) -> tuple[dict, int]:
        with wire.client(key) as client:
            response = client.get("/api/reports", params=params)
        assert response.status_code == 200, response.text
        # Only this sender's partition: devhost's reconcile timer may query other senders' meanwhile.
        mine = [c for c in wire.proxy.take() if c.table == "reports" and "'lab-year'" in c.query.get("$filter", "")]
        return response.json(), len(mine)

    newest, calls = page()
    assert calls == 1 and len(newest["reports"]) == 50
    ids = [r["id"] for r in newest["reports"]]
    assert ids == sorted(ids, reverse=True)
    older, calls = page(cursor=newest["next_cursor"])
    assert calls == 1 and older["reports"][0]["id"] < ids[-1]

    rejected, calls = page(status="rejected", limit=2)
    assert calls == 1 and [r["status"] for r in rejected["reports"]] == ["rejected", "rejected"]

    hour_ago = to_iso(now - timedelta(hours=1))
    recent, calls = page(since=hour_ago)
    assert calls == 1 and recent["reports"] and all(r["updated_at"] >= hour_ago for r in recent["reports"])
    assert recent["next_cursor"] is None

    month_ago = to_iso(now - timedelta(days=30))
    month, calls = page(since=month_ago, limit=1000)
    assert calls <= 2 and len(month["reports"]) == 1000 and month["next_cursor"]
    stamps = [r["updated_at"] for r in month["reports"]]
    assert stamps == sorted(stamps, reverse=True) and stamps[-1] >= month_ago

    failed, calls = page(status="failed", since=to_iso(now - timedelta(days=90)))
    assert calls == 1 and failed["reports"] and {r["status"] for r in failed["reports"]} == {"failed"}
