"""Timer: re-enqueue reports stored but never enqueued, mark `failed` the reports the host gave up on, and drop
used token ids that have expired."""

import azure.functions as func

from shared import housekeeping
from shared.config import get_settings
from shared.storage import get_storage


def main(timer: func.TimerRequest) -> None:
    housekeeping.run(get_storage(), get_settings())
