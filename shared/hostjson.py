"""host.json as the Functions host reads it: `AzureFunctionsJobHost__…` overrides, case-insensitive keys, .NET
TimeSpans and `functionTimeout`. The app reads the values it must agree with the host on (maxDequeueCount,
functionTimeout) through this module, and devhost reads host.json through it too, so both read the same thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

OVERRIDE_PREFIX = "azurefunctionsjobhost"


class NamedValues(Protocol):
    """Settings as name/value pairs: a Mapping[str, str] (os.environ) or devhost's case-insensitive Settings."""

    def items(self) -> Iterable[tuple[str, str]]: ...

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


def apply_overrides(config: dict[str, Any], settings: NamedValues) -> dict[str, Any]:
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


def load_host_config(app_dir: Path, settings: NamedValues) -> dict[str, Any]:
    path = app_dir / "host.json"
    config = json.loads(path.read_text(encoding="utf-8-sig")) if path.exists() else {"version": "2.0"}
    return apply_overrides(config, settings)


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
