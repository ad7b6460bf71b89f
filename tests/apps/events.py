"""Invocation recorder for the devhost sample apps: one JSON line per event in the file `EVENTS_FILE` names."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def record(fn: str, **fields: Any) -> None:
    line = json.dumps({"fn": fn, "t": time.time(), "pid": os.getpid(), **fields}, default=str) + "\n"
    # One O_APPEND write per line keeps lines whole when invocations run concurrently.
    fd = os.open(os.environ["EVENTS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
