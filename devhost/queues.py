"""Queue trigger listener following the storage queues extension 5.x (QueueListener + QueueProcessor) rules."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import functools
import logging
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.functions.queue import QueueMessage as FuncQueueMessage
from azure.storage.queue import ExponentialRetry, QueueClient
from azure.storage.queue import QueueMessage as SdkMessage

from devhost.functions import Dispatcher, LoadedFunction, Outcome
from devhost.hostconfig import QueueOptions
from devhost.settings import Settings
from shared.connection import StorageConnection

log = logging.getLogger("devhost")

MIN_POLLING_INTERVAL = 0.1
DEFAULT_LOCK_SECONDS = 600  # the extension receives with a 10-minute visibility timeout and renews it
STOP_POLL_GRACE_SECONDS = 5.0
START_GRACE_SECONDS = 5.0
_WHITESPACE = re.compile(r"[ \t\r\n]")


class Backoff:
    """RandomizedExponentialBackoffStrategy: min, min+~1Δ, min+~2Δ, min+~4Δ … capped at max; reset on success."""

    def __init__(self, minimum: float, maximum: float, delta: float | None = None,
                 jitter: Callable[[float, float], float] = random.uniform) -> None:
        self.minimum, self.maximum = minimum, max(minimum, maximum)
        self.delta = minimum if delta is None else delta
        self.jitter = jitter
        self.current = 0.0
        self.exponent = 0

    def next(self, succeeded: bool) -> float:
        if succeeded:
            self.current, self.exponent = self.minimum, 1
        elif self.current != self.maximum:
            interval = self.minimum
            if self.exponent > 0:
                interval += self.jitter(0.8, 1.2) * (2 ** (self.exponent - 1)) * self.delta
            if interval < self.maximum:
                self.current, self.exponent = interval, self.exponent + 1
            else:
                self.current = self.maximum
        return self.current


# --- queue output bindings: the one write that wakes a listener early ------------------------------------


class QueueOutputs:
    """The host's queue output binding: after a successful invocation, each value set on a `queue` binding with
    direction `out` (or returned through `$return`) is sent to its queue, encoded per messageEncoding, and a
    listener of this host on that queue is woken at once, as the host's SharedQueueWatcher does. Writes the app
    makes itself through the storage SDK wake nothing."""

    def __init__(self, settings: Settings, encoding: str) -> None:
        self.settings = settings
        self.encoding = encoding
        self._clients: dict[tuple[str, str], QueueClient] = {}
        self._listeners: dict[str, set[Callable[[], object]]] = {}
        self._lock = threading.Lock()

    def listen(self, queue_name: str, wake: Callable[[], object]) -> None:
        with self._lock:
            self._listeners.setdefault(queue_name.lower(), set()).add(wake)

    def write(self, fn: LoadedFunction, outcome: Outcome) -> None:
        """Send every value the invocation set; raise (the invocation then fails, as in the host) if one cannot
        be sent."""
        for binding in fn.queue_outputs:
            name = str(binding.get("name"))
            value = outcome.value if name == "$return" else outcome.outputs.get(name)
            if value is None:
                continue
            queue_name = self.settings.resolve(str(binding.get("queueName") or "")).lower()
            client = self._client(binding, queue_name)
            for message in value if isinstance(value, (list, tuple)) else [value]:
                self._send(client, message)
            with self._lock:
                wakes = list(self._listeners.get(queue_name, ()))
            for wake in wakes:
                wake()

    def _client(self, binding: dict[str, Any], queue_name: str) -> QueueClient:
        connection = self.settings.storage_connection(binding.get("connection"))
        key = (connection.describe(), queue_name)
        with self._lock:
            client = self._clients.get(key)
        if client is None:
            client = make_client(connection, queue_name)
            try:
                client.create_queue()  # the binding creates its queue, as the host's does
            except ResourceExistsError:
                pass
            with self._lock:
                self._clients[key] = client
        return client

    def _send(self, client: QueueClient, message: Any) -> None:
        if isinstance(message, str):
            body = message.encode("utf-8")
        elif isinstance(message, (bytes, bytearray)):
            body = bytes(message)
        else:
            raise TypeError(f"a queue output binding takes str or bytes (or a list of them), "
                            f"not {type(message).__name__}")
        text = base64.b64encode(body).decode("ascii") if self.encoding == "base64" else body.decode("utf-8")
        client.send_message(text)


# --- messages ---------------------------------------------------------------------------------------------


def decode_body(text: str, encoding: str) -> bytes | None:
    """The message body as the function sees it; None when base64 is expected and the text is not base64."""
    if encoding == "none":
        return text.encode("utf-8")
    try:
        # .NET's Convert.FromBase64String ignores white space but is otherwise strict.
        return base64.b64decode(_WHITESPACE.sub("", text), validate=True)
    except (binascii.Error, ValueError):
        return None


def make_client(connection: StorageConnection, queue_name: str) -> QueueClient:
    """A queue client for the trigger's connection: by connection string, or by the queue service URI with the
    connection's token credential (identity-based connection)."""
    import requests
    from requests.adapters import HTTPAdapter

    # A larger pool than requests' default 10, so concurrent renewals/deletes reuse connections.
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=64)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # The host's .NET storage client retries 3 times from 0.8 s, exponentially; the Python SDK's default starts at
    # 15 s, which would keep a poll (and a shutdown) waiting for a minute while storage refuses or is down.
    options = {"transport": RequestsTransport(session=session, session_owner=False),
               # The SDK annotates initial_backoff as int; its backoff arithmetic takes a float as well.
               "retry_policy": ExponentialRetry(initial_backoff=0.8,  # type: ignore[arg-type]  # float is fine
                                                increment_base=2, retry_total=3)}
    # No encode/decode policy: devhost sees and forwards the stored text exactly (poison copies stay byte-exact).
    if connection.connection_string is not None:
        return QueueClient.from_connection_string(connection.connection_string, queue_name, **options)
    return QueueClient(connection.service_uri("queue"), queue_name, credential=connection.token_credential(),
                       **options)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)


