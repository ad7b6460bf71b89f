"""NCRONTAB schedules as the timer trigger reads them: `{second} {minute} {hour} {day} {month} {day-of-week}`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MONTH_FULL = ["january", "february", "march", "april", "may", "june", "july", "august", "september",
               "october", "november", "december"]
_DAY_FULL = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]

# (name, low, high, names → value)
_Field = tuple[str, int, int, dict[str, int]]
_FIELDS: list[_Field] = [
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, {**{n: i + 1 for i, n in enumerate(_MONTHS)}, **{n: i + 1 for i, n in enumerate(_MONTH_FULL)}}),
    ("day-of-week", 0, 6, {**{n: i for i, n in enumerate(_DAYS)}, **{n: i for i, n in enumerate(_DAY_FULL)}}),
]


class CronError(ValueError):
    """The expression is not a valid NCRONTAB schedule."""


def _value(text: str, field: _Field) -> int:
    name, low, high, names = field
    key = text.strip().lower()
    if key in names:
        return names[key]
    if not key.isdigit():
        raise CronError(f"bad {name} value {text!r}")
    value = int(key)
    if name == "day-of-week" and value == 7:
        value = 0  # 7 is also Sunday in most cron dialects; accept it rather than fail.
    if not low <= value <= high:
        raise CronError(f"{name} value {value} outside {low}-{high}")
    return value


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    name, low, high, _ = field
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"empty item in {name} field {text!r}")
        base, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"bad step {step_text!r} in {name} field")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, stop = _value(a, field), _value(b, field)
            if start > stop:
                raise CronError(f"range {base!r} in {name} field runs backwards")
        else:
            start = _value(base, field)
            # `5/15` means from 5 to the end in steps of 15; a bare value is just itself.
            stop = high if step_text else start
        values.update(range(start, stop + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class CronSchedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday

    @classmethod
    def parse(cls, expression: str) -> CronSchedule:
        parts = expression.split()
        if len(parts) == 5:
            # NCrontab also accepts the classic five fields; the seconds field is then 0.
            parts = ["0", *parts]
        if len(parts) != 6:
            raise CronError(f"expected 6 fields (second minute hour day month day-of-week), got {expression!r}")
        return cls(*(_parse_field(p, f) for p, f in zip(parts, _FIELDS, strict=True)))

    def _day_matches(self, t: datetime) -> bool:
        # NCrontab requires both the day-of-month and the day-of-week to match (unlike Vixie cron's OR).
        return t.day in self.days and (t.isoweekday() % 7) in self.weekdays

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after `after` (kept in `after`'s time zone, if any)."""
        t = after.replace(microsecond=0) + timedelta(seconds=1)
        limit = after + timedelta(days=366 * 5)
        while t <= limit:
            if t.month not in self.months:
                year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
                t = t.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)
                continue
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0)
                continue
            if t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0, second=0)
                continue
            if t.minute not in self.minutes:
                t = (t + timedelta(minutes=1)).replace(second=0)
                continue
            if t.second not in self.seconds:
                t += timedelta(seconds=1)
                continue
            return t
        raise CronError("schedule never occurs within five years")
