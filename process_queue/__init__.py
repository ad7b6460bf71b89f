"""Queue trigger on `reports`: process one report; raising asks the host to retry (then poison)."""

import azure.functions as func

from shared import processing
from shared.config import get_settings
from shared.storage import get_storage


def main(msg: func.QueueMessage) -> None:
    processing.process(get_storage(), get_settings(), msg.get_body(), msg.dequeue_count or 1, msg.id)
