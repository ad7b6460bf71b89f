"""One reset forgets everything the process remembers: settings, storage clients and the authentication caches."""

from __future__ import annotations

import pytest

from shared import activity, auth, config, duplicates, registry, senders, storage, tokens


def test_once_keeps_a_result_until_reset() -> None:
    calls: list[int] = []

    @registry.once
    def answer() -> int:
        calls.append(1)
        return len(calls)

    assert (answer(), answer()) == (1, 1)
    registry.reset()
    assert answer() == 2


def test_reset_forgets_settings_clients_and_caches(app: storage.Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    key = senders.add(app.senders, "registry-reset")
    assert senders.authenticate_key(app.senders, key, cache_seconds=300) == "registry-reset"
    activity.record(app.activity, "registry-reset", "01KB0000000000000000000000")
    before_settings, before_clients = config.get_settings(), storage.get_storage()
    assert senders._accepted.get(senders.key_hash(key)) == "registry-reset"

    monkeypatch.setenv("MAX_REPORT_BYTES", "1234")
    registry.reset()

    assert senders._accepted.get(senders.key_hash(key)) is None
    assert len(activity._seen) == 0
    assert len(auth.standing._cache) == 0 and len(duplicates.policy._cache) == 0
    assert tokens.signing_secret._value is None
    assert config.get_settings() is not before_settings and config.get_settings().max_report_bytes == 1234
    assert storage.get_storage() is not before_clients
