"""Waiting out trouble that is not the report's (its downstream is down, storage is throttling) without spending
its processing tries: the try ends as a success after sending the report's message again, hidden for a growing
delay (DELIVERY_RETRY_FIRST_SECONDS, doubling up to DELIVERY_RETRY_MAX_SECONDS), for up to DELIVERY_RETRY_HOURS
from the first such delay. The host's retries (visibilityTimeout × maxDequeueCount, under a minute) are kept for
failures that may be the processor's own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.clock import parse_iso, to_iso
from shared.config import Settings
from shared.models import QueueMessage
from shared.storage import Storage


def started(message: QueueMessage, now: datetime) -> datetime:
    """When this report began waiting: the first deferral, or now."""
    return parse_iso(message.deferred_since) if message.deferred_since else now


def window_closed(settings: Settings, message: QueueMessage, now: datetime) -> bool:
    return now - started(message, now) >= timedelta(hours=settings.delivery_retry_hours)


def delay_seconds(settings: Settings, message: QueueMessage, now: datetime) -> int:
    """The wait before the next try: doubling with each deferral, never past the window's end."""
    deferrals = message.deferrals or 0
    delay = min(settings.delivery_retry_first_seconds * 2 ** min(deferrals, 30), settings.delivery_retry_max_seconds)
    left = started(message, now) + timedelta(hours=settings.delivery_retry_hours) - now
    return max(1, int(min(delay, left.total_seconds() + 1)))


def defer(storage: Storage, settings: Settings, message: QueueMessage, deliver_only: bool) -> int:
    """Send the report's message again, hidden for the next delay; returns the delay in seconds. A send that fails
    raises, and the host retries the try as usual."""
    now = datetime.now(UTC)
    delay = delay_seconds(settings, message, now)
    again = message.model_copy(update={
        "deferred_since": to_iso(started(message, now)), "deferrals": (message.deferrals or 0) + 1,
        "deliver_only": deliver_only or None,
    })
    storage.queue.send_message(again.model_dump_json(exclude_none=True), visibility_timeout=delay, time_to_live=-1)
    return delay
