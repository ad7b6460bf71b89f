"""host.json with `AzureFunctionsJobHost__…` overrides, TimeSpan parsing and the queue extension's options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from devhost.settings import Settings

# host.json reading is shared with the app (maxDequeueCount, functionTimeout), so both read it alike.
# Re-exported for devhost's modules and tests (`name as name` marks an explicit re-export).
from shared.hostjson import DEFAULT_FUNCTION_TIMEOUT as DEFAULT_FUNCTION_TIMEOUT
from shared.hostjson import apply_overrides as apply_overrides
from shared.hostjson import function_timeout as function_timeout
from shared.hostjson import get_ci as get_ci
from shared.hostjson import load_host_config as load_host_config
from shared.hostjson import parse_timespan as parse_timespan


def route_prefix(config: dict[str, Any]) -> str:
    prefix = get_ci(config, "extensions", "http", "routePrefix", default="api")
    return str(prefix if prefix is not None else "api").strip("/")


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
    def from_config(cls, config: dict[str, Any], development: bool, cpu_count: int | None = None) -> QueueOptions:
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
