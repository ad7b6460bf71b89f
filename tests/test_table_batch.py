"""shared/table_batch.py frames transactions itself for speed: every part must be what the SDK's own
`TableBatchOperations` would send (same method, URL, headers and body), and Azurite must commit them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from azure.core import MatchConditions
from azure.data.tables import EdmType, TableClient, TableTransactionError, UpdateMode
from azure.data.tables._table_batch import TableBatchOperations
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import index, table_batch
from shared.storage import Storage

ENDPOINT = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;TableEndpoint=http://127.0.0.1:1/devstoreaccount1;"
KEYS = st.text(st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\#?"), min_size=1,
               max_size=40)
VALUES = st.one_of(st.text(max_size=50), st.integers(-(2**31), 2**31 - 1), st.booleans(),
                   st.floats(allow_nan=False, allow_infinity=False), st.none(),
                   st.datetimes(timezones=st.just(UTC)), st.binary(max_size=20),
                   st.integers(2**31, 2**62).map(lambda v: (v, EdmType.INT64)))
PROPERTIES = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True), VALUES, max_size=8)


def sdk_parts(table: TableClient, operations: list) -> list[tuple[str, str, dict, str]]:
    batch = TableBatchOperations(config=table._client._config, endpoint=f"{table.scheme}://{table._primary_hostname}",
                                 table_name=table.table_name, is_cosmos_endpoint=False)
    for operation in operations:
        batch.add_operation(operation)
    return [(r.method, r.url, {k: v for k, v in r.headers.items() if k != "Content-Length"},
             (r.content or b"").decode() if isinstance(r.content, bytes) else (r.content or ""))
            for r in batch.requests]


def our_parts(table: TableClient, operations: list) -> list[tuple[str, str, dict, str]]:
    return [(method, url, dict(headers), body) for method, url, headers, body in table_batch.parts(table, operations)]


@settings(max_examples=60, deadline=None)
@given(partition=KEYS, rows=st.lists(KEYS, min_size=1, max_size=4, unique=True), props=PROPERTIES,
       etag=st.sampled_from(['W/"datetime\'2026-11-23T10%3A00%3A00.1Z\'"', "abc", '"quoted"']))
def test_every_part_is_the_sdks_own(partition: str, rows: list[str], props: dict, etag: str) -> None:
    table = TableClient.from_connection_string(ENDPOINT, "reports")
    guarded = {"mode": UpdateMode.MERGE, "etag": etag, "match_condition": MatchConditions.IfNotModified}
    operations: list = []
    for row in rows:
        entity = {"PartitionKey": partition, "RowKey": row, **props}
        operations += [
            ("create", entity),
            ("update", entity, guarded),
            ("update", entity, {"mode": UpdateMode.REPLACE}),
            ("upsert", entity, {"mode": UpdateMode.REPLACE}),
            ("upsert", entity),
            ("delete", entity),
            ("delete", entity, {"etag": etag, "match_condition": MatchConditions.IfNotModified}),
        ]
    assert our_parts(table, operations) == sdk_parts(table, operations)


def test_mixed_partitions_and_oversized_transactions_are_refused() -> None:
    table = TableClient.from_connection_string(ENDPOINT, "reports")
    with pytest.raises(ValueError, match="Partition"):
        table_batch.parts(table, [("create", {"PartitionKey": "a", "RowKey": "1"}),
                                  ("create", {"PartitionKey": "b", "RowKey": "1"})])
    with pytest.raises(ValueError, match="1 to 100"):
        table_batch.parts(table, [("create", {"PartitionKey": "a", "RowKey": str(n)}) for n in range(101)])
    with pytest.raises(ValueError, match="unsupported"):
        table_batch.parts(table, [("create", {"PartitionKey": "a", "RowKey": "1"}, {"timeout": 5})])


@pytest.fixture(params=["fast", "public"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each transaction test runs on the fast path and on the public SDK path it falls back to."""
    monkeypatch.setattr(table_batch, "FAST", request.param == "fast")
    return request.param


