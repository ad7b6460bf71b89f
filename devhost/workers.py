"""The language worker processes: forked from the loaded host (FUNCTIONS_WORKER_PROCESS_COUNT of them, one unless
set), each runs the invocations the host sends it and answers with their outcomes.

As on Azure, the host's process serves HTTP, polls queues and fires timers, and the functions' code runs in a
worker: sync functions on its thread pool (PYTHON_THREADPOOL_THREAD_COUNT), async ones on its event loop. So the
app's CPU is not shared with the front end's, as it is not on Azure, where the host is a .NET process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import signal
import socket
import threading
from typing import Any

from devhost import wire
from devhost.functions import LoadedFunction, Outcome
from devhost.runtime import die_with_parent, flush_streams, new_loop

log = logging.getLogger("devhost")


def default_threads() -> int:
    """The worker's thread pool when PYTHON_THREADPOOL_THREAD_COUNT is not set (Python's executor default)."""
    return min(32, (os.cpu_count() or 1) + 4)


class _Channel:
    """The host's end of one worker's socket: sends invocations, and a reader thread settles their futures."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid, self.sock = pid, sock
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()
        self.waiting: dict[int, concurrent.futures.Future[Outcome]] = {}
        self.reader: threading.Thread | None = None
        self.alive = True
        self.stopping = False

    def start(self) -> None:
        self.reader = threading.Thread(target=self._read, daemon=True, name=f"worker-{self.pid}")
        self.reader.start()

    def send(self, message: wire.Invoke | wire.Cancel) -> None:
        with self.send_lock:
            wire.send(self.sock, message)

    def _read(self) -> None:
        while True:
            try:
                message = wire.receive(self.sock)
            except (OSError, TypeError, ValueError, EOFError):
                message = None
            if not isinstance(message, wire.Done):
                break
            with self.lock:
                future = self.waiting.pop(message.number, None)
            if future is not None and not future.done():
                future.set_result(Outcome(message.succeeded, message.value, message.outputs or {}, error=message.error))
        # The worker is gone (it crashed, or the host is stopping): what it still held did not succeed.
        with self.lock:
            self.alive = False
            left, self.waiting = list(self.waiting.values()), {}
        if not self.stopping:
            # The real host starts a new worker; devhost sends what comes next to the others, if any are left.
            log.error("Worker process %d exited; %d invocation(s) it was running failed. Restart devhost to get it "
                      "back.", self.pid, len(left))
        for future in left:
            if not future.done():
                future.set_result(Outcome(False))


class Workers:
    """The worker processes, seen from the host."""

    def __init__(self, functions: list[LoadedFunction], count: int, threads: int | None) -> None:
        self.functions = {fn.name: fn for fn in functions}
        self.count = count
        self.threads = threads or default_threads()
        self.channels: list[_Channel] = []
        self._numbers = itertools.count(1)

    @property
    def pids(self) -> list[int]:
        return [channel.pid for channel in self.channels]

    def start(self) -> None:
        """Fork the workers (before the host starts any thread or loop), then listen to them."""
        for index in range(self.count):
            host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pid = os.fork()
            if pid == 0:
                host_end.close()
                for channel in self.channels:
                    channel.sock.close()
                code = _worker_main(worker_end, self.functions, self.threads, index)
                flush_streams()
                os._exit(code)
            worker_end.close()
            self.channels.append(_Channel(pid, host_end))
        for channel in self.channels:
            channel.start()

    def submit(self, fn: LoadedFunction, args: dict[str, Any], invocation_id: str) -> concurrent.futures.Future[Outcome]:
        """Send one invocation to the least busy worker; the future settles with its outcome. Cancelling the future
        cancels an async invocation in the worker (a sync one runs on: a thread cannot be stopped)."""
        number = next(self._numbers)
        future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        alive = [channel for channel in self.channels if channel.alive]
        if not alive:
            log.error("Functions.%s (Id=%s) not run: no worker process is left", fn.name, invocation_id)
            future.set_result(Outcome(False, error="no worker process is left"))
            return future
        start = number % len(alive)  # among the least busy, in turns: the host spreads invocations
        channel = min(alive[start:] + alive[:start], key=lambda c: len(c.waiting))
        with channel.lock:
            registered = channel.alive  # else it died since it was picked: its reader settles nothing more
            if registered:
                channel.waiting[number] = future
        if not registered:
            future.set_result(Outcome(False, error="the worker process exited"))
            return future
        future.add_done_callback(lambda f: _cancel_remote(channel, number) if f.cancelled() else None)
        try:
            channel.send(wire.Invoke(number, fn.name, wire.outbound_args(args), invocation_id))
        except OSError:
            with channel.lock:
                channel.waiting.pop(number, None)
            log.error("Functions.%s (Id=%s) could not be handed to worker process %d: it is gone", fn.name,
                      invocation_id, channel.pid)
            future.set_result(Outcome(False))
        return future

    def call(self, fn: LoadedFunction, args: dict[str, Any], invocation_id: str) -> Outcome:
        """`submit`, then wait for the outcome (on one of the host's dispatch threads)."""
        return self.submit(fn, args, invocation_id).result()

    def stop(self) -> None:
        """Close the sockets: each worker then exits (invocations still running in it are abandoned)."""
        for channel in self.channels:
            channel.stopping = True
            try:
                channel.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            channel.sock.close()


