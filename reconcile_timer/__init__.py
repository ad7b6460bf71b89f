"""Timer: re-enqueue reports stored but never enqueued, and mark `failed` the reports the host gave up on."""

import azure.functions as func

from shared import poison, reconcile
from shared.config import get_settings
from shared.storage import get_storage


def main(timer: func.TimerRequest) -> None:
    storage = get_storage()
    try:
        reconcile.reconcile(storage, get_settings())
    finally:  # one failing must not stop the other; the failure still fails the run
        poison.sweep(storage)