def test_the_fast_path_is_used_only_where_every_private_name_exists(app: Storage,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that moves a private name the fast path uses turns it off: transactions go through the public
    `submit_transaction` and still commit."""
    assert table_batch.fast_path_works(app.reports)
    monkeypatch.setattr(table_batch, "_CLIENT_ATTRIBUTES", (*table_batch._CLIENT_ATTRIBUTES, "_renamed_in_12_8"))
    assert not table_batch.fast_path_works(app.reports)
    public: list[int] = []
    real = table_batch.submit_public
    monkeypatch.setattr(table_batch, "submit_public", lambda t, ops: public.append(len(ops)) or real(t, ops))
    assert table_batch.submit(app.reports, [("upsert", {"PartitionKey": "batch-moved", "RowKey": "r"})])[0]["etag"]
    assert public == [1]
    monkeypatch.setattr(table_batch, "_PRIVATE_IMPORTS", False)
    monkeypatch.setattr(table_batch, "_CLIENT_ATTRIBUTES", ())
    assert not table_batch.fast_path_works(app.reports)


def test_azurite_commits_the_parts_and_refuses_a_stale_etag(app: Storage, path: str) -> None:
    pk = f"batch'test é {path}"  # Azure forbids / \ # ? in keys
    when = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    first = {"PartitionKey": pk, "RowKey": "row'1", "text": "é\u2028", "count": 3, "big": (2**40, EdmType.INT64),
             "at": when, "flag": True}
    written = table_batch.submit(app.reports, [("create", first),
                                               ("upsert", {**first, "RowKey": f"{index.NEWEST}x"},
                                                {"mode": UpdateMode.REPLACE})])
    stored = app.reports.get_entity(pk, "row'1")
    assert (stored["text"], stored["count"], stored["big"].value, stored["at"], stored["flag"]) == (
        "é\u2028", 3, 2**40, when, True)
    assert stored.metadata["etag"] == written[0]["etag"]
    table_batch.submit(app.reports, [
        ("update", {"PartitionKey": pk, "RowKey": "row'1", "count": 4},
         {"mode": UpdateMode.MERGE, "etag": written[0]["etag"], "match_condition": MatchConditions.IfNotModified}),
        ("delete", {"PartitionKey": pk, "RowKey": f"{index.NEWEST}x"})])
    assert app.reports.get_entity(pk, "row'1")["count"] == 4
    with pytest.raises(TableTransactionError) as stale:
        table_batch.submit(app.reports, [
            ("update", {"PartitionKey": pk, "RowKey": "row'1", "count": 5},
             {"mode": UpdateMode.MERGE, "etag": written[0]["etag"], "match_condition": MatchConditions.IfNotModified})])
    assert stale.value.status_code == 412
    assert app.reports.get_entity(pk, "row'1")["count"] == 4



def test_a_conflict_names_its_operation_on_both_paths(app: Storage, path: str) -> None:
    pk = f"batch-conflict-{path}"
    table_batch.submit(app.reports, [("upsert", {"PartitionKey": pk, "RowKey": "b"})])
    with pytest.raises(TableTransactionError) as conflict:
        table_batch.submit(app.reports, [("create", {"PartitionKey": pk, "RowKey": "a"}),
                                         ("create", {"PartitionKey": pk, "RowKey": "b"})])
    assert conflict.value.status_code == 409 and conflict.value.index == 1
    with pytest.raises(ValueError, match="1 to 100"):
        table_batch.submit(app.reports, [("create", {"PartitionKey": pk, "RowKey": str(n)}) for n in range(101)])


def test_an_unknown_operation_is_named_in_the_error() -> None:
    from shared import table_batch

    with pytest.raises(ValueError, match="unsupported transaction operation merge"):
        table_batch.kind_of(("merge", {"PartitionKey": "p", "RowKey": "r"}))  # type: ignore[arg-type]
    assert table_batch.kind_of(("UPSERT", {})) is table_batch.TransactionOperation.UPSERT  # type: ignore[arg-type]
