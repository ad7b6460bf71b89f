"""devhost timer trigger: runOnStartup, per-second NCRONTAB, %setting% schedules, TimeSpan, disabling."""

from __future__ import annotations

import time
from datetime import datetime

from devhost.timers import Schedule, following
from tests.apps.events import read
from tests.apps.support import APPS, wait_until


def test_timers(start_devhost, storage, tmp_path):
    events_file = tmp_path / "events.jsonl"
    host = start_devhost(APPS / "timers", env={
        "AzureWebJobsStorage": storage, "EVENTS_FILE": str(events_file),
        "TIMER_SCHEDULE": "*/2 * * * * *",
        "AzureWebJobs.t_disabled_dot.Disabled": "true",
        "AzureWebJobs_t_disabled_underscore_Disabled": "1",
    })
    by_fn = lambda fn: [e for e in read(events_file) if e["fn"] == fn]  # noqa: E731
    wait_until(lambda: len(by_fn("t_second")) >= 4, 10, what="four per-second runs")
    wait_until(lambda: len(by_fn("t_setting")) >= 1 and len(by_fn("t_interval")) >= 2, 5, what="other timers")

    # runOnStartup: exactly one run at start although the schedule (1 January) is far away, not past due.
    startup = by_fn("t_startup")
    assert len(startup) == 1 and startup[0]["past_due"] is False

    # "* * * * * *" fires on each second boundary, about one second apart.
    seconds = [e["t"] for e in by_fn("t_second")]
    gaps = [b - a for a, b in zip(seconds, seconds[1:])]
    assert all(0.5 < g < 1.5 for g in gaps), gaps
    assert all(e["t"] % 1 < 0.5 for e in by_fn("t_second"))

    # %TIMER_SCHEDULE% resolved from settings: every even second.
    assert all(int(e["t"]) % 2 == 0 for e in by_fn("t_setting"))

    # Disabled timers never run, with either spelling (both have runOnStartup, so they would run at once).
    time.sleep(0.5)
    assert by_fn("t_disabled_dot") == [] and by_fn("t_disabled_underscore") == []
    log = host.logs()
    assert "Function 't_disabled_dot' is disabled." in log and "Function 't_disabled_underscore' is disabled." in log
    assert "Executing 'Functions.t_second' (Reason='Timer fired at " in log


def test_admin_api_runs_a_timer_function_on_demand(start_devhost, storage, tmp_path):
    """`POST /admin/functions/{name}`, as on the real host: 202, the function runs once, unknown names are 404."""
    import httpx

    events_file = tmp_path / "events.jsonl"
    host = start_devhost(APPS / "timers", env={
        "AzureWebJobsStorage": storage, "EVENTS_FILE": str(events_file), "TIMER_SCHEDULE": "0 0 0 1 1 *",
        "AzureWebJobs.t_second.Disabled": "true", "AzureWebJobs.t_interval.Disabled": "true",
    })
    by_fn = lambda fn: [e for e in read(events_file) if e["fn"] == fn]  # noqa: E731
    assert by_fn("t_setting") == []
    response = httpx.post(f"{host.url}/admin/functions/t_setting", json={"input": ""})
    assert response.status_code == 202
    wait_until(lambda: len(by_fn("t_setting")) == 1, 10, what="the manual run")
    assert by_fn("t_setting")[0]["past_due"] is False
    assert httpx.post(f"{host.url}/admin/functions/t_second", json={}).status_code == 404  # disabled
    assert httpx.post(f"{host.url}/admin/functions/nope", json={}).status_code == 404
    assert "Executing 'Functions.t_setting' (Reason='This function was programmatically called" in host.logs()


def test_an_occurrence_fires_once_even_when_the_loop_wakes_early():
    """The event loop may wake a timer a millisecond early (uvloop counts whole milliseconds): the occurrence after
    the one that fired at 12:00:01 is 12:00:02, even when the clock still reads 12:00:00.999 once it has run."""
    per_second = Schedule("* * * * * *")
    fired = datetime(2026, 1, 1, 12, 0, 1)
    assert following(per_second, fired, datetime(2026, 1, 1, 12, 0, 0, 999_000)) == datetime(2026, 1, 1, 12, 0, 2)
    # An invocation that overran the next occurrences skips them, as the host's TimerListener does.
    assert following(per_second, fired, datetime(2026, 1, 1, 12, 0, 3, 500_000)) == datetime(2026, 1, 1, 12, 0, 4)
    interval = Schedule("00:00:05")
    assert following(interval, fired, datetime(2026, 1, 1, 12, 0, 0, 999_000)) == datetime(2026, 1, 1, 12, 0, 6)
