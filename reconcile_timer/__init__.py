"""Timer: re-enqueue reports stored but never enqueued (an ingest that crashed between the steps)."""

import azure.functions as func

from shared import reconcile
from shared.config import get_settings
from shared.storage import get_storage


def main(timer: func.TimerRequest) -> None:
    reconcile.reconcile(get_storage(), get_settings())