@dataclass
class _Receipt:
    """The message identity and its current pop receipt (renewals replace the receipt)."""

    id: str
    pop_receipt: str | None  # as the SDK gives and takes it
    content: str
    dequeue_count: int


class QueuePoller:
    """One queue-triggered function: polls, dispatches, renews locks, and completes/releases/poisons."""

    def __init__(self, fn: LoadedFunction, queue_name: str, connection: StorageConnection, options: QueueOptions,
                 dispatcher: Dispatcher, io_pool: concurrent.futures.Executor, lock_seconds: int,
                 outputs: QueueOutputs | None = None) -> None:
        self.fn = fn
        self.queue_name = queue_name
        self.options = options
        self.dispatcher = dispatcher
        self.io_pool = io_pool
        self.lock_seconds = max(1, int(lock_seconds))
        self.client = make_client(connection, queue_name)
        self.poison_name = f"{queue_name}-poison"
        self.poison_client = make_client(connection, self.poison_name)
        self.backoff = Backoff(MIN_POLLING_INTERVAL, options.max_polling_interval)
        self.trigger_name = str(fn.info.trigger.get("name"))
        self.reason = f"New queue message detected on '{queue_name}'."
        self.stopping = False
        self.inflight: set[asyncio.Task[None]] = set()
        self.waiting: set[concurrent.futures.Future[Outcome]] = set()
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.outputs = outputs

    async def _io(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, functools.partial(call, *args, **kwargs))

    async def _ensure_queue(self, client: QueueClient) -> None:
        try:
            await self._io(client.create_queue)
        except ResourceExistsError:
            pass

    async def start(self) -> None:
        # Set to stop, or by this host's own queue output bindings. Like the real host, devhost never wakes the poller
        # for messages the app writes through the storage SDK: those are noticed at the next poll, as in Azure.
        self._wake = asyncio.Event()
        if self.outputs is not None:
            loop = asyncio.get_running_loop()
            wake = self._wake
            self.outputs.listen(self.queue_name, lambda: loop.call_soon_threadsafe(wake.set))
        # Creating the queue usually takes milliseconds, so it exists once the host says it is running; storage
        # that is slow or refusing (no token yet) must not hold up the HTTP functions, so the start waits only so long.
        ensured = asyncio.ensure_future(self._ensure_at_start())
        await asyncio.wait({ensured}, timeout=START_GRACE_SECONDS)
        self._loop_task = asyncio.create_task(self._listen(ensured), name=f"poll:{self.queue_name}")

    async def _ensure_at_start(self) -> None:
        try:
            await self._ensure_queue(self.client)
        except Exception as exc:  # noqa: BLE001 - storage down at start: keep going, the loop backs off
            log.warning("Cannot create queue '%s' for Functions.%s: %s", self.queue_name, self.fn.name, exc)

    async def _listen(self, ensured: asyncio.Future[None]) -> None:
        await ensured
        await self._run()

    def _receive(self) -> list[SdkMessage]:
        # One request per poll: only the first page, never a follow-up request for the remainder.
        pages = self.client.receive_messages(
            messages_per_page=self.options.batch_size, visibility_timeout=self.lock_seconds
        ).by_page()
        try:
            return list(next(pages))
        except StopIteration:
            return []

    async def _run(self) -> None:
        assert self._wake is not None
        found_since_delay = False
        while not self.stopping:
            self._wake.clear()
            batch: list[SdkMessage] | None
            try:
                batch = await self._io(self._receive)
            except ResourceNotFoundError:
                batch = None
                try:
                    await self._ensure_queue(self.client)
                except Exception:  # noqa: BLE001 - the next poll tries again
                    pass
            except Exception as exc:  # noqa: BLE001 - storage errors back off and retry, as the listener does
                log.warning("Polling queue '%s' failed: %s", self.queue_name, exc)
                batch = None
            if self.stopping:
                for message in batch or []:
                    await self._release(_Receipt(message.id, message.pop_receipt, message.content, 0))
                break
            if not batch:
                delay = self.backoff.next(found_since_delay)
                found_since_delay = False
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                except TimeoutError:
                    pass
                continue
            found_since_delay = True
            for message in batch:
                task = asyncio.create_task(self._process(message))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
            # Back-pressure: fetch the next batch only once in-flight work is down to newBatchThreshold.
            while len(self.inflight) > self.options.new_batch_threshold and not self.stopping:
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({*self.inflight, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                self._wake.clear()

    def _binding_value(self, message: SdkMessage, body: bytes) -> Any:
        annotation = self.fn.annotations.get(self.trigger_name)
        if annotation is str or annotation == "str":
            return body.decode("utf-8")
        if annotation is bytes or annotation == "bytes":
            return body
        return FuncQueueMessage(  # type: ignore[no-untyped-call]  # azure.functions leaves its __init__ unannotated
            id=message.id, body=body, dequeue_count=message.dequeue_count, expiration_time=message.expires_on,
            insertion_time=message.inserted_on, time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )

    async def _process(self, message: SdkMessage) -> None:
        receipt = _Receipt(message.id, message.pop_receipt, message.content or "", message.dequeue_count or 0)
        try:
            if receipt.dequeue_count > self.options.max_dequeue_count:
                # Already over the limit (e.g. a host died mid-run each time): poison without running.
                await self._poison(receipt)
                return
            body = decode_body(receipt.content, self.options.message_encoding)
            if body is None:
                log.warning("Message '%s' on queue '%s' is not valid base64 (messageEncoding is base64); moving it "
                            "to queue '%s' without running Functions.%s.", receipt.id, self.queue_name,
                            self.poison_name, self.fn.name)
                await self._poison(receipt, counted=False)
                return
            outcome = await self._invoke(message, body, receipt)
            if not outcome.started:
                await self._release(receipt)
            elif outcome.succeeded:
                await self._delete(receipt)
            elif receipt.dequeue_count >= self.options.max_dequeue_count:
                await self._poison(receipt)
            else:
                await self._release(receipt, self.options.visibility_timeout)
        except Exception:  # noqa: BLE001 - one message's storage trouble must not stop the listener
            log.exception("Completing message '%s' on queue '%s' failed", receipt.id, self.queue_name)

    async def _invoke(self, message: SdkMessage, body: bytes, receipt: _Receipt) -> Outcome:
        try:
            args = {self.trigger_name: self._binding_value(message, body)}
        except Exception:  # noqa: BLE001 - a binding failure is a failed invocation, retried like one
            log.exception("Binding the message to Functions.%s failed", self.fn.name)
            return Outcome(False)
        done = asyncio.Event()
        renewer = asyncio.create_task(self._renew(receipt, done))
        try:
            # A timed-out invocation (functionTimeout) comes back failed, so the message is retried or poisoned
            # like any failed try, as the host does.
            return await self.dispatcher.invoke(self.fn, args, self.reason, pending=self.waiting)
        finally:
            done.set()
            # Let an in-flight renewal finish, so the receipt used to complete the message is the newest one.
            await renewer

    async def _renew(self, receipt: _Receipt, done: asyncio.Event) -> None:
        interval = self.lock_seconds / 2  # renew when the lock is halfway to expiring
        wait = interval
        while True:
            try:
                await asyncio.wait_for(done.wait(), wait)
                return
            except TimeoutError:
                pass
            try:
                updated = await self._io(self.client.update_message, receipt.id, receipt.pop_receipt,
                                         visibility_timeout=self.lock_seconds)
                receipt.pop_receipt = updated.pop_receipt
                wait = interval
            except HttpResponseError as exc:
                if _status(exc) in (400, 404):
                    log.warning("Lost the lock on message '%s' (queue '%s'): %s", receipt.id, self.queue_name, exc)
                    return
                log.warning("Renewing the lock on message '%s' failed, retrying: %s", receipt.id, exc)
                wait = max(0.5, interval / 4)
            except Exception as exc:  # noqa: BLE001 - any other renewal failure is retried the same way
                log.warning("Renewing the lock on message '%s' failed, retrying: %s", receipt.id, exc)
                wait = max(0.5, interval / 4)

    async def _delete(self, receipt: _Receipt) -> None:
        try:
            await self._io(self.client.delete_message, receipt.id, receipt.pop_receipt)
        except HttpResponseError as exc:
            if _status(exc) not in (400, 404):
                raise
            log.debug("Cannot delete message '%s': %s", receipt.id, exc)

    async def _release(self, receipt: _Receipt, after: float = 0.0) -> None:
        """Make the message visible again after `after` seconds (the retry pause)."""
        try:
            await self._io(self.client.update_message, receipt.id, receipt.pop_receipt,
                           visibility_timeout=int(round(after)))
        except HttpResponseError as exc:
            if _status(exc) not in (400, 404):
                raise
            log.debug("Cannot release message '%s': %s", receipt.id, exc)

    async def _poison(self, receipt: _Receipt, counted: bool = True) -> None:
        if counted:
            log.warning("Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                        self.options.max_dequeue_count, self.poison_name)
        try:
            await self._io(self.poison_client.send_message, receipt.content)
        except ResourceNotFoundError:
            await self._ensure_queue(self.poison_client)
            await self._io(self.poison_client.send_message, receipt.content)
        await self._delete(receipt)

    async def stop_fetching(self) -> None:
        """Stop polling and take back messages that are waiting for a worker thread."""
        self.stopping = True
        if self._wake is not None:
            self._wake.set()
        if self._loop_task is not None:
            # A poll in flight normally ends in milliseconds (and the messages it got are released). One stuck in
            # the storage SDK's retries (storage down, no token) is abandoned rather than holding up the shutdown.
            done, _ = await asyncio.wait({self._loop_task}, timeout=STOP_POLL_GRACE_SECONDS)
            if not done:
                self._loop_task.cancel()
                log.warning("Polling queue '%s' did not end within %gs; stopped without it.", self.queue_name,
                            STOP_POLL_GRACE_SECONDS)
        for future in list(self.waiting):
            future.cancel()
