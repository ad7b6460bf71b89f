"""devhost shutdown: SIGTERM lets running invocations finish, returns unstarted messages, exits 0."""

from __future__ import annotations

import time

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
