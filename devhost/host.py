"""The devhost process: load settings, host.json and functions, then serve HTTP, queues and timers until signalled."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devhost.runtime import flush_streams, new_loop

log = logging.getLogger("devhost")

SHUTDOWN_GRACE_SECONDS = 30.0
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "information": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL, "none": logging.CRITICAL + 10}


class _UtcFormatter(logging.Formatter):
    """`[2024-05-01T12:00:00.123Z] message`, the prefix `func start` puts on its lines."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        return f"[{stamp}Z] {super().format(record)}"


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_UtcFormatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    log.setLevel(logging.INFO)
    # The root logger at INFO, whoever logs, as the Python worker forwards it to the host (and Application
    # Insights): the app's libraries included, so tests see what Azure would record. Only devhost's own HTTP
    # server, which stands in for the host's front end, is quieted.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)


@dataclass
class Host:
    app_dir: Path
    port: int
    bind: str
    state: str = "Initializing"
    listing: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from devhost.functions import Dispatcher
        from devhost.http import EdgeLimits
        from devhost.routing import Router
        from devhost.workers import Workers

        self.router = Router()
        self.pollers: list[Any] = []
        self.timers: list[Any] = []
        self.errors: list[str] = []
        self.dispatcher: Dispatcher | None = None
        self.workers: Workers | None = None
        self.limits = EdgeLimits()
        self.io_pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="storage")

    # --- loading ----------------------------------------------------------------------------------------

    def load(self) -> None:
        from devhost import hostconfig, queues
        from devhost.functions import Dispatcher, FunctionLoadError, LoadedFunction, discover
        from devhost.http import EdgeLimits
        from devhost.routing import Route, RouteError, full_template
        from devhost.settings import SettingError, Settings
        from devhost.workers import Workers

        settings = Settings.load(self.app_dir)
        # Core Tools hands Values to the worker as environment variables, and runs in Development.
        for name, value in settings.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("AZURE_FUNCTIONS_ENVIRONMENT", "Development")
        settings = Settings.load(self.app_dir)
        config = hostconfig.load_host_config(self.app_dir, settings)
        level = str(hostconfig.get_ci(config, "logging", "logLevel", "default", default="Information")).lower()
        logging.getLogger().setLevel(_LEVELS.get(level, logging.INFO))
        prefix = hostconfig.route_prefix(config)
        queue_options = hostconfig.QueueOptions.from_config(config, hostconfig.is_development(settings))
        threads = settings.get("PYTHON_THREADPOOL_THREAD_COUNT")
        outputs = queues.QueueOutputs(settings, queue_options.message_encoding)
        self.workers = Workers([], worker_process_count(), int(threads) if threads else None)
        self.dispatcher = Dispatcher(None, hostconfig.function_timeout(config), outputs.write, self.workers)
        lock_seconds = int(float(settings.get("DEVHOST_QUEUE_LOCK_SECONDS") or queues.DEFAULT_LOCK_SECONDS))
        self.limits = EdgeLimits.from_settings(settings.get)

        for info in discover(self.app_dir):
            if info.config.get("disabled") is True or settings.is_disabled(info.name):
                log.info("Function '%s' is disabled.", info.name)
                continue
            try:
                trigger = info.trigger
                kind = str(trigger.get("type", "")).lower()
                if kind not in ("httptrigger", "queuetrigger", "timertrigger"):
                    raise FunctionLoadError(f"devhost does not support trigger type '{trigger.get('type')}'")
                fn = LoadedFunction(info, self.app_dir)
                self.workers.functions[fn.name] = fn
                if kind == "httptrigger":
                    methods = trigger.get("methods")
                    method_set = frozenset(str(m).upper() for m in methods) if methods else None
                    template = full_template(prefix, settings.resolve(str(trigger.get("route") or info.name)))
                    self.router.add(Route(template, method_set, fn))
                    shown = ",".join(sorted(method_set)) if method_set else "GET,POST,PUT,DELETE,HEAD,PATCH,OPTIONS"
                    self.listing.append(f"{info.name}: [{shown}] http://localhost:{self.port}/{template}")
                elif kind == "queuetrigger":
                    queue_name = settings.resolve(str(trigger.get("queueName") or "")).lower()
                    if not queue_name:
                        raise FunctionLoadError("queueTrigger needs a queueName")
                    connection = settings.storage_connection(trigger.get("connection"))
                    self.pollers.append(queues.QueuePoller(fn, queue_name, connection, queue_options,
                                                           self.dispatcher, self.io_pool, lock_seconds, outputs))
                    self.listing.append(f"{info.name}: queueTrigger")
                else:
                    from devhost.timers import Schedule, TimerRunner

                    schedule = Schedule(settings.resolve(str(trigger.get("schedule") or "")))
                    run_on_startup = str(trigger.get("runOnStartup", False)).lower() == "true"
                    self.timers.append(TimerRunner(fn, schedule, run_on_startup, self.dispatcher))
                    self.listing.append(f"{info.name}: timerTrigger")
            except (FunctionLoadError, SettingError, RouteError, ValueError) as exc:
                # Like the real host: report the broken function and keep the others running.
                self.errors.append(info.name)
                cause = exc.__cause__
                log.error("The '%s' function is in error: %s", info.name, exc,
                          exc_info=(type(cause), cause, cause.__traceback__) if cause else None)

    # --- running ----------------------------------------------------------------------------------------

    async def serve(self) -> int:
        import uvicorn

        from devhost.http import HttpApp, edge_protocol

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals_seen: list[int] = []

        def on_signal(sig: int) -> None:
            signals_seen.append(sig)
            if len(signals_seen) > 1:
                log.warning("Second signal: exiting without waiting for running invocations.")
                flush_streams()
                os._exit(1)
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

        assert self.dispatcher is not None
        for poller in self.pollers:
            await poller.start()
        for timer in self.timers:
            timer.start()

        manual = {timer.fn.name: timer.run_now for timer in self.timers}
        limits = self.limits
        app = HttpApp(self.router, self.dispatcher, lambda: self.state, manual, limits)
        protocol = edge_protocol(limits)
        # uvicorn annotates `http` as a protocol class and `timeout_keep_alive` as int; it only calls the first
        # (a partial binding the limits does as well) and hands the second to loop.call_later (a float is kept).
        config = uvicorn.Config(app, lifespan="off", access_log=False, log_config=None,
                                http=protocol,  # type: ignore[arg-type]  # only ever called, as a class is
                                timeout_keep_alive=limits.keep_alive_seconds,  # type: ignore[arg-type]  # float ok
                                timeout_graceful_shutdown=int(SHUTDOWN_GRACE_SECONDS), backlog=2048,
                                server_header=False)
        server = _make_server(config)
        sock = listen(self.bind, self.port)
        if sock is None:
            return 1
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            log.error("The HTTP server failed to start")
            return 1

        self.state = "Running"
        print("\nFunctions:\n", flush=False)
        for line in self.listing:
            print(f"        {line}\n", flush=False)
        print("For detailed output, run devhost with logging at Debug level.", flush=True)
        log.info("Host started. Listening on http://%s:%d (devhost, app %s)", self.bind, self.port, self.app_dir)

        await stop.wait()
        return await self.shutdown(server, serving)

    async def shutdown(self, server: Any, serving: asyncio.Task[None]) -> int:
        self.state = "Stopping"
        log.info("Stopping the host: no new work; waiting up to %ds for running invocations.",
                 int(SHUTDOWN_GRACE_SECONDS))
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        server.should_exit = True  # stop accepting connections; uvicorn lets in-flight requests finish
        for timer in self.timers:
            timer.stop()
        await asyncio.gather(*(p.stop_fetching() for p in self.pollers))
        pending: set[asyncio.Future[Any]] = {serving}
        pending |= {t for p in self.pollers for t in p.inflight}
        pending |= {t.task for t in self.timers if t.task is not None}
        done, still = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        self.io_pool.shutdown(wait=False)
        if self.workers is not None:
            self.workers.stop()
            _stop_children(self.workers.pids, max(1.0, deadline - time.monotonic()))
        if still:
            log.warning("%d invocation(s) still running after %ds; exiting anyway.", len(still),
                        int(SHUTDOWN_GRACE_SECONDS))
            flush_streams()
            os._exit(0)
        log.info("Host stopped.")
        return 0


