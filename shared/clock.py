"""Timestamps as the API shows them: ISO 8601 UTC, fixed width, so string order is time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# Instances' clocks differ by up to this much: a time written by one is judged by another's.
CLOCK_SKEW = timedelta(minutes=1)


def to_iso(moment: datetime) -> str:
    # isoformat pads the year to four digits; strftime("%Y") does not (year 999 would sort after 2026).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def now_iso() -> str:
    return to_iso(datetime.now(UTC))


def parse_iso(text: str) -> datetime:
    """Parse ISO 8601; a value without an offset is taken as UTC. Raises ValueError."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def settled_after(function_timeout_seconds: float) -> timedelta:
    """How long after it began an invocation surely no longer runs, judged on any instance: the host's
    functionTimeout ends it, and clocks differ by CLOCK_SKEW."""
    return timedelta(seconds=function_timeout_seconds) + CLOCK_SKEW
