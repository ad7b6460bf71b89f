"""Timer trigger: NCRONTAB or TimeSpan schedules, `runOnStartup`, one invocation at a time per function."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from azure.functions.timer import TimerRequest

from devhost.functions import HOST_API_REASON, Dispatcher, LoadedFunction
from devhost.hostconfig import parse_timespan
from devhost.ncrontab import CronSchedule

log = logging.getLogger("devhost")

PAST_DUE_TOLERANCE = timedelta(seconds=1)


class Schedule:
    """A cron schedule, or a fixed interval when the expression is a TimeSpan such as `00:05:00`."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.interval: timedelta | None = None
        self.cron: CronSchedule | None = None
        if ":" in expression and len(expression.split()) == 1:
            seconds = parse_timespan(expression)
            if seconds <= 0:
                raise ValueError(f"timer interval must be positive: {expression!r}")
            self.interval = timedelta(seconds=seconds)
        else:
            self.cron = CronSchedule.parse(expression)

    def next_after(self, moment: datetime) -> datetime:
        if self.interval is not None:
            return moment + self.interval
        assert self.cron is not None
        return self.cron.next_after(moment)


class TimerRunner:
    def __init__(self, fn: LoadedFunction, schedule: Schedule, run_on_startup: bool, dispatcher: Dispatcher) -> None:
        self.fn = fn
        self.schedule = schedule
        self.run_on_startup = run_on_startup
        self.dispatcher = dispatcher
        self.trigger_name = str(fn.info.trigger.get("name"))
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.last: datetime | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"timer:{self.fn.name}")

    def stop(self) -> None:
        """No new occurrences; a running invocation is left to finish."""
        self._stop.set()

    async def run_now(self, _input: str = "") -> None:
        """Run once outside the schedule, as `POST /admin/functions/{name}` does on the real host."""
        await self._fire(datetime.now(), past_due=False, reason=HOST_API_REASON)

    async def _fire(self, scheduled: datetime, past_due: bool, reason: str | None = None) -> None:
        now = datetime.now().astimezone()
        nxt = self.schedule.next_after(datetime.now())
        request = TimerRequest(
            past_due=past_due,
            schedule_status={"Last": (self.last or now).isoformat(), "Next": nxt.isoformat(),
                             "LastUpdated": now.isoformat()},
            schedule={"AdjustForDST": True},
        )
        self.last = now
        await self.dispatcher.invoke(self.fn, {self.trigger_name: request}, reason or f"Timer fired at {now.isoformat()}")

    async def _run(self) -> None:
        if self.run_on_startup:
            await self._fire(datetime.now(), past_due=False)
        next_at = self.schedule.next_after(datetime.now())
        while not self._stop.is_set():
            delay = (next_at - datetime.now()).total_seconds()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    break
                except TimeoutError:
                    # The loop's timers may wake a little early (uvloop counts whole milliseconds, and the loop's
                    # monotonic clock drifts from the wall clock): wait out the rest rather than fire early.
                    continue
            now = datetime.now()
            await self._fire(next_at, past_due=now - next_at > PAST_DUE_TOLERANCE)
            next_at = following(self.schedule, next_at, datetime.now())


def following(schedule: Schedule, fired: datetime, now: datetime) -> datetime:
    """The occurrence after one that fired at `fired`, now that the invocation ended at `now`.

    Strictly after `fired`, so that an occurrence never fires twice; and, like the host's TimerListener, after the
    end of the invocation, so occurrences missed while it ran are skipped rather than run back to back.
    """
    return schedule.next_after(max(fired, now))
