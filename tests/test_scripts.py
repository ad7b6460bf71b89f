"""The set-up scripts as a reader uses them: bootstrap refuses a Python older than 3.11 with a clear message, and
scripts/admin runs the admin CLI from the project's environment, from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from devhost.azurite import REPO_ROOT


def _copy_script(name: str, root: Path) -> Path:
    (root / "scripts").mkdir(exist_ok=True)
    target = root / "scripts" / name
    shutil.copy2(REPO_ROOT / "scripts" / name, target)
    return target


def _fake_python(path: Path, version: str) -> Path:
    """A `python` that reports `version` and answers the version check the way that Python would."""
    major, minor = (int(p) for p in version.split(".")[:2])
    ok = (major, minor) >= (3, 11)
    path.write_text(f"""#!/bin/sh
case "$1" in
  --version) echo "Python {version}";;
  -c) exit {0 if ok else 1};;
  *) exit 99;;
esac
""")
    path.chmod(0o755)
    return path


def test_bootstrap_refuses_python_older_than_3_11(tmp_path: Path) -> None:
    bootstrap = _copy_script("bootstrap", tmp_path)
    old = _fake_python(tmp_path / "python3.10", "3.10.12")
    done = subprocess.run([str(bootstrap)], env={**os.environ, "PYTHON": str(old)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "Python 3.10.12" in done.stderr and "needs Python 3.11 or newer" in done.stderr
    assert "PYTHON=" in done.stderr  # says how to point it at another Python
    assert not (tmp_path / ".venv").exists()


def test_bootstrap_says_when_the_python_named_is_missing(tmp_path: Path) -> None:
    bootstrap = _copy_script("bootstrap", tmp_path)
    done = subprocess.run([str(bootstrap)], env={**os.environ, "PYTHON": "python-that-is-not-there"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not found" in done.stderr


def test_scripts_admin_runs_the_cli_from_the_project_environment(tmp_path: Path, storage: str) -> None:
    """From another folder, with bootstrap's own output kept off stdout (which carries the key as JSON)."""
    root = tmp_path / "project"
    root.mkdir()
    admin = _copy_script("admin", root)
    (root / "scripts" / "bootstrap").write_text("#!/bin/sh\necho 'bootstrap: up to date'\n")
    (root / "scripts" / "bootstrap").chmod(0o755)
    for name in (".venv", "shared", "host.json"):
        (root / name).symlink_to(REPO_ROOT / name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["AzureWebJobsStorage"] = storage
    done = subprocess.run([str(admin), "senders", "add", "script-lab"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sender"] == "script-lab"
    assert "bootstrap: up to date" in done.stderr


def test_the_python_version_message_names_the_command_the_user_ran(tmp_path: Path) -> None:
    _copy_script("bootstrap", tmp_path)
    run = _copy_script("run", tmp_path)
    old = _fake_python(tmp_path / "python3.10", "3.10.12")
    done = subprocess.run([str(run)], env={**os.environ, "PYTHON": str(old)}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "PYTHON=python3.11" in done.stderr
    assert "scripts/run" in done.stderr and "scripts/bootstrap" not in done.stderr


def test_a_second_run_on_a_busy_port_touches_nothing(storage: str) -> None:
    """It used to reuse the first run's Azurite, rotate the `local` sender's key (the first user's curl got 401), then
    fail on the port."""
    import socket
    import sys

    from shared import senders
    from shared.storage import Storage

    table = Storage.from_connection_string(storage).senders
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        before = [(s.name, s.keys) for s in senders.list_senders(table)]
        done = subprocess.run([sys.executable, "scripts/local.py", "--port", str(port)], cwd=REPO_ROOT,
                              env={**os.environ, "AzureWebJobsStorage": storage}, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1 and f"Port {port} is in use" in done.stderr and "Nothing was" in done.stderr
        assert [(s.name, s.keys) for s in senders.list_senders(table)] == before
    finally:
        busy.close()


def test_ctrl_c_stops_the_local_service_once_and_cleanly(storage: str, tmp_path: Path) -> None:
    """Ctrl-C signals the terminal's whole process group: devhost must get one stop, not two (a second makes it exit
    without waiting for running invocations)."""
    import signal
    import sys
    import time

    from devhost.process import free_port

    output = tmp_path / "run.log"
    with output.open("wb") as sink:
        run = subprocess.Popen([sys.executable, "scripts/local.py", "--port", str(free_port())], cwd=REPO_ROOT,
                               env={**os.environ, "AzureWebJobsStorage": storage}, stdout=sink,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Host started" not in output.read_text() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Host started" in output.read_text(), output.read_text()[-2000:]
        os.killpg(run.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert run.wait(timeout=60) == 0, output.read_text()[-2000:]
        assert "Second signal" not in output.read_text()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
