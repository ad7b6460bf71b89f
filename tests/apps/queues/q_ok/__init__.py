"""Succeeds and records the message metadata."""

import azure.functions as func

from tests.apps.events import record


def _meta(msg: func.QueueMessage) -> dict:
    return {"id": msg.id, "dequeue_count": msg.dequeue_count, "body": msg.get_body().decode("utf-8", "replace"),
            "insertion_time": msg.insertion_time, "expiration_time": msg.expiration_time,
            "time_next_visible": msg.time_next_visible, "pop_receipt": msg.pop_receipt}


def main(msg: func.QueueMessage) -> None:
    record("q_ok", **_meta(msg))
