"""devhost queue trigger: retries, poison rules, encoding, metadata, lock renewal, batching, polling, functionTimeout,
disabling."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest
from azure.storage.queue import BinaryBase64EncodePolicy, QueueClient, TextBase64EncodePolicy

from tests.apps.events import read
from tests.apps.support import APPS, max_concurrency, message_count, peek_all, raw_queue, unique, wait_until

QUEUES_APP = APPS / "queues"
OVERRIDE = "AzureFunctionsJobHost__extensions__queues__"


def queue_env(storage: str, tmp_path: Path, **overrides: str) -> tuple[dict[str, str], dict[str, str]]:
    """Unique queue names for every queue function of the app, the events file, and host.json overrides."""
    names = {key: unique(key.split("_")[0].lower()) for key in ("FAIL_QUEUE", "OK_QUEUE", "SLOW_QUEUE", "ASYNC_QUEUE")}
    env = {"AzureWebJobsStorage": storage, "EVENTS_FILE": str(tmp_path / "events.jsonl"),
           "PYTHON_THREADPOOL_THREAD_COUNT": "16", **names}
    env.update({k if k.startswith(("AzureWebJobs", "DEVHOST", "PYTHON", "SLOW")) else OVERRIDE + k: v
                for k, v in overrides.items()})
    return env, names


def events(tmp_path: Path, fn: str | None = None) -> list[dict]:
    return [e for e in read(tmp_path / "events.jsonl") if fn is None or e["fn"] == fn]


def send_b64(storage: str, queue: str, text: str) -> None:
    client = QueueClient.from_connection_string(storage, queue, message_encode_policy=TextBase64EncodePolicy())
    try:
        client.create_queue()
    except Exception:  # noqa: BLE001 - already exists
        pass
    client.send_message(text)


def test_failing_function_runs_max_dequeue_count_times_then_body_goes_to_poison_unchanged(
        start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path)  # host.json: maxDequeueCount 3, visibilityTimeout 0
    host = start_devhost(QUEUES_APP, env=env)
    payload = b"\x00\xff binary \xe2\x82\xac payload"
    sender = QueueClient.from_connection_string(storage, q["FAIL_QUEUE"], message_encode_policy=BinaryBase64EncodePolicy())
    sender.send_message(payload)
    stored_text = base64.b64encode(payload).decode()
    poison = wait_until(lambda: peek_all(storage, q["FAIL_QUEUE"] + "-poison"), 15, what="poison message")
    assert [m.content for m in poison] == [stored_text]  # byte-for-byte the original message text
    runs = events(tmp_path, "q_fail")
    assert [e["dequeue_count"] for e in runs] == [1, 2, 3]
    wait_until(lambda: message_count(storage, q["FAIL_QUEUE"]) == 0, 5, what="the original deleted")
    assert "Message has reached MaxDequeueCount of 3" in host.logs()
    assert len(__import__("re").findall(r"Executed 'Functions\.q_fail' \(Failed", host.logs())) == 3


def test_message_that_is_not_base64_goes_to_poison_without_running(start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path)
    start_devhost(QUEUES_APP, env=env)
    raw_queue(storage, q["OK_QUEUE"]).send_message("this is not base64!")
    poison = wait_until(lambda: peek_all(storage, q["OK_QUEUE"] + "-poison"), 10, what="poison message")
    assert [m.content for m in poison] == ["this is not base64!"]
    send_b64(storage, q["OK_QUEUE"], "valid")  # a valid message after it still runs
    wait_until(lambda: events(tmp_path, "q_ok"), 10, what="the valid message")
    assert [e["body"] for e in events(tmp_path, "q_ok")] == ["valid"]


def test_message_already_over_max_dequeue_count_is_poisoned_without_running(start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path)
    send_b64(storage, q["OK_QUEUE"], "tried too often")
    client = raw_queue(storage, q["OK_QUEUE"])
    for _ in range(3):  # dequeue_count 3 = maxDequeueCount; devhost's own receive makes it 4
        msg = next(iter(client.receive_messages(visibility_timeout=30)))
        client.update_message(msg.id, msg.pop_receipt, visibility_timeout=0)
    start_devhost(QUEUES_APP, env=env)
    poison = wait_until(lambda: peek_all(storage, q["OK_QUEUE"] + "-poison"), 10, what="poison message")
    assert base64.b64decode(poison[0].content) == b"tried too often"
    assert events(tmp_path, "q_ok") == []
    wait_until(lambda: message_count(storage, q["OK_QUEUE"]) == 0, 5, what="the original deleted")


def test_function_receives_queue_message_with_metadata_and_success_deletes(start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path)
    start_devhost(QUEUES_APP, env=env)
    send_b64(storage, q["OK_QUEUE"], '{"v":1,"id":"r1"}')
    (e,) = wait_until(lambda: events(tmp_path, "q_ok"), 10, what="invocation")
    assert e["body"] == '{"v":1,"id":"r1"}' and e["dequeue_count"] == 1
    for key in ("id", "pop_receipt", "insertion_time", "expiration_time", "time_next_visible"):
        assert e[key], key
    # Deleted, not just locked: the lock is 10 minutes, so only a count that includes hidden messages tells.
    wait_until(lambda: message_count(storage, q["OK_QUEUE"]) == 0, 5, what="delete after success")


def test_async_queue_function_and_message_encoding_none(start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path, messageEncoding="none")
    start_devhost(QUEUES_APP, env=env)
    raw_queue(storage, q["ASYNC_QUEUE"]).send_message("plain text, not base64")
    (e,) = wait_until(lambda: events(tmp_path, "q_async"), 10, what="invocation")
    assert e["body"] == "plain text, not base64"


def test_visibility_timeout_pauses_between_retries(start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path, visibilityTimeout="00:00:02", maxDequeueCount="2")
    start_devhost(QUEUES_APP, env=env)
    send_b64(storage, q["FAIL_QUEUE"], "retry me")
    wait_until(lambda: peek_all(storage, q["FAIL_QUEUE"] + "-poison"), 15, what="poison message")
    first, second = events(tmp_path, "q_fail")  # maxDequeueCount=2 from the override
    assert second["t"] - first["t"] >= 1.9


def test_lock_is_renewed_while_the_function_runs(start_devhost, storage, tmp_path):
    # A 2 s lock renewed every second; the function runs 5 s. Without renewal the message would reappear
    # at 2 s and run a second time (the poller keeps polling: in-flight 1 is under newBatchThreshold).
    env, q = queue_env(storage, tmp_path, DEVHOST_QUEUE_LOCK_SECONDS="2", maxPollingInterval="00:00:00.200")
    start_devhost(QUEUES_APP, env=env)
    send_b64(storage, q["SLOW_QUEUE"], "5")
    wait_until(lambda: events(tmp_path, "q_slow"), 10, what="start")
    other = raw_queue(storage, q["SLOW_QUEUE"])
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and len(events(tmp_path, "q_slow")) < 2:
        assert list(other.receive_messages(visibility_timeout=1)) == []  # still locked by devhost
        time.sleep(0.3)
    wait_until(lambda: len(events(tmp_path, "q_slow")) >= 2, 10, what="end")
    time.sleep(1.0)
    assert [(e["event"], e["dequeue_count"]) for e in events(tmp_path, "q_slow")] == [("start", 1), ("end", 1)]
    wait_until(lambda: message_count(storage, q["SLOW_QUEUE"]) == 0, 5, what="delete after success")


def _send_many(storage: str, queue: str, bodies: list[str]) -> None:
    for body in bodies:
        send_b64(storage, queue, body)


def test_batch_size_bounds_concurrency(start_devhost, storage, tmp_path):
    env, q = queue_env(storage, tmp_path, batchSize="3", newBatchThreshold="0")
    _send_many(storage, q["SLOW_QUEUE"], ["0.6"] * 7)
    start_devhost(QUEUES_APP, env=env)
    wait_until(lambda: len(events(tmp_path, "q_slow")) == 14, 20, what="all seven messages")
    assert max_concurrency(events(tmp_path, "q_slow")) == 3


def test_new_batch_threshold_fetches_more_before_the_batch_is_done(start_devhost, storage, tmp_path):
    # batchSize 3, newBatchThreshold 2: after the short first message ends (2 in flight ≤ 2) a new batch of 3
    # is fetched while the two long ones still run → 5 at once, never more (batchSize + threshold).
    env, q = queue_env(storage, tmp_path, batchSize="3", newBatchThreshold="2")
    _send_many(storage, q["SLOW_QUEUE"], ["0.3", "2", "2", "2", "2", "2"])
    start_devhost(QUEUES_APP, env=env)
    wait_until(lambda: len(events(tmp_path, "q_slow")) == 12, 20, what="all six messages")
    assert max_concurrency(events(tmp_path, "q_slow")) == 5


def test_a_write_through_the_storage_sdk_does_not_wake_the_poller(start_devhost, storage, tmp_path):
    """The real host wakes its listener only for its own queue output bindings, never for SDK writes: an idle
    queue is noticed at the next poll, which is what end-to-end latency in Azure looks like."""
    env, q = queue_env(storage, tmp_path, maxPollingInterval="00:01:00")
    host = start_devhost(QUEUES_APP, env=env)
    # Back-off from the poller's start: polls after 0.1, ~0.2, ~0.3, ~0.5, ~0.9, ~1.7 s (each increment ±20%),
    # the sixth by 4.12 s at the latest; the seventh comes ~2.7-3.9 s later, 5.7 s at the earliest. A message
    # written at 4.9 s waits for that poll unless something wakes the poller.
    time.sleep(4.9)
    t0 = time.time()
    assert httpx.post(f"{host.url}/api/enqueue/{q['OK_QUEUE']}", content=b"no wake up").status_code == 202
    (e,) = wait_until(lambda: events(tmp_path, "q_ok"), 10, interval=0.01, what="invocation")
    assert e["body"] == "no wake up"
    assert e["t"] - t0 > 0.3, "the poller was woken by the function's own SDK write"


def test_a_queue_output_binding_writes_after_success_and_wakes_the_poller(start_devhost, storage, tmp_path):
    """The host's own queue output binding is the one write that wakes its listener at once (and it encodes the
    message as messageEncoding says, base64 here)."""
    env, q = queue_env(storage, tmp_path, maxPollingInterval="00:01:00")
    host = start_devhost(QUEUES_APP, env=env)
    time.sleep(4.9)  # as above: the next natural poll is over 0.8 s away
    t0 = time.time()
    body = "through the binding \u20ac"
    assert httpx.post(f"{host.url}/api/enqueue-binding", content=body.encode()).status_code == 202
    (e,) = wait_until(lambda: events(tmp_path, "q_ok"), 10, interval=0.01, what="invocation")
    assert e["body"] == body  # base64 on the queue, decoded for the trigger
    assert e["t"] - t0 < 0.8, "a queue output binding wakes the host's listener"


def test_function_timeout_counts_as_a_failed_try(start_devhost, storage, tmp_path):
    """functionTimeout (host.json) bounds every invocation: a timed-out try is a failed one, so the message comes
    back after visibilityTimeout and is poisoned after maxDequeueCount (3 in this app) tries."""
    env, q = queue_env(storage, tmp_path)
    env["AzureFunctionsJobHost__functionTimeout"] = "00:00:01"
    host = start_devhost(QUEUES_APP, env=env)
    send_b64(storage, q["SLOW_QUEUE"], "3")  # runs 3 s, over the 1 s limit
    poison = wait_until(lambda: peek_all(storage, q["SLOW_QUEUE"] + "-poison"), 15, what="poison message")
    assert base64.b64decode(poison[0].content) == b"3"
    starts = [e for e in events(tmp_path, "q_slow") if e["event"] == "start"]
    assert [e["dequeue_count"] for e in starts] == [1, 2, 3]
    assert starts[1]["t"] - starts[0]["t"] < 2.5  # retried once the limit passed, not when the function returned
    wait_until(lambda: message_count(storage, q["SLOW_QUEUE"]) == 0, 5, what="the original deleted")
    assert "Timeout value of 00:00:01 exceeded by function 'Functions.q_slow'" in host.logs()


@pytest.mark.parametrize("key", ["AzureWebJobs.q_ok.Disabled", "AzureWebJobs_q_ok_Disabled"])
def test_disabled_queue_function_is_not_polled(start_devhost, storage, tmp_path, key):
    env, q = queue_env(storage, tmp_path, **{key: "True"})
    host = start_devhost(QUEUES_APP, env=env)
    send_b64(storage, q["OK_QUEUE"], "should stay")
    send_b64(storage, q["ASYNC_QUEUE"], "control")
    wait_until(lambda: events(tmp_path, "q_async"), 10, what="the enabled function")
    time.sleep(1.5)
    assert events(tmp_path, "q_ok") == []
    assert [m.content for m in peek_all(storage, q["OK_QUEUE"])] == [base64.b64encode(b"should stay").decode()]
    assert "Function 'q_ok' is disabled." in host.logs()
    assert "q_ok: queueTrigger" not in host.logs()


def test_worker_processes_share_the_batch_and_run_each_message_once(start_devhost, storage, tmp_path):
    """FUNCTIONS_WORKER_PROCESS_COUNT=2: both processes take messages, together never above batchSize."""
    env, q = queue_env(storage, tmp_path, batchSize="4", newBatchThreshold="0")
    env["FUNCTIONS_WORKER_PROCESS_COUNT"] = "2"
    _send_many(storage, q["SLOW_QUEUE"], ["0.4"] * 8)
    start_devhost(QUEUES_APP, env=env)
    wait_until(lambda: len(events(tmp_path, "q_slow")) == 16, 30, what="all eight messages")
    seen = events(tmp_path, "q_slow")
    assert max_concurrency(seen) <= 4
    assert len({e["pid"] for e in seen}) == 2, "both worker processes ran invocations"