MAX_WORKER_PROCESSES = 10


def listen(bind: str, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        log.error("Cannot listen on %s:%d: %s", bind, port, exc)
        return None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def worker_process_count() -> int:
    """FUNCTIONS_WORKER_PROCESS_COUNT, as the real host reads it (1 to 10, default 1)."""
    text = os.environ.get("FUNCTIONS_WORKER_PROCESS_COUNT", "1").strip() or "1"
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKER_PROCESSES:
        raise ValueError(f"FUNCTIONS_WORKER_PROCESS_COUNT must be 1 to {MAX_WORKER_PROCESSES}, got {text!r}")
    return int(text)


def _stop_children(children: list[int], timeout: float) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in children:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.05)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _make_server(config: Any) -> Any:
    """A uvicorn.Server without its own signal handling: devhost orchestrates the shutdown itself."""
    import contextlib

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return Server(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost", description="Local stand-in for `func start`.")
    parser.add_argument("--port", type=int, default=7071)
    parser.add_argument("--app-dir", default=".")
    # `func start` listens on every interface; devhost serves a development app whose admin API and test keys
    # should not be reachable from the network, so it takes loopback unless told otherwise.
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface, as func start)")
    args = parser.parse_args(argv)
    configure_logging()
    app_dir = Path(args.app_dir).resolve()
    cwd = Path.cwd().resolve()
    if not (app_dir / "host.json").exists() and (cwd / "host.json").exists() and cwd.parts[-len(Path(args.app_dir).parts):] == Path(args.app_dir).parts:
        # A relative --app-dir given together with cwd = that folder (as DevHostProcess launches it).
        app_dir = cwd
    if not (app_dir / "host.json").exists():
        log.error("No host.json in %s: not a function app folder.", app_dir)
        return 1
    host = Host(app_dir, args.port, args.host)
    try:
        host.load()
    except ValueError as exc:
        log.error("Cannot start the host: %s", exc)
        return 1
    assert host.workers is not None
    host.workers.start()  # before the host starts a thread or a loop: forking copies only the forking thread
    with asyncio.Runner(loop_factory=new_loop) as runner:
        code = runner.run(host.serve())
    flush_streams()
    return code
