"""Find every `*/function.json`, import each function as the Python worker does, and invoke it with logging."""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import inspect
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import azure.functions as func
from azure.functions._abc import RetryContext, TraceContext  # not re-exported by azure.functions

if TYPE_CHECKING:
    from devhost.workers import Workers

log = logging.getLogger("devhost")


# The host's own words for an invocation through its HTTP front door or its admin API.
HOST_API_REASON = "This function was programmatically called via the host APIs."


class FunctionLoadError(Exception):
    """The function cannot be indexed or imported; the host reports it and runs the others."""


@dataclass
class FunctionInfo:
    name: str
    directory: Path
    config: dict[str, Any]

    @property
    def bindings(self) -> list[dict[str, Any]]:
        return list(self.config.get("bindings") or [])

    @property
    def trigger(self) -> dict[str, Any]:
        triggers = [b for b in self.bindings if str(b.get("type", "")).lower().endswith("trigger")]
        if len(triggers) != 1:
            raise FunctionLoadError(f"function '{self.name}' must have exactly one trigger binding, has {len(triggers)}")
        return triggers[0]

    @property
    def trigger_type(self) -> str:
        return str(self.trigger.get("type"))


def discover(app_dir: Path) -> list[FunctionInfo]:
    """Every folder of the app holding a function.json, in name order (as the host lists them)."""
    found = []
    for path in sorted(app_dir.glob("*/function.json")):
        config = json.loads(path.read_text(encoding="utf-8-sig"))
        found.append(FunctionInfo(path.parent.name, path.parent, config))
    return found


