"""Runs for the number of seconds in the message body (else SLOW_SECONDS), recording start and end."""

import os
import time

import azure.functions as func

from tests.apps.events import record


def main(msg: func.QueueMessage) -> None:
    try:
        seconds = float(msg.get_body().decode())
    except ValueError:
        seconds = float(os.environ.get("SLOW_SECONDS", "1"))
    record("q_slow", event="start", id=msg.id, dequeue_count=msg.dequeue_count)
    time.sleep(seconds)
    record("q_slow", event="end", id=msg.id, dequeue_count=msg.dequeue_count)
