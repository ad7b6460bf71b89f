"""Timer: re-enqueue reports stored but never enqueued, and drop used token ids and fingerprints that expired."""

import azure.functions as func

from shared import housekeeping
from shared.config import get_settings
from shared.storage import get_storage


def main(timer: func.TimerRequest) -> None:
    housekeeping.run(get_storage(), get_settings())
