"""The app's settings: read once from the environment (and host.json), validated, with errors naming the setting."""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError, field_validator

APP_ROOT = Path(__file__).resolve().parent.parent

# Azurite's published development account: what `UseDevelopmentStorage=true` stands for. The Python storage SDKs
# do not understand that shorthand, so it is expanded here.
DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

# Environment variable -> field name. One place, so error messages can name the setting the operator sets.
SETTING_NAMES = {
    "AzureWebJobsStorage": "storage_connection",
    "MAX_REPORT_BYTES": "max_report_bytes",
    "DELIVERY_URL": "delivery_url",
    "DELIVERY_TIMEOUT_SECONDS": "delivery_timeout_seconds",
    "PUBLIC_BASE_URL": "public_base_url",
    "RECONCILE_AFTER_SECONDS": "reconcile_after_seconds",
    "RETRY_AFTER_SECONDS": "retry_after_seconds",
    "AUTH_CACHE_SECONDS": "auth_cache_seconds",
}


class SettingsError(RuntimeError):
    """A setting is missing or has a bad value; the message names it."""


class Settings(BaseModel):
    storage_connection: str
    max_report_bytes: int = Field(default=50_000_000, gt=0)
    delivery_url: str | None = None
    delivery_timeout_seconds: float = Field(default=10.0, gt=0)
    public_base_url: str | None = None
    # A `received` row older than this is taken to be an ingest that crashed before enqueueing.
    reconcile_after_seconds: int = Field(default=60, ge=0)
    retry_after_seconds: int = Field(default=1, ge=1)
    # How long an accepted API key is trusted without a table read; a revoked key works at most this much longer.
    auth_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    max_dequeue_count: int = Field(default=5, ge=1)

    @field_validator("storage_connection")
    @classmethod
    def _expand_development_storage(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("is empty")
        if value.lower().replace(" ", "") in ("usedevelopmentstorage=true", "usedevelopmentstorage=true;"):
            return DEVELOPMENT_STORAGE
        return value

    @field_validator("delivery_url", "public_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


def _host_json_max_dequeue_count(env: dict[str, str]) -> int | None:
    """maxDequeueCount as the host sees it: an AzureFunctionsJobHost__ override, else host.json, else None."""
    for key, value in env.items():
        if key.lower() == "azurefunctionsjobhost__extensions__queues__maxdequeuecount":
            return int(value)
    try:
        host = json.loads((APP_ROOT / "host.json").read_text())
    except (OSError, ValueError):
        return None
    value = host.get("extensions", {}).get("queues", {}).get("maxDequeueCount")
    return int(value) if value is not None else None


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    values: dict[str, object] = {}
    for name, field_name in SETTING_NAMES.items():
        if env.get(name, "") != "":
            values[field_name] = env[name]
    try:
        max_dequeue = _host_json_max_dequeue_count(env)
        if max_dequeue is not None:
            values["max_dequeue_count"] = max_dequeue
        return Settings(**values)
    except ValueError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return f"bad value for AzureFunctionsJobHost__extensions__queues__maxDequeueCount: {exc}"
    by_field = {field: name for name, field in SETTING_NAMES.items()}
    by_field["max_dequeue_count"] = "extensions.queues.maxDequeueCount (host.json)"
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        problems.append(f"{by_field.get(field, field)}: {error['msg']}")
    return "invalid settings: " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
