"""The service benchmark's report: <out>/latest*.json with a timestamped copy, the latency chart, and the table
printed at the end of a run."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chart import latency_chart
from bench.results import E2E, BigReport, Drain, Json, ProcessingCeiling, RunResults
from bench.session import say


def save(results: RunResults, out: Path, kind: str = "") -> None:
    """<out>/latest<kind>.json and a timestamped copy, the chart, the table; a partial run (kind `-e2e`) leaves the
    full run's files alone."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**results.to_json(), "summary": summary(results)}
    text = json.dumps(data, indent=2, default=str)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if results.quick else "") + kind
    (out / f"latest{kind}.json").write_text(text)
    (out / f"{stamp}.json").write_text(text)
    chart = None
    try:
        chart = None if kind else latency_chart(data, out / "latency.png")
    except Exception as exc:  # noqa: BLE001 - the numbers are written; a chart is a nicety
        say(f"chart failed: {exc}")
    print(table(results))
    say(f"results: {out / f'latest{kind}.json'} and {stamp}.json; chart: {chart or 'not drawn (matplotlib?)'}")


def summary(r: RunResults) -> Json:
    """The headline figures, as the JSON's `summary`."""
    ratios = r.intake.ratio_to_ceiling if r.intake else {}
    e2e = r.e2e.to_json() if r.e2e else {}
    return {
        "intake_over_ceiling_c8": ratios.get("c8"),
        "intake_over_ceiling_c32": ratios.get("c32"),
        "drain_over_ceiling": r.drain.ratio_to_ceiling if r.drain else None,
        "drain_over_ceiling_tail": r.drain.ratio_to_ceiling_tail if r.drain else None,
        "e2e_p50_ms": e2e.get("post_to_terminal", {}).get("p50_ms"),
        "e2e_p95_ms": e2e.get("post_to_terminal", {}).get("p95_ms"),
        "e2e_idle_p50_ms": e2e.get("idle", {}).get("post_to_terminal", {}).get("p50_ms"),
        "e2e_idle_p95_ms": e2e.get("idle", {}).get("post_to_terminal", {}).get("p95_ms"),
        "big_accept_s": r.big_report.accept.accept_s if r.big_report and r.big_report.accept else None,
        "other_processes_cpu_cores_max": max(_others(r.to_json()), default=None),
        "total_s": r.total_s,
    }


def _others(node: object) -> list[float]:
    """The `others` CPU (processes not ours) of every measured window (CPU readings hold `machine` and `others`)."""
    if isinstance(node, dict):
        found = [node["others"]] if isinstance(node.get("others"), (int, float)) and "machine" in node else []
        return found + [x for value in node.values() for x in _others(value)]
    if isinstance(node, list):
        return [x for value in node for x in _others(value)]
    return []


def _f(v: float | None, spec: str = "{:.1f}") -> str:
    return "-" if v is None else spec.format(v)


def _mb(v: float | None) -> str:
    return "-" if not v else f"{v / 1e6:.0f} MB"


def table(r: RunResults) -> str:
    """The printed report: intake against the ceiling per concurrency, then drain, latency, big report, ratios."""
    lines = ["", "=== lab intake benchmark" + (" (quick)" if r.quick else "") + " ===", _machine_line(r.machine or {}),
             ""]
    lines += _intake_lines(r)
    if r.drain:
        lines += _drain_lines(r.drain, r.processing_ceiling)
    if r.e2e:
        lines += _e2e_lines(r.e2e)
    if r.big_report:
        lines.append(_big_line(r.big_report))
    if r.parse_speed:
        lines += _parse_lines(r.parse_speed)
    lines += _ratio_lines(r, summary(r))
    return "\n".join(lines)


def _machine_line(m: Json) -> str:
    return (f"machine: {m.get('nproc')} cores, {m.get('cpu_model')}, Python {m.get('python')}, "
            f"Azurite {m.get('azurite_version')}")


def _intake_lines(r: RunResults) -> list[str]:
    lines = [f"{'conc':>4}  {'ceiling/s':>9}  {'intake/s':>8}  {'ratio':>6}  "
             f"{'p50 ms':>7}  {'p95 ms':>7}  {'p99 ms':>7}  {'ceil p50':>8}"]
    ceiling = {lv["concurrency"]: lv for lv in (r.ceiling.basic if r.ceiling else [])}
    for lv in r.intake.levels if r.intake else []:
        c = lv["concurrency"]
        cl = ceiling.get(c, {})
        ratio = lv["ops_per_s"] / cl["ops_per_s"] if cl.get("ops_per_s") else None
        lines.append(f"{c:>4}  {_f(cl.get('ops_per_s')):>9}  "
                     f"{_f(lv['ops_per_s']):>8}  {_f(ratio, '{:.2f}'):>6}  {_f(lv['latency']['p50_ms']):>7}  "
                     f"{_f(lv['latency']['p95_ms']):>7}  {_f(lv['latency']['p99_ms']):>7}  "
                     f"{_f(cl.get('latency', {}).get('p50_ms')):>8}")
    return lines


