"""devhost shutdown: SIGTERM lets running invocations finish, returns unstarted messages, exits 0."""

from __future__ import annotations

import time

from devhost.azurite import Azurite
from devhost.process import DevHostProcess
from tests.apps.support import APPS, raw_queue, wait_until
from tests.test_devhost_queues import events, queue_env, send_b64

QUEUES_APP = APPS / "queues"


def test_sigterm_waits_for_the_running_invocation_and_exits_0(start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path)
    host = start_devhost(QUEUES_APP, env=env)
    send_b64(storage, q["SLOW_QUEUE"], "2")
    wait_until(lambda: events(tmp_path, "q_slow"), 10, what="start")
    assert host.stop(timeout=30) == 0
    assert [e["event"] for e in events(tmp_path, "q_slow")] == ["start", "end"]
    log = host.logs()
    assert "Executed 'Functions.q_slow' (Succeeded" in log and "Host stopped." in log
    # Completed before exit, so deleted: nothing left to redeliver.
    assert list(raw_queue(storage, q["SLOW_QUEUE"]).peek_messages()) == []


def test_sigterm_makes_received_but_unstarted_messages_visible_at_once(start_devhost, storage, tmp_path):
    # One worker thread: of a batch of three, one runs and two wait for the thread when SIGTERM arrives.
    env, q = queue_env(storage, tmp_path, PYTHON_THREADPOOL_THREAD_COUNT="1")
    for _ in range(3):
        send_b64(storage, q["SLOW_QUEUE"], "1.5")
    host = start_devhost(QUEUES_APP, env=env)
    wait_until(lambda: events(tmp_path, "q_slow"), 10, what="first start")
    assert host.stop(timeout=30) == 0
    assert [e["event"] for e in events(tmp_path, "q_slow")] == ["start", "end"]
    # Visible again immediately (not after the 10-minute lock), and counted as received once.
    t0 = time.monotonic()
    back = list(raw_queue(storage, q["SLOW_QUEUE"]).receive_messages(max_messages=32, visibility_timeout=5))
    assert time.monotonic() - t0 < 2
    assert len(back) == 2 and all(m.dequeue_count == 2 for m in back)


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_worker_process_count_spreads_http_over_processes_and_stops_them_all(start_devhost, storage):
    """FUNCTIONS_WORKER_PROCESS_COUNT=3: three worker processes run the functions, none of them the host's own (as
    on Azure, where the host is a .NET process); SIGTERM stops all; SIGKILL leaves none."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    env = {"AzureWebJobsStorage": storage, "FUNCTIONS_WORKER_PROCESS_COUNT": "3"}
    for stop in ("stop", "kill"):
        host = start_devhost(APPS / "basic", env=env)

        def ask(_: int) -> int:
            with httpx.Client() as client:  # a new connection each time, so the kernel can pick any process
                return int(client.get(f"{host.url}/api/whoami").text)

        seen: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            wait_until(lambda: seen.update(pool.map(ask, range(40))) or len(seen) == 3, 30, what="three workers")
        assert host.process.pid not in seen
        workers = seen
        if stop == "stop":
            assert host.stop() == 0
        else:
            host.kill()
        wait_until(lambda: not any(_alive(pid) for pid in workers), 15, what="workers gone")


def test_a_worker_that_dies_fails_only_what_it_held_and_the_others_carry_on(start_devhost, storage):
    """A worker killed under the host: later invocations go to the workers left; with none left, each fails at once
    (500), never hangs; the log names the worker that exited."""
    import os
    import signal

    import httpx

    host = start_devhost(APPS / "basic", env={"AzureWebJobsStorage": storage, "FUNCTIONS_WORKER_PROCESS_COUNT": "2"})
    with httpx.Client(timeout=30) as client:
        seen: set[int] = set()
        wait_until(lambda: seen.add(int(client.get(f"{host.url}/api/whoami").text)) or len(seen) == 2, 30,
                   what="both workers")
        first, second = sorted(seen)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: f"Worker process {first} exited" in host.logs(), 15, what="the host noticing")
        assert {int(client.get(f"{host.url}/api/whoami").text) for _ in range(10)} == {second}
        os.kill(second, signal.SIGKILL)
        wait_until(lambda: f"Worker process {second} exited" in host.logs(), 15, what="the host noticing")
        answer = client.get(f"{host.url}/api/whoami")
        assert answer.status_code == 500 and answer.content == b""
    assert "no worker process is left" in host.logs()
    assert host.stop() == 0


def test_bad_worker_process_count_fails_at_start(start_devhost, storage):
    import pytest

    with pytest.raises(RuntimeError, match="FUNCTIONS_WORKER_PROCESS_COUNT"):
        start_devhost(APPS / "basic", env={"AzureWebJobsStorage": storage, "FUNCTIONS_WORKER_PROCESS_COUNT": "99"})


def test_a_host_that_fails_to_start_leaves_no_log_behind(storage):
    """The error carries the log's tail, so the log itself goes."""
    import pytest

    host = DevHostProcess(APPS / "basic", env={"AzureWebJobsStorage": storage, "FUNCTIONS_WORKER_PROCESS_COUNT": "99"})
    with pytest.raises(RuntimeError, match="FUNCTIONS_WORKER_PROCESS_COUNT") as failed:
        host.start()
    assert "devhost exited" in str(failed.value)
    assert host.log_path is None


def test_a_stopped_host_and_azurite_leave_no_log_behind(storage):
    """Tests leave nothing in the temp folder: each process's own log goes when it is closed."""
    with DevHostProcess(APPS / "basic", env={"AzureWebJobsStorage": storage}) as host:
        devhost_log = host.log_path
        assert devhost_log is not None and devhost_log.exists()
    with Azurite() as azurite:
        azurite_log = azurite.log_path
        assert azurite_log is not None and azurite_log.exists()
    assert not devhost_log.exists() and not azurite_log.exists()
