"""The typed results of the service benchmark's phases, and their JSON form (the keys of <out>/latest.json).

Per-level summaries (`bench.load.LevelResult.summary`, `bench.ceiling.drain_summary`), latency summaries, CPU
and memory readings stay plain dicts: they are built and read as JSON objects everywhere in bench/."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bench.plan import Plan

Json = dict[str, Any]


class JsonResult:
    """A dataclass whose JSON form is its fields in order; those named in `omit_if_none` only once measured."""

    omit_if_none: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> Json:
        out: Json = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.name in self.omit_if_none:
                continue
            out[f.name] = _json(value)
        return out


def _json(value: object) -> object:
    if isinstance(value, JsonResult):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


@dataclass
class Ceiling(JsonResult):
    """Phase 1: blob upload + table insert + queue put made directly with the SDK, per concurrency level."""

    omit_if_none = ("waited_for_azurite_gc_s",)
    what: str
    basic: list[Json]  # one LevelResult summary per concurrency, with its `cpu_cores`
    messages_left_and_cleared: int
    waited_for_azurite_gc_s: float | None = None


@dataclass
class Intake(JsonResult):
    """Phase 2: POSTs through devhost (processor disabled), per concurrency level."""

    levels: list[Json]
    ratio_to_ceiling: dict[str, float]  # "c8": intake rate / storage ceiling rate at 8 clients
    report_bytes: int
    profiles: dict[str, Json | None]


@dataclass
class Drain(JsonResult):
    """Phase 3: a devhost with the processor enabled drains the backlog; ratios are set by phase 5."""

    backlog: int
    devhost_startup_s: float
    drain_s_from_ready: float | None
    reports_per_s: float | None
    reports_per_s_from_completed_at: float | None
    finished: bool
    statuses_after: dict[str, int]
    terminal: int
    cpu_cores: Json
    stalls: list[Json]  # {"at_s", "seconds"}: gaps with no report completed
    stalls_s: float
    reports_per_s_without_stalls: float | None
    tail: Json  # the last reports on their own: {"messages", "seconds", "reports_per_s"}, or empty
    rate_by_depth: list[Json]
    ratio_to_ceiling: float | None = None
    ratio_to_ceiling_without_stalls: float | None = None
    ratio_to_ceiling_tail: float | None = None
    ratio_to_app_ops_ceiling_tail: float | None = None
    queue_depth_timeline: list[tuple[float, int | None, int | None]] = field(default_factory=list)
    profile: Json | None = None


@dataclass
class ProcessingCeiling(JsonResult):
    """Phase 5: the drain's storage calls made directly with the SDK (`app_ops`: the processor's own, --profile)."""

    omit_if_none = ("app_ops",)
    what: str
    basic: Json  # a bench.ceiling.drain_summary with cpu_cores, start_depth, fill_errors
    app_ops: Json | None = None


@dataclass
class Latency(JsonResult):
    """POST → terminal status as a sender sees it by polling, over some reports."""

    reports: int
    poll_interval_ms: float
    post_to_terminal: Json  # latency summaries (bench.load.latency_summary)
    accept: Json
    server_received_to_completed: Json
    failures: list[str]


@dataclass
class IdleLatency(Latency):
    """Phase 4b: each report sent once the queue listener has backed off."""

    max_polling_interval_s: float
    settle_s: float
    idle_polls_per_day_per_queue: int


@dataclass
class E2E(Latency):
    """Phase 4: reports back to back, then (`idle`) on an idle service."""

    omit_if_none = ("idle",)
    idle: IdleLatency | None = None


@dataclass
class BigAccept(JsonResult):
    """The POST of the big report."""

    omit_if_none = ("accept_body",)
    accept_status: int
    accept_s: float
    intake_peak_during_accept: Json  # proc_memory of the intake devhost, with `sampled_max_rss`
    accept_body: str | None = None  # the start of the answer when it was not 202


@dataclass
class BigTerminal(JsonResult):
    """The big report's terminal status record, timed."""

    status: str
    items: object
    accepted_to_terminal_s: float
    processing_s: float | None  # from the first poll that saw `processing`
    server_received_to_completed_s: float


@dataclass
class BigProcessing(JsonResult):
    """The processing of the big report once accepted."""

    cpu_cores: Json
    processing_peak: Json  # proc_memory of the processing devhost, with `sampled_max_rss`
    timed_out: bool  # not terminal before the plan's deadline
    terminal: BigTerminal | None = None

    def to_json(self) -> Json:
        out: Json = {"cpu_cores": self.cpu_cores, "processing_peak": self.processing_peak}
        if self.timed_out:
            out["processing"] = "not terminal before the deadline"
        elif self.terminal is not None:
            out.update(self.terminal.to_json())
        return out


@dataclass
class BigReport(JsonResult):
    """Phase 6: one ~50 MB HL7 batch; `accept` and `processing` are set as far as the phase got."""

    body_bytes: int
    messages: int
    idle_memory: dict[str, Json]  # proc_memory of each devhost before the POST
    peak_reset_with_clear_refs: bool
    accept: BigAccept | None = None
    processing: BigProcessing | None = None

    def to_json(self) -> Json:
        """One flat object, as the phase's stages add their keys."""
        out: Json = {"body_bytes": self.body_bytes, "messages": self.messages, "idle_memory": self.idle_memory,
                     "peak_reset_with_clear_refs": self.peak_reset_with_clear_refs}
        if self.accept is not None:
            out.update(self.accept.to_json())
        if self.processing is not None:
            out.update(self.processing.to_json())
        return out


@dataclass
class RunResults(JsonResult):
    """Everything one run measured, each phase's result once it completed."""

    omit_if_none = ("machine_load_before", "machine", "ceiling", "intake", "drain", "e2e", "processing_ceiling",
                    "big_report", "parse_speed", "error", "total_s")
    started_at: str
    quick: bool
    plan: Plan
    notes: list[str]
    machine_load_before: dict[str, float] | None = None
    machine: Json | None = None
    ceiling: Ceiling | None = None
    intake: Intake | None = None
    drain: Drain | None = None
    e2e: E2E | None = None
    processing_ceiling: ProcessingCeiling | None = None
    big_report: BigReport | None = None
    parse_speed: Json | None = None  # bench.parse_speed: MB/s of CPU per format beside its floor
    error: str | None = None  # the traceback of what broke the run, with the tail of a dead devhost's log
    total_s: float | None = None
