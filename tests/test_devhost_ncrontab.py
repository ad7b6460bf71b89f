"""NCRONTAB parser: six fields with seconds first, ranges, lists, steps, names, next occurrence."""

from datetime import datetime

import pytest

from devhost.ncrontab import CronError, CronSchedule


def nxt(expr: str, after: str) -> str:
    return CronSchedule.parse(expr).next_after(datetime.fromisoformat(after)).isoformat()


def test_every_second():
    assert nxt("* * * * * *", "2024-01-01T00:00:00.500") == "2024-01-01T00:00:01"


def test_seconds_field_comes_first():
    # "0 */5 * * * *" is every five minutes, not every five hours.
    assert nxt("0 */5 * * * *", "2024-01-01T10:01:30") == "2024-01-01T10:05:00"


def test_step_on_seconds():
    assert nxt("*/15 * * * * *", "2024-01-01T10:00:16") == "2024-01-01T10:00:30"


def test_ranges_and_lists():
    s = CronSchedule.parse("0 0 9-11,15 * * *")
    assert s.hours == frozenset({9, 10, 11, 15})
    assert nxt("0 0 9-11,15 * * *", "2024-01-01T11:00:00") == "2024-01-01T15:00:00"


def test_range_with_step_and_start_with_step():
    assert CronSchedule.parse("10-30/10 * * * * *").seconds == frozenset({10, 20, 30})
    assert CronSchedule.parse("5/20 * * * * *").seconds == frozenset({5, 25, 45})


def test_day_of_week_names_and_numbers():
    # 2024-01-01 is a Monday.
    assert nxt("0 30 9 * * Mon-Fri", "2024-01-05T10:00:00") == "2024-01-08T09:30:00"
    assert nxt("0 0 12 * * 0", "2024-01-01T00:00:00") == "2024-01-07T12:00:00"
    assert nxt("0 0 12 * * sunday", "2024-01-01T00:00:00") == "2024-01-07T12:00:00"


def test_month_names_and_year_rollover():
    assert nxt("0 0 0 1 Jan *", "2024-06-01T00:00:00") == "2025-01-01T00:00:00"
    assert nxt("0 0 0 29 2 *", "2024-03-01T00:00:00") == "2028-02-29T00:00:00"


def test_day_and_weekday_must_both_match():
    # NCrontab ANDs the two day fields: the 13th that is a Friday.
    assert nxt("0 0 0 13 * Fri", "2024-01-01T00:00:00") == "2024-09-13T00:00:00"


def test_five_fields_mean_seconds_zero():
    assert nxt("*/10 * * * *", "2024-01-01T00:01:00") == "2024-01-01T00:10:00"


def test_strictly_after():
    assert nxt("0 0 * * * *", "2024-01-01T10:00:00") == "2024-01-01T11:00:00"


@pytest.mark.parametrize("expr", ["", "* * *", "60 * * * * *", "* * 24 * * *", "* * * 0 * *", "* * * * 13 *",
                                  "*/0 * * * * *", "5-1 * * * * *", "x * * * * *", "* * * * * Funday"])
def test_rejects_bad_expressions(expr):
    with pytest.raises(CronError):
        CronSchedule.parse(expr)