def _drain_lines(d: Drain, pc: ProcessingCeiling | None) -> list[str]:
    basic: dict[str, Any] = pc.basic if pc else {}
    app: dict[str, Any] = (pc.app_ops if pc else None) or {}
    tail = d.tail
    return ["", f"drain: {d.backlog} reports in {_f(d.drain_s_from_ready)} s = "
                f"{_f(d.reports_per_s)}/s ({_f(d.reports_per_s_without_stalls)}/s without Azurite "
                f"stalls); statuses {d.statuses_after}",
            f"       SDK ceiling over the same backlog: {_f(basic.get('reports_per_s'))}/s "
            f"({_f(basic.get('reports_per_s_without_stalls'))}/s without stalls) -> ratio "
            f"{_f(d.ratio_to_ceiling, '{:.2f}')} ({_f(d.ratio_to_ceiling_without_stalls, '{:.2f}')})",
            "       by depth: " + ", ".join(f"{b['depth']}: {b['reports_per_s']}/s" for b in d.rate_by_depth),
            f"       last {tail.get('messages', '-')}: {_f(tail.get('reports_per_s'))}/s vs ceiling "
            f"{_f(basic.get('tail', {}).get('reports_per_s'))}/s -> "
            f"{_f(d.ratio_to_ceiling_tail, '{:.2f}')}; vs the processor's calls made directly "
            f"{_f(app.get('reports_per_s'))}/s -> {_f(d.ratio_to_app_ops_ceiling_tail, '{:.2f}')}"]


def _e2e_lines(e: E2E) -> list[str]:
    lines = [f"e2e back to back (POST -> terminal seen): p50 {_f(e.post_to_terminal['p50_ms'])} ms, p95 "
             f"{_f(e.post_to_terminal['p95_ms'])} ms over {e.reports} reports"]
    idle = e.idle
    if idle:
        lines.append(f"e2e idle (maxPollingInterval {idle.max_polling_interval_s:g} s): p50 "
                     f"{_f(idle.post_to_terminal['p50_ms'])} ms, p95 {_f(idle.post_to_terminal['p95_ms'])} ms "
                     f"over {idle.reports} reports; {idle.idle_polls_per_day_per_queue} polls/day "
                     f"per queue while idle")
    return lines


def _big_line(b: BigReport) -> str:
    accept, processing = b.accept, b.processing
    terminal = processing.terminal if processing else None
    return (f"big report {b.body_bytes / 1e6:.1f} MB: accept {_f(accept.accept_s if accept else None, '{:.2f}')} s "
            f"(HTTP {accept.accept_status if accept else None}), intake peak "
            f"{_mb(accept.intake_peak_during_accept.get('VmHWM') if accept else None)}; processing "
            f"{_f(terminal.processing_s if terminal else None)} s, processing peak "
            f"{_mb(processing.processing_peak.get('VmHWM') if processing else None)}"
            f" -> {terminal.status if terminal else None} {terminal.items if terminal else None}")


def _parse_lines(speeds: Json) -> list[str]:
    return ["parse speed (MB/s of CPU): " + "; ".join(
        f"{name} {v['parse_mb_per_s']} (its bytes by {v['floor']}: {v['floor_mb_per_s']})" for name, v in speeds.items())]


def _ratio_lines(r: RunResults, s: Json) -> list[str]:
    return ["", f"RATIOS  intake/ceiling c=8: {_f(s.get('intake_over_ceiling_c8'), '{:.2f}')}   "
                f"c=32: {_f(s.get('intake_over_ceiling_c32'), '{:.2f}')}   drain/ceiling: "
                f"{_f(s.get('drain_over_ceiling'), '{:.2f}')} (last {r.plan.proc_ceiling_max}: "
                f"{_f(s.get('drain_over_ceiling_tail'), '{:.2f}')})   e2e p50: {_f(s.get('e2e_p50_ms'))} ms "
                f"(idle {_f(s.get('e2e_idle_p50_ms'))} ms)",
            "(ceiling and intake here are phases a minute apart: python -m bench.ratio measures the ratio in turns)",
            f"total run time {_f(r.total_s)} s; other processes used up to "
            f"{_f(s.get('other_processes_cpu_cores_max'), '{:.2f}')} cores during the measurements"
            + (f"; notes: {r.notes}" if r.notes else ""), ""]