class _Out(func.Out[Any]):
    """The object a function gets for a named output binding (`func.Out[T]`)."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _TraceContext(TraceContext):
    def __init__(self) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(func.Context):
    """The `context` parameter the worker passes when a function asks for one."""

    _local = threading.local()

    def __init__(self, invocation_id: str, fn: LoadedFunction) -> None:
        self._id, self._fn = invocation_id, fn

    @property
    def invocation_id(self) -> str:
        return self._id

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def function_name(self) -> str:
        return self._fn.info.name

    @property
    def function_directory(self) -> str:
        return str(self._fn.info.directory)

    @property
    def trace_context(self) -> TraceContext:
        return _TraceContext()

    @property
    def retry_context(self) -> RetryContext:
        return _RetryContext()


@dataclass
class Outcome:
    """How one invocation ended; `started` is False when shutdown cancelled it before it ran."""

    succeeded: bool
    value: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    started: bool = True
    error: str | None = None  # a failure's exception with its traceback from the function's own code, as logged


class LoadedFunction:
    """An imported function with what is needed to bind its parameters and call it."""

    def __init__(self, info: FunctionInfo, app_dir: Path) -> None:
        self.info = info
        self.callable = _import_entry_point(info, app_dir)
        self.is_async = inspect.iscoroutinefunction(self.callable)
        params = inspect.signature(self.callable).parameters
        self.annotations = {n: p.annotation for n, p in params.items()}
        names = {str(b.get("name")) for b in info.bindings}
        declared = set(params) - ({"context"} if "context" not in names else set())
        self.wants_context = "context" in params and "context" not in names
        missing_in_json = declared - names
        missing_in_py = {n for n in names if n != "$return"} - set(params)
        # The worker refuses exactly these mismatches when it indexes the function.
        if missing_in_json:
            raise FunctionLoadError(
                f"the following parameters are declared in Python but not in function.json: {sorted(missing_in_json)}")
        if missing_in_py:
            raise FunctionLoadError(
                f"the following parameters are declared in function.json but not in Python: {sorted(missing_in_py)}")
        self.out_names = [str(b["name"]) for b in info.bindings
                          if str(b.get("direction", "")).lower() == "out" and b.get("name") != "$return"]
        # Output bindings the host itself writes after a successful invocation (devhost supports queue ones).
        self.queue_outputs = [b for b in info.bindings if str(b.get("type", "")).lower() == "queue"
                              and str(b.get("direction", "")).lower() == "out"]

    @property
    def name(self) -> str:
        return self.info.name

    def _arguments(self, args: dict[str, Any], invocation_id: str) -> tuple[dict[str, Any], dict[str, _Out]]:
        outs = {n: _Out() for n in self.out_names}
        kwargs = {**args, **outs}
        if self.wants_context:
            kwargs["context"] = InvocationContext(invocation_id, self)
        return kwargs, outs

    def log_start(self, reason: str, invocation_id: str) -> None:
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", self.name, reason, invocation_id)

    def log_end(self, outcome: Outcome, invocation_id: str, started: float) -> None:
        ms = int((time.perf_counter() - started) * 1000)
        if outcome.succeeded:
            log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", self.name, invocation_id, ms)
        else:
            log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)\nResult: Failure\nException: %s",
                      self.name, invocation_id, ms, outcome.error or "the worker process ended during the invocation")

    def run_sync(self, args: dict[str, Any], invocation_id: str) -> Outcome:
        """Call a synchronous function (on a worker thread). The host logs the invocation, not the worker."""
        kwargs, outs = self._arguments(args, invocation_id)
        try:
            value = self.callable(**kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))  # a sync def that returns a coroutine: run it to completion here
        except BaseException as exc:  # noqa: BLE001 - the host reports every failure, SystemExit included
            return Outcome(False, error="".join(_format_exc(exc)).rstrip())
        return Outcome(True, value, {n: o.get() for n, o in outs.items()})

    async def run_async(self, args: dict[str, Any], invocation_id: str) -> Outcome:
        kwargs, outs = self._arguments(args, invocation_id)
        try:
            value = await self.callable(**kwargs)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the host reports every failure, SystemExit included
            return Outcome(False, error="".join(_format_exc(exc)).rstrip())
        return Outcome(True, value, {n: o.get() for n, o in outs.items()})


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _format_exc(exc: BaseException) -> list[str]:
    import traceback

    tb = exc.__traceback__
    # Start the traceback at the user's code, not at devhost's call into it.
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return traceback.format_exception(type(exc), exc, tb)


def _import_entry_point(info: FunctionInfo, app_dir: Path) -> Callable[..., Any]:
    script = (info.directory / str(info.config.get("scriptFile") or "__init__.py")).resolve()
    entry = str(info.config.get("entryPoint") or "main")
    if not script.exists():
        raise FunctionLoadError(f"scriptFile '{script}' does not exist")
    try:
        rel = script.relative_to(app_dir.resolve())
    except ValueError as exc:
        raise FunctionLoadError(f"scriptFile '{script}' is outside the app folder") from exc
    parts = list(rel.parent.parts) + ([] if script.stem == "__init__" else [script.stem])
    module_name = ".".join(parts)
    # The worker puts the app folder first on sys.path and imports the folder as a package,
    # so `import shared` and relative imports work from a function folder.
    root = str(app_dir.resolve())
    if sys.path[:1] != [root]:
        sys.path.insert(0, root)
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:  # noqa: BLE001 - a broken function must not stop the others
        raise FunctionLoadError(f"cannot import '{module_name}': {type(exc).__name__}: {exc}") from exc
    target: object = getattr(module, entry, None)
    if not callable(target):
        raise FunctionLoadError(f"'{module_name}' has no callable entry point '{entry}'")
    return target


class Dispatcher:
    """Runs invocations: sync functions on a thread pool (as the worker does), async ones on the loop, each bounded
    by host.json's functionTimeout."""

    def __init__(self, max_workers: int | None, timeout: float | None = None,
                 outputs: Callable[[LoadedFunction, Outcome], None] | None = None,
                 workers: Workers | None = None) -> None:
        # With worker processes, a sync invocation holds one of these threads while a worker thread runs it: so
        # their number bounds what is under way, and what waits for one can still be taken back at shutdown.
        threads = max_workers if workers is None else workers.threads * workers.count
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="func")
        self.timeout = timeout
        # Output bindings the host writes itself once a function succeeded (queue messages); HTTP responses are
        # the HTTP front end's.
        self.outputs = outputs
        # The language worker processes that run the functions; without them (unit tests), this process does.
        self.workers = workers

    async def invoke(self, fn: LoadedFunction, args: dict[str, Any], reason: str,
                     pending: set[concurrent.futures.Future[Outcome]] | None = None) -> Outcome:
        """Run one invocation to its end, or until functionTimeout: then it counts as failed, as in the host.

        A synchronous invocation waits in `pending` until a thread takes it, so that shutdown can still take it
        back (the outcome then says not started).
        """
        invocation_id = str(uuid.uuid4())
        future: concurrent.futures.Future[Outcome] | None = None
        running: asyncio.Future[Outcome]
        if fn.is_async:
            running = asyncio.ensure_future(self._run_async(fn, args, reason, invocation_id))
        else:
            future = self.pool.submit(self._run_sync, fn, args, reason, invocation_id)
            if pending is not None:
                pending.add(future)
            running = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({running}, timeout=self.timeout)
        finally:
            if future is not None and pending is not None:
                pending.discard(future)
        if running in done:
            if future is not None and future.cancelled():
                return Outcome(False, started=False)  # shutdown took it back before a thread ran it
            return await self._write_outputs(fn, running.result(), invocation_id)
        self._time_out(fn, invocation_id)
        running.cancel()  # stops an async function; a thread cannot be stopped (see _time_out)
        return Outcome(False)

    def _run_sync(self, fn: LoadedFunction, args: dict[str, Any], reason: str, invocation_id: str) -> Outcome:
        """On a dispatch thread: the invocation, in a worker process when there are any, logged as the host logs."""
        fn.log_start(reason, invocation_id)
        started = time.perf_counter()
        outcome = self.workers.call(fn, args, invocation_id) if self.workers else fn.run_sync(args, invocation_id)
        fn.log_end(outcome, invocation_id, started)
        return outcome

    async def _run_async(self, fn: LoadedFunction, args: dict[str, Any], reason: str, invocation_id: str) -> Outcome:
        fn.log_start(reason, invocation_id)
        started = time.perf_counter()
        if self.workers is not None:
            outcome = await asyncio.wrap_future(self.workers.submit(fn, args, invocation_id))
        else:
            outcome = await fn.run_async(args, invocation_id)
        fn.log_end(outcome, invocation_id, started)  # not reached when cancelled: _time_out logged the ending
        return outcome

    async def _write_outputs(self, fn: LoadedFunction, outcome: Outcome, invocation_id: str) -> Outcome:
        """As the host does after a successful invocation; a binding that cannot be written fails the invocation."""
        if not outcome.succeeded or self.outputs is None or not fn.queue_outputs:
            return outcome
        try:
            await asyncio.to_thread(self.outputs, fn, outcome)
        except Exception as exc:  # noqa: BLE001 - reported like a failed invocation
            log.error("Executed 'Functions.%s' (Failed, Id=%s): an output binding could not be written: %s: %s",
                      fn.name, invocation_id, type(exc).__name__, exc)
            return Outcome(False)
        return outcome

    def _time_out(self, fn: LoadedFunction, invocation_id: str) -> None:
        limit = format_timespan(self.timeout or 0)
        log.error("Timeout value of %s exceeded by function 'Functions.%s' (Id: '%s'). Initiating cancellation.",
                  limit, fn.name, invocation_id)
        log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)\nResult: Failure\nException: "
                  "FunctionTimeoutException: Timeout value of %s was exceeded by function: Functions.%s",
                  fn.name, invocation_id, int((self.timeout or 0) * 1000), limit, fn.name)
        if not fn.is_async:
            # The real host restarts the worker process to stop such a function; devhost cannot stop a thread, so
            # it only disowns the invocation: its trigger is completed as failed and its result is ignored.
            log.warning("Functions.%s (Id=%s) keeps running in its thread until it returns; its outcome is ignored.",
                        fn.name, invocation_id)


def format_timespan(seconds: float) -> str:
    """`hh:mm:ss` as the host prints a TimeSpan."""
    whole = int(seconds)
    text = f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    return text + (f".{round((seconds - whole) * 1000):03d}" if seconds != whole else "")
