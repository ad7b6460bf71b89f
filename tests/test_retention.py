"""Patient data is kept only as long as allowed: the lifecycle policy Azure applies, the same rule applied to
Azurite by the admin command, and what a report past retention still says and allows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from devhost.azurite import REPO_ROOT, Azurite
from shared import retention
from shared.config import load_settings
from shared.storage import Storage
from tests.service import admin

POLICY_FILE = REPO_ROOT / "docs" / "lifecycle-policy.json"
NAME = re.compile(r"^[A-Za-z0-9-]{1,256}$")
DELETE_CONDITIONS = {"daysAfterCreationGreaterThan", "daysAfterModificationGreaterThan",
                     "daysAfterLastAccessTimeGreaterThan"}


def settings(**values: str):  # noqa: ANN201 - a Settings
    return load_settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true", **values})


def test_the_policy_file_is_the_default_settings_policy_and_valid_for_azure() -> None:
    """docs/lifecycle-policy.json is what `admin retention policy` prints with the defaults, and follows the rules
    Azure's management-policy API checks (names, types, filters, one condition per action, whole days)."""
    policy = json.loads(POLICY_FILE.read_text())
    assert policy == retention.policy(settings())
    assert set(policy) == {"rules"} and 1 <= len(policy["rules"]) <= 100
    names = [rule["name"] for rule in policy["rules"]]
    assert len(set(names)) == len(names) and all(NAME.match(n) for n in names)
    for rule in policy["rules"]:
        assert set(rule) == {"enabled", "name", "type", "definition"} and rule["type"] == "Lifecycle"
        filters, actions = rule["definition"]["filters"], rule["definition"]["actions"]
        assert filters["blobTypes"] == ["blockBlob"]
        assert all(p.startswith("reports/") and len(p) <= 1024 for p in filters["prefixMatch"])
        for target, action in actions.items():
            assert target in {"baseBlob", "version", "snapshot"} and set(action) == {"delete"}
            [(condition, days)] = action["delete"].items()
            assert condition in DELETE_CONDITIONS and isinstance(days, int) and 0 <= days <= 99999
    kept = {rule["name"]: rule["definition"]["actions"]["baseBlob"]["delete"] for rule in policy["rules"]}
    assert kept == {"raw-reports": {"daysAfterCreationGreaterThan": 90},
                    "normalised-results": {"daysAfterModificationGreaterThan": 365}}


def test_the_policy_follows_the_settings(azurite: Azurite) -> None:
    done = admin(azurite.connection_string, "retention", "policy")
    assert json.loads(done.stdout) == retention.policy(settings())
    shorter = retention.policy(settings(RAW_RETENTION_DAYS="30", RESULTS_RETENTION_DAYS="60"))
    assert [r["definition"]["actions"]["baseBlob"]["delete"] for r in shorter["rules"]] == [
        {"daysAfterCreationGreaterThan": 30}, {"daysAfterModificationGreaterThan": 60}]


@pytest.fixture
def own_storage() -> Iterator[Storage]:
    """Its own Azurite: applying retention with a clock days ahead would delete other tests' blobs."""
    with Azurite() as instance:
        storage = Storage.from_connection_string(instance.connection_string)
        storage.ensure()
        yield storage


def test_apply_deletes_what_azure_would_and_nothing_else(own_storage: Storage) -> None:
    for name in ("raw/lab/01A", "results/lab/01A.ndjson", "other/keep"):
        own_storage.container.upload_blob(name, b"x")
    rules = settings(RAW_RETENTION_DAYS="1", RESULTS_RETENTION_DAYS="3")
    now = datetime.now(UTC)
    assert retention.apply(own_storage, rules, now) == retention.Applied(0, 0)  # nothing is old yet
    assert retention.apply(own_storage, rules, now + timedelta(days=2)) == retention.Applied(1, 0)
    assert retention.apply(own_storage, rules, now + timedelta(days=4)) == retention.Applied(0, 1)
    assert [b.name for b in own_storage.container.list_blobs()] == ["other/keep"]


def test_the_admin_command_applies_it_on_azurite(azurite: Azurite) -> None:
    done = json.loads(admin(azurite.connection_string, "retention", "apply").stdout)
    assert done == {"raw_deleted": 0, "results_deleted": 0, "raw_retention_days": 90,
                    "results_retention_days": 365}


def test_a_report_past_retention_keeps_its_row_and_is_not_replayed(app: Storage) -> None:
    from shared import admin as admin_module
    from shared import status
    from tests.test_processing import submit

    report_id = submit(app, b"patient_id,test_code,result,specimen_collected_at\nP1,94500-6,260373001,2024-01-02\n",
                       "text/csv")
    row = status.write(app.reports, status.read(app.reports, "unit-proc", report_id), {"status": "failed"})
    app.container.delete_blob(f"raw/unit-proc/{report_id}")  # what the policy does after RAW_RETENTION_DAYS
    with pytest.raises(admin_module.AdminError, match="raw body is gone"):
        admin_module.replay_report(app, row)
    assert status.read(app.reports, "unit-proc", report_id).status.value == "failed"
