"""Queue trigger on `reports-poison`: record what the host gave up on, and end its report `failed`."""

import azure.functions as func

from shared import poison
from shared.config import get_settings
from shared.storage import get_storage


def main(msg: func.QueueMessage) -> None:
    poison.handle(get_storage(), get_settings(), msg.get_body(), msg.id or "", msg.insertion_time,
                  msg.dequeue_count or 1)
