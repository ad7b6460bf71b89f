"""Process-level helpers the host and its worker processes share: their event loop, flushing at exit, and a worker's
tie to its host."""

from __future__ import annotations

import asyncio
import signal
import sys


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed stream at exit is nothing to report
            pass


def die_with_parent() -> None:
    """A worker must not outlive a host that was killed (SIGKILL gives the host no chance to stop it)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
