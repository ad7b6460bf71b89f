"""The README's run command: embedded Azurite (unless one already listens), a local sender, then devhost.

Prints the URL, a sender key and a curl line to try; Ctrl-C stops devhost and the Azurite it started. A run whose
port is taken stops at once, before touching Azurite, storage or keys.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devhost.azurite import DEFAULT_PORTS, Azurite, port_open  # noqa: E402
from shared.connection import DEVELOPMENT_STORAGE, ConnectionSettingError, overlay, resolve  # noqa: E402

SENDER = "local"


def uses_development_storage() -> bool:
    """Whether the storage connection (environment over local.settings.json, as devhost reads it) is Azurite's."""
    path = ROOT / "local.settings.json"
    values = json.loads(path.read_text()).get("Values", {}) if path.is_file() else {}
    try:
        connection = resolve(overlay({k: str(v) for k, v in values.items()}, os.environ))
    except ConnectionSettingError as exc:
        raise SystemExit(f"bad storage settings: {exc}") from None
    return connection.connection_string == DEVELOPMENT_STORAGE


def start_azurite() -> Azurite | None:
    """Start Azurite on its default ports, data in .azurite/, when the app uses development storage."""
    if not uses_development_storage():
        print("AzureWebJobsStorage is a real storage account (connection string or identity): not starting Azurite.")
        return None
    if all(port_open(p) for p in DEFAULT_PORTS):
        print("Azurite already listens on 10000-10002: using it.")
        return None
    azurite = Azurite(location=ROOT / ".azurite", ports=DEFAULT_PORTS, log_path=ROOT / ".azurite" / "azurite.log")
    azurite.start()
    print(f"Azurite started (data in .azurite/, log in {azurite.log_path.relative_to(ROOT)}).")
    return azurite


def sender_key() -> str:
    """A fresh key for the local sender: added the first time, rotated afterwards (keys are shown only once). The
    earlier keys keep working for a day, so a service on another port sharing this Azurite keeps its key."""
    admin = [sys.executable, "-m", "shared.admin", "senders"]
    done = subprocess.run([*admin, "add", SENDER], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        done = subprocess.run([*admin, "rotate", SENDER, "--grace", "24h"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"could not create the local sender: {done.stderr.strip()}")
    return json.loads(done.stdout)["key"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7071)
    port = parser.parse_args().port
    if port_open(port):
        # Before anything else: a second run must not touch the first one's Azurite, storage or keys.
        print(f"Port {port} is in use (another ./scripts/run?). Nothing was started or changed. Stop the other one "
              f"with Ctrl-C in its terminal, or run this one on another port: PORT={port + 1} ./scripts/run",
              file=sys.stderr)
        return 1
    azurite = start_azurite()
    try:
        key = sender_key()
        url = f"http://localhost:{port}"
        print(
            f"\nService: {url}/api   (health: {url}/api/health)\n"
            f"Sender '{SENDER}' key: {key}\n\nTry:\n"
            f"  curl -i -X POST {url}/api/reports -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: text/csv' --data-binary @docs/examples/report.csv\n",
            flush=True,
        )
        # Its own session: Ctrl-C in the terminal signals this script's process group, and the one SIGTERM sent on
        # below is all devhost gets (a second signal makes it exit without waiting for running invocations).
        host = subprocess.Popen([sys.executable, "-m", "devhost", "--port", str(port)], cwd=ROOT,
                                start_new_session=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: host.send_signal(signal.SIGTERM))
        return host.wait()
    finally:
        if azurite is not None:
            azurite.stop()


if __name__ == "__main__":
    sys.exit(main())
