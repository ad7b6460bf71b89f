"""An async queue function, run on the host's event loop."""

import asyncio

import azure.functions as func

from tests.apps.events import record


async def main(msg: func.QueueMessage) -> None:
    await asyncio.sleep(0)
    record("q_async", body=msg.get_body().decode(), dequeue_count=msg.dequeue_count)
