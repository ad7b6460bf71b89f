"""The app's settings: read once from the environment (and host.json), validated, with errors naming the setting."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared import hostjson, registry
from shared.connection import DEVELOPMENT_STORAGE, ConnectionSettingError, StorageConnection, resolve

__all__ = ["APP_ROOT", "DEVELOPMENT_STORAGE", "Settings", "SettingsError", "get_settings", "load_settings"]

APP_ROOT = Path(__file__).resolve().parent.parent
STORAGE_SETTING = "AzureWebJobsStorage"

# Environment variable -> field name. One place, so error messages can name the setting the operator sets.
# The storage connection (AzureWebJobsStorage, or its identity-based AzureWebJobsStorage__* form) is read by
# shared.connection, which names its own settings.
SETTING_NAMES = {
    "MAX_REPORT_BYTES": "max_report_bytes",
    "DELIVERY_URL": "delivery_url",
    "DELIVERY_TIMEOUT_SECONDS": "delivery_timeout_seconds",
    "DELIVERY_RETRY_HOURS": "delivery_retry_hours",
    "DELIVERY_RETRY_FIRST_SECONDS": "delivery_retry_first_seconds",
    "DELIVERY_RETRY_MAX_SECONDS": "delivery_retry_max_seconds",
    "PUBLIC_BASE_URL": "public_base_url",
    "RECONCILE_AFTER_SECONDS": "reconcile_after_seconds",
    "RETRY_AFTER_SECONDS": "retry_after_seconds",
    "AUTH_CACHE_SECONDS": "auth_cache_seconds",
    "VALIDATE_MAX_BYTES": "validate_max_bytes",
    "HTTP_THREADS": "http_threads",
    "FINGERPRINT_KEY": "fingerprint_key",
    "ALLOW_DUPLICATES_DEFAULT": "allow_duplicates_default",
    "DUPLICATE_WINDOW_DAYS": "duplicate_window_days",
    "RAW_RETENTION_DAYS": "raw_retention_days",
    "IDEMPOTENCY_DAYS": "idempotency_days",
    "RESULTS_RETENTION_DAYS": "results_retention_days",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "applicationinsights_connection_string",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "otlp_endpoint",
}


class SettingsError(RuntimeError):
    """A setting is missing or has a bad value; the message names it."""


class Settings(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    storage: StorageConnection
    max_report_bytes: int = Field(default=50_000_000, gt=0)
    delivery_url: str | None = None
    delivery_timeout_seconds: float = Field(default=10.0, gt=0)
    # A downstream (or storage) outage is waited out this long, with delays doubling from the first to the max.
    delivery_retry_hours: float = Field(default=24.0, gt=0, le=24 * 7)
    delivery_retry_first_seconds: int = Field(default=10, ge=1, le=3600)
    delivery_retry_max_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600)
    public_base_url: str | None = None
    # A `received` row older than this is taken to be an ingest that crashed before enqueueing.
    reconcile_after_seconds: int = Field(default=60, ge=0)
    retry_after_seconds: int = Field(default=1, ge=1)
    # How long an accepted API key is trusted without a table read; a revoked key works at most this much longer.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # POST /api/validate parses synchronously in the request, so it takes less than intake does.
    validate_max_bytes: int = Field(default=10_000_000, gt=0)
    # The HTTP functions' own threads (shared/api.on_http_threads), apart from the worker's pool processing uses.
    http_threads: int = Field(default=32, ge=1, le=256)
    max_dequeue_count: int = Field(default=5, ge=1)
    # Duplicate detection (shared/duplicates.py): the HMAC key of item fingerprints (else one kept in storage), the
    # setting of senders registered without one (ReportStream's allowDuplicates, true), and how far back it looks.
    fingerprint_key: str | None = Field(default=None, min_length=16)
    allow_duplicates_default: bool = True
    duplicate_window_days: int = Field(default=365, ge=1, le=3650)
    # Patient data is kept only this long (shared/retention.py): raw bodies (replay needs them), then results.
    raw_retention_days: int = Field(default=90, ge=1, le=3650)
    results_retention_days: int = Field(default=365, ge=1, le=3650)
    # How long an Idempotency-Key is remembered (then deleted by day ranges, shared/expiry.py).
    idempotency_days: int = Field(default=7, ge=1, le=365)
    # Telemetry export (shared/telemetry_export.py): Azure Monitor, else an OTLP collector, else none.
    applicationinsights_connection_string: str | None = None
    otlp_endpoint: str | None = None
    # The longest any invocation can run (host.json functionTimeout): a request holding an Idempotency-Key claim
    # cannot outlive it, so only then is the claim taken over.
    function_timeout_seconds: float = Field(default=hostjson.DEFAULT_FUNCTION_TIMEOUT, gt=0)

    @field_validator("applicationinsights_connection_string")
    @classmethod
    def _connection_string(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "instrumentationkey=" not in value.lower():
            raise ValueError("must be an Application Insights connection string (InstrumentationKey=...)")
        return value.strip()

    @field_validator("delivery_url", "public_base_url", "otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        """Every Location is built on it, so it must be a plain base: no user part, query or fragment."""
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"is not a valid URL ({exc})") from None
        if not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment:
            raise ValueError("must be scheme://host[:port][/path], without user, query or fragment")
        return value


def _host_json(env: dict[str, str]) -> tuple[int | None, float]:
    """maxDequeueCount and functionTimeout as the host reads them (host.json with AzureFunctionsJobHost__ overrides).

    An unbounded functionTimeout (-1) is refused: an Idempotency-Key claim is taken over only once the request
    holding it can no longer be running, and with no bound that moment never comes."""
    config = hostjson.load_host_config(APP_ROOT, env)
    max_dequeue = hostjson.get_ci(config, "extensions", "queues", "maxDequeueCount")
    timeout = hostjson.function_timeout(config)
    if timeout is None:
        raise ValueError("functionTimeout -1 (unbounded) is not supported: set a bound such as 00:10:00")
    return (int(max_dequeue) if max_dequeue is not None else None), timeout


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    values: dict[str, object] = {}
    for name, field_name in SETTING_NAMES.items():
        if env.get(name, "") != "":
            values[field_name] = env[name]
    try:
        values["storage"] = resolve(env, STORAGE_SETTING)
    except ConnectionSettingError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    try:
        max_dequeue, values["function_timeout_seconds"] = _host_json(env)
        if max_dequeue is not None:
            values["max_dequeue_count"] = max_dequeue
        return Settings.model_validate(values)
    except ValueError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return f"bad value in host.json (or an AzureFunctionsJobHost__ override): {exc}"
    by_field = {field: name for name, field in SETTING_NAMES.items()}
    by_field["max_dequeue_count"] = "extensions.queues.maxDequeueCount (host.json)"
    by_field["function_timeout_seconds"] = "functionTimeout (host.json)"
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        problems.append(f"{by_field.get(field, field)}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)


@registry.once
def get_settings() -> Settings:
    return load_settings()
