"""Optional sampling profiles of devhost with py-spy (`--profile`): raw collapsed stacks plus a top-N summary."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from contextlib import suppress
from pathlib import Path


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Recording:
    """`py-spy record --nonblocking --format raw` of one pid for at most `seconds`."""

    def __init__(self, pid: int, out: Path, seconds: float, rate: int = 100) -> None:
        self.out = out
        self.proc: subprocess.Popen | None = None
        exe = py_spy()
        if exe is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate),
             "--nonblocking", "--subprocesses", "--full-filenames", "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )

    def finish(self, timeout: float = 60.0) -> dict | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        if not self.out.exists():
            err = self.proc.stderr.read().decode(errors="replace")[-500:] if self.proc.stderr else ""
            return {"error": f"py-spy wrote nothing: {err}"}
        return summarize(self.out)


_REPO = str(Path(__file__).resolve().parent.parent) + "/"
_GENERIC = ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "_worker ", "_WorkItem.run",
            "<module>", "_run_module_as_main", "_run_code", "Runner.run", "run_until_complete", "run_forever",
            "_run_once", "Handle._run", "BaseEventLoop.run", "main (devhost/__main__")


def _location(frame: str) -> tuple[str, str]:
    """("function", "path") of a py-spy frame "function (path:line)"."""
    name, _, rest = frame.partition(" (")
    return name, rest.rstrip(")").rsplit(":", 1)[0]


def _short_path(path: str) -> str:
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    if path.startswith(_REPO):
        return path[len(_REPO):]
    if "/lib/python" in path:
        return "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return path


def _frame_name(frame: str) -> str:
    name, path = _location(frame)
    return f"{name} ({_short_path(path)})"


def _package(frame: str) -> str:
    """The package a frame belongs to: app folders by file, site-packages by distribution folder, else stdlib."""
    _, path = _location(frame)
    short = _short_path(path)
    if "/site-packages/" in path:
        head = short.split("/")[:2]
        return "/".join(head[:2]) if head[0] == "azure" and len(head) > 1 else head[0]
    if path.startswith(_REPO):
        return short
    return "stdlib:" + short.split("/", 1)[-1] if short.startswith("stdlib/") else "stdlib:" + short


# Leaf frames that are waiting rather than computing (py-spy does not always flag them idle).
_WAITS = ("SocketIO.readinto ", "do_poll ", "select ", "Condition.wait ", "Event.wait ", "_wait_for_tstate_lock ",
          "sleep ", "Runner.run ", "_worker (", "wait (", "epoll", "BaseSelectorEventLoop._run_once", "accept ")


def summarize(raw: Path, top: int = 20) -> dict:
    """Self time (leaf frames), inclusive time (any frame on the stack) and self time by package, over the samples
    that were computing: samples whose leaf is a socket read, poll or lock wait are counted apart (`waiting_pct`)."""
    total = 0
    waiting = 0
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(_WAITS):
            waiting += count
            continue
        total += count
        leaf[_frame_name(frames[-1])] += count
        by_package[_package(frames[-1])] += count
        for name in {_frame_name(f) for f in frames if not f.startswith(_GENERIC)}:
            inclusive[name] += count

    def pct(counter: Counter[str]) -> list[dict]:
        return [{"frame": k, "pct": round(100.0 * v / total, 1)} for k, v in counter.most_common(top)] if total else []

    return {"samples": total, "waiting_samples": waiting,
            "waiting_pct": round(100.0 * waiting / (waiting + total), 1) if waiting + total else None,
            "raw": str(raw), "mode": "py-spy record --nonblocking (active threads; waits on sockets/locks left out)",
            "top_self": pct(leaf), "top_inclusive": pct(inclusive), "self_by_package": pct(by_package)}