def _cancel_remote(channel: _Channel, number: int) -> None:
    with channel.lock:
        channel.waiting.pop(number, None)
    try:
        channel.send(wire.Cancel(number))
    except OSError:
        pass


# --- the worker process ----------------------------------------------------------------------------------------


def _worker_main(sock: socket.socket, functions: dict[str, LoadedFunction], threads: int, index: int) -> int:
    die_with_parent()
    # Ctrl-C in a terminal signals the whole process group: the host decides when its workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log.info("Worker process %d (pid %d) started.", index, os.getpid())
    worker = _Worker(sock, functions, threads)
    worker.serve()
    return 0


class _Worker:
    def __init__(self, sock: socket.socket, functions: dict[str, LoadedFunction], threads: int) -> None:
        self.sock = sock
        self.functions = functions
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="func")
        self.send_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.running: dict[int, concurrent.futures.Future[Outcome]] = {}  # async invocations, to cancel

    def serve(self) -> None:
        while True:
            try:
                message = wire.receive(self.sock)
            except OSError:
                message = None
            if message is None:
                return  # the host closed its end: it is stopping, or gone
            if isinstance(message, wire.Cancel):
                running = self.running.get(message.number)
                if running is not None:
                    running.cancel()
            elif isinstance(message, wire.Invoke):
                self._start(message)

    def _start(self, message: wire.Invoke) -> None:
        fn = self.functions[message.function]
        args = wire.inbound_args(message.args)
        number = message.number
        if not fn.is_async:
            self.pool.submit(self._run_sync, fn, args, message)
            return
        running = asyncio.run_coroutine_threadsafe(fn.run_async(args, message.invocation_id), self._event_loop())
        self.running[number] = running
        running.add_done_callback(lambda f: self._settled(number, f, fn.name))

    def _run_sync(self, fn: LoadedFunction, args: dict[str, Any], message: wire.Invoke) -> None:
        try:
            outcome = fn.run_sync(args, message.invocation_id)
        except BaseException as exc:  # noqa: BLE001 - the host waits for an answer to every invocation
            outcome = Outcome(False, error=f"{type(exc).__name__} in the worker process")
        self._answer(message.number, outcome, fn.name)

    def _settled(self, number: int, running: concurrent.futures.Future[Outcome], name: str) -> None:
        self.running.pop(number, None)
        if running.cancelled():
            outcome = Outcome(False, error="the invocation was cancelled")
        elif running.exception() is not None:
            outcome = Outcome(False, error=repr(running.exception()))
        else:
            outcome = running.result()
        self._answer(number, outcome, name)

    def _answer(self, number: int, outcome: Outcome, name: str) -> None:
        done = wire.Done(number, outcome.succeeded, outcome.value, outcome.outputs, outcome.error)
        try:
            with self.send_lock:
                wire.send(self.sock, done)
        except OSError:
            pass  # the host is gone
        except Exception as exc:  # noqa: BLE001 - a value the host cannot be sent fails the invocation
            failed = wire.Done(number, False, error=f"{type(exc).__name__}: Functions.{name} returned a value that "
                               "cannot be passed to the host")
            try:
                with self.send_lock:
                    wire.send(self.sock, failed)
            except OSError:
                pass

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The worker's event loop for async functions, in a thread of its own (started at first use)."""
        if self.loop is None:
            loop = new_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="worker-loop").start()
            self.loop = loop
        return self.loop
