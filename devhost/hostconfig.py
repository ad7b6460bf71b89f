"""host.json with `AzureFunctionsJobHost__…` overrides, TimeSpan parsing and the queue extension's options."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devhost.settings import Settings

OVERRIDE_PREFIX = "azurefunctionsjobhost"

_TIMESPAN = re.compile(
    r"^\s*(?P<sign>-)?(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2})(?:\.(?P<frac>\d{1,7}))?)?\s*$"
)


def parse_timespan(value: Any) -> float:
    """Seconds in a .NET TimeSpan string: `hh:mm[:ss[.fffffff]]`, `d.hh:mm:ss`, or a bare number of days."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A bare number in a TimeSpan setting means days to .NET's TimeSpan.Parse.
        return float(value) * 86400
    text = str(value)
    if re.fullmatch(r"\s*\d+\s*", text):
        return int(text) * 86400
    match = _TIMESPAN.match(text)
    if not match:
        raise ValueError(f"not a TimeSpan (expected hh:mm:ss or d.hh:mm:ss): {value!r}")
    h, m, s = int(match["h"]), int(match["m"]), int(match["s"] or 0)
    if h > 23 or m > 59 or s > 59:
        raise ValueError(f"TimeSpan component out of range: {value!r}")
    seconds = int(match["days"] or 0) * 86400 + h * 3600 + m * 60 + s + float(f"0.{match['frac'] or 0}")
    return -seconds if match["sign"] else seconds


def get_ci(mapping: Any, *path: str, default: Any = None) -> Any:
    """Look a path up in nested dicts with case-insensitive keys, as .NET configuration does."""
    node = mapping
    for key in path:
        if not isinstance(node, dict):
            return default
        for k, v in node.items():
            if k.lower() == key.lower():
                node = v
                break
        else:
            return default
    return node


def apply_overrides(config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Settings `AzureFunctionsJobHost__a__b` (or `AzureFunctionsJobHost:a:b`) replace host.json's `a.b`."""
    for name, value in settings.items():
        parts = [p for p in re.split(r"__|:", name)]
        if len(parts) < 2 or parts[0].lower() != OVERRIDE_PREFIX:
            continue
        node = config
        for key in parts[1:-1]:
            existing = next((k for k in node if k.lower() == key.lower()), None)
            if existing is None or not isinstance(node[existing], dict):
                existing = existing or key
                node[existing] = {}
            node = node[existing]
        leaf = next((k for k in node if k.lower() == parts[-1].lower()), parts[-1])
        node[leaf] = value
    return config


def load_host_config(app_dir: Path, settings: Settings) -> dict[str, Any]:
    path = app_dir / "host.json"
    config = json.loads(path.read_text(encoding="utf-8-sig")) if path.exists() else {"version": "2.0"}
    return apply_overrides(config, settings)


def route_prefix(config: dict[str, Any]) -> str:
    prefix = get_ci(config, "extensions", "http", "routePrefix", default="api")
    return str(prefix if prefix is not None else "api").strip("/")


# The host's default when host.json sets no functionTimeout on a plan other than Consumption (5 minutes there).
DEFAULT_FUNCTION_TIMEOUT = 30 * 60.0


def function_timeout(config: dict[str, Any]) -> float | None:
    """host.json `functionTimeout` in seconds; None when it is `-1` (unbounded)."""
    value = get_ci(config, "functionTimeout")
    if value is None or value == "":
        return DEFAULT_FUNCTION_TIMEOUT
    if str(value).strip() == "-1":
        return None
    seconds = parse_timespan(value)
    if seconds <= 0:
        raise ValueError(f"functionTimeout must be positive or -1, got {value!r}")
    return seconds


def is_development(settings: Settings) -> bool:
    env = settings.get("AZURE_FUNCTIONS_ENVIRONMENT") or settings.get("ASPNETCORE_ENVIRONMENT") or "Development"
    return env.lower() == "development"


@dataclass(frozen=True)
class QueueOptions:
    """The storage queues extension (5.x) options, with its defaults and limits."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @classmethod
    def from_config(cls, config: dict[str, Any], development: bool, cpu_count: int | None = None) -> "QueueOptions":
        q = get_ci(config, "extensions", "queues", default={}) or {}

        def opt(key: str, default: Any) -> Any:
            value = get_ci(q, key)
            return default if value is None or value == "" else value

        batch_size = int(opt("batchSize", 16))
        if not 1 <= batch_size <= 32:
            raise ValueError(f"extensions.queues.batchSize must be between 1 and 32, got {batch_size}")
        cpus = cpu_count or os.cpu_count() or 1
        threshold_raw = opt("newBatchThreshold", None)
        # Unset (or -1) means "batchSize/2 per processor", the extension's computed default.
        threshold = int(threshold_raw) if threshold_raw is not None else -1
        if threshold < 0:
            threshold = (batch_size // 2) * cpus
        polling = parse_timespan(opt("maxPollingInterval", "00:00:02" if development else "00:01:00"))
        if polling < 0.1:
            raise ValueError("extensions.queues.maxPollingInterval must be at least 00:00:00.100")
        visibility = parse_timespan(opt("visibilityTimeout", "00:00:00"))
        max_dequeue = int(opt("maxDequeueCount", 5))
        if max_dequeue < 1:
            raise ValueError("extensions.queues.maxDequeueCount must be at least 1")
        encoding = str(opt("messageEncoding", "base64")).lower()
        if encoding not in ("base64", "none"):
            raise ValueError(f"extensions.queues.messageEncoding must be base64 or none, got {encoding!r}")
        return cls(batch_size, threshold, polling, max(0.0, visibility), max_dequeue, encoding)
