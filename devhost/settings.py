"""App settings as the host sees them: local.settings.json `Values` merged under the environment."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

# The connection rule (connection string or identity-based `<name>__*` settings) is the app's own leaf module, so
# the host and the app read a connection the same way; it imports nothing else from the app.
from shared.connection import (
    ConnectionSettingError,
    StorageConnection,
    expand_development_storage,
    overlay,
    resolve,
)

_SETTING_EXPR = re.compile(r"%([^%]+)%")


class SettingError(ValueError):
    """A setting that a function.json or host.json refers to is missing or malformed."""


def load_local_settings(app_dir: Path) -> dict[str, str]:
    """`Values` of local.settings.json (missing file → empty); non-string values become strings as Core Tools does."""
    path = app_dir / "local.settings.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8-sig"))
    values = data.get("Values") or {}
    return {str(k): "" if v is None else (v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()}


class Settings:
    """Case-insensitive view over settings, like .NET configuration the host reads them through."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self._folded = {k.lower(): v for k, v in self._values.items()}

    @classmethod
    def load(cls, app_dir: Path, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        # Core Tools puts Values into the process environment; what is already set in the environment wins (for the
        # storage connection as a whole: an identity-based one in the environment drops the file's string).
        merged = overlay(load_local_settings(app_dir), environ)
        return cls(merged)

    def items(self) -> list[tuple[str, str]]:
        return list(self._values.items())

    def get(self, name: str, default: str | None = None) -> str | None:
        if name in self._values:
            return self._values[name]
        return self._folded.get(name.lower(), default)

    def resolve(self, text: str) -> str:
        """Replace each `%NAME%` in a binding value by that setting (the host's binding expressions)."""

        def sub(match: re.Match[str]) -> str:
            value = self.get(match.group(1))
            if value is None:
                raise SettingError(f"setting '{match.group(1)}' referenced as %{match.group(1)}% is not defined")
            return value

        return _SETTING_EXPR.sub(sub, text)

    def is_disabled(self, function_name: str) -> bool:
        """`AzureWebJobs.<Name>.Disabled` or `AzureWebJobs_<Name>_Disabled` set to true/1 (case-insensitive)."""
        for key in (f"AzureWebJobs.{function_name}.Disabled", f"AzureWebJobs_{function_name}_Disabled"):
            value = self.get(key)
            if value is not None and value.strip().lower() in ("true", "1"):
                return True
        return False

    def storage_connection(self, setting: str | None, services: tuple[str, ...] = ("queue",)) -> StorageConnection:
        """The storage connection a binding's `connection` names (default `AzureWebJobsStorage`): a connection
        string, or identity-based settings under `<name>__`."""
        name = setting or "AzureWebJobsStorage"
        # The host also looks for the `AzureWebJobs` prefixed form of a short connection name.
        candidates = [name] if name.lower().startswith("azurewebjobs") else [name, f"AzureWebJobs{name}"]
        values = dict(self._values)
        for candidate in candidates:
            folded = candidate.lower()
            if any(k.lower() == folded or k.lower().replace(":", "__").startswith(folded + "__")
                   for k, v in values.items() if v):
                try:
                    return resolve(values, candidate, services)
                except ConnectionSettingError as exc:
                    raise SettingError(f"connection '{name}': {exc}") from None
        raise SettingError(f"connection setting '{name}' is missing or empty")


# `UseDevelopmentStorage=true` → Azurite's default endpoints, by the same rule the app uses.
expand_connection_string = expand_development_storage
