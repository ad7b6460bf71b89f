"""Fixtures: a real Azurite from npm on free ports, and devhost processes serving an app against it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devhost.azurite import REPO_ROOT, Azurite
from devhost.process import DevHostProcess
from tests.downstream import Downstream
from tests.service import FAULT_LINES

if TYPE_CHECKING:
    from shared.storage import Storage


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """tmp_path folders live in one temp folder of this run, removed when it ends: pytest's own default keeps the
    last three runs' folders in the system temp directory, and tests leave nothing behind."""
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="lab-intake-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One in-memory Azurite for the session; tests isolate themselves by unique names."""
    with Azurite() as instance:
        yield instance


@pytest.fixture
def persistent_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An Azurite that keeps its data on disk, so a test can stop and restart it."""
    instance = Azurite(location=tmp_path / "azurite")
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    """A real HTTP server on loopback standing in for the downstream system."""
    server = Downstream().start()
    yield server
    server.stop()


@pytest.fixture
def storage(azurite: Azurite) -> str:
    return azurite.connection_string


@pytest.fixture
def app(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[Storage]:
    """The app's own settings and storage clients pointed at the session Azurite, as the host would set them."""
    from shared import registry
    from shared.storage import get_storage

    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    for name in ("DELIVERY_URL", "PUBLIC_BASE_URL", "MAX_REPORT_BYTES", "RECONCILE_AFTER_SECONDS",
                 "APPLICATIONINSIGHTS_CONNECTION_STRING", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    registry.reset()  # a fresh process's state: settings read anew, caches empty
    yield get_storage()
    registry.reset()


@pytest.fixture
def start_devhost(request: pytest.FixtureRequest) -> Iterator[Callable[..., DevHostProcess]]:
    """Start devhost processes; each is stopped (and its log shown on failure) when the test ends."""
    started: list[DevHostProcess] = []

    def start(app_dir: Path = REPO_ROOT, env: dict[str, str] | None = None, **kwargs: object) -> DevHostProcess:
        host = DevHostProcess(app_dir=Path(app_dir), env=dict(env or {}), **kwargs)
        started.append(host)
        return host.start()

    yield start
    for host in started:
        host.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for host in started:
            print(f"\n----- devhost log ({host.app_dir.name}, port {host.port}) -----\n{host.logs()[-8000:]}")
    for host in started:
        host.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(FAULT_LINES, [])
    if lines:
        terminalreporter.section("fault scenarios: reports sent / acknowledged / terminal / lost")
        for line in lines:
            terminalreporter.write_line(line)
