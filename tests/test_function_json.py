"""Every function.json and host.json stays valid for the real Functions host (so `func start` still works)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from devhost.azurite import REPO_ROOT
from devhost.hostconfig import parse_timespan
from devhost.ncrontab import CronSchedule

APP_DIRS = [REPO_ROOT, *sorted(p for p in (REPO_ROOT / "tests" / "apps").iterdir() if (p / "host.json").exists())]
FUNCTION_JSONS = [p for app in APP_DIRS for p in sorted(app.glob("*/function.json"))]

TOP_LEVEL_KEYS = {"scriptFile", "entryPoint", "bindings", "disabled"}
COMMON = {"type", "direction", "name"}
BINDING_KEYS = {
    "httpTrigger": COMMON | {"authLevel", "methods", "route"},
    "http": COMMON,
    "queueTrigger": COMMON | {"queueName", "connection"},
    "queue": COMMON | {"queueName", "connection"},
    "timerTrigger": COMMON | {"schedule", "runOnStartup", "useMonitor"},
}
DIRECTIONS = {"httpTrigger": "in", "http": "out", "queueTrigger": "in", "queue": "out", "timerTrigger": "in"}
HTTP_METHODS = {"get", "post", "put", "delete", "head", "patch", "options", "trace"}

HOST_KEYS = {"version", "extensionBundle", "extensions", "logging", "functionTimeout"}
EXTENSION_KEYS = {
    "http": {"routePrefix"},
    "queues": {"batchSize", "newBatchThreshold", "maxPollingInterval", "visibilityTimeout", "maxDequeueCount",
               "messageEncoding"},
}
LOGGING_KEYS = {"logLevel", "applicationInsights", "fileLoggingMode", "console"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def test_the_root_app_has_functions():
    assert any(p.parent.parent == REPO_ROOT for p in FUNCTION_JSONS)


@pytest.mark.parametrize("path", FUNCTION_JSONS, ids=rel)
def test_function_json_is_valid_for_the_real_host(path: Path):
    config = json.loads(path.read_text())
    assert set(config) <= TOP_LEVEL_KEYS, set(config) - TOP_LEVEL_KEYS
    bindings = config["bindings"]
    triggers = [b for b in bindings if b["type"].endswith("Trigger")]
    assert len(triggers) == 1, "exactly one trigger"
    names = [b["name"] for b in bindings]
    assert len(names) == len(set(names)), "binding names are unique"
    for b in bindings:
        kind = b["type"]
        assert kind in BINDING_KEYS, f"unknown binding type {kind}"
        assert set(b) <= BINDING_KEYS[kind], set(b) - BINDING_KEYS[kind]
        assert b["direction"] == DIRECTIONS[kind]
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*|\$return", b["name"]), b["name"]
        if b["name"] == "$return":
            assert kind == "http" and b["direction"] == "out", "$return only for the http output"
        if kind == "httpTrigger":
            assert b.get("authLevel", "function") in {"anonymous", "function", "admin"}
            assert set(m.lower() for m in b.get("methods", [])) <= HTTP_METHODS
            assert not str(b.get("route", "")).startswith("/")
        if kind == "queueTrigger":
            assert re.fullmatch(r"%[A-Za-z0-9_]+%|[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", b["queueName"])
        if kind == "timerTrigger":
            assert isinstance(b.get("runOnStartup", False), bool) and isinstance(b.get("useMonitor", True), bool)
            if not b["schedule"].startswith("%"):
                if ":" in b["schedule"] and " " not in b["schedule"]:
                    parse_timespan(b["schedule"])
                else:
                    assert len(b["schedule"].split()) == 6, "six-field NCRONTAB (seconds first)"
                    CronSchedule.parse(b["schedule"])
    if any(b["type"] == "httpTrigger" for b in bindings):
        assert any(b["type"] == "http" for b in bindings), "an HTTP trigger needs its http output"


@pytest.mark.parametrize("path", FUNCTION_JSONS, ids=rel)
def test_binding_names_match_the_entry_point_parameters(path: Path):
    config = json.loads(path.read_text())
    script = path.parent / config.get("scriptFile", "__init__.py")
    entry = config.get("entryPoint", "main")
    tree = ast.parse(script.read_text())
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry]
    assert defs, f"{script.name} defines no top-level {entry}()"
    params = {a.arg for a in defs[0].args.args + defs[0].args.kwonlyargs}
    names = {b["name"] for b in config["bindings"] if b["name"] != "$return"}
    trigger = next(b["name"] for b in config["bindings"] if b["type"].endswith("Trigger"))
    assert trigger in params
    # The worker refuses parameters missing on either side; `context` is the one extra it supplies.
    assert params - {"context"} == names


@pytest.mark.parametrize("app", APP_DIRS, ids=rel)
def test_host_json_uses_keys_the_real_host_knows(app: Path):
    config = json.loads((app / "host.json").read_text())
    assert set(config) <= HOST_KEYS, set(config) - HOST_KEYS
    assert config["version"] == "2.0"
    if "extensionBundle" in config:
        bundle = config["extensionBundle"]
        assert set(bundle) == {"id", "version"}
        assert bundle["id"] == "Microsoft.Azure.Functions.ExtensionBundle"
        assert re.fullmatch(r"[\[(][\d.*]+,\s*[\d.]*[\])]", bundle["version"])
    for name, values in config.get("extensions", {}).items():
        assert name in EXTENSION_KEYS, f"unknown extension {name}"
        assert set(values) <= EXTENSION_KEYS[name], set(values) - EXTENSION_KEYS[name]
    queues = config.get("extensions", {}).get("queues", {})
    if "batchSize" in queues:
        assert 1 <= queues["batchSize"] <= 32
    for key in ("maxPollingInterval", "visibilityTimeout"):
        if key in queues:
            assert isinstance(queues[key], str) and parse_timespan(queues[key]) >= 0
    if "messageEncoding" in queues:
        assert queues["messageEncoding"] in {"base64", "none"}
    assert set(config.get("logging", {})) <= LOGGING_KEYS
    if "functionTimeout" in config:
        assert 0 < parse_timespan(config["functionTimeout"]) <= 10 * 60 or config["functionTimeout"] == "-1"


def test_the_deploy_guides_zip_takes_every_function_folder(tmp_path: Path) -> None:
    """docs/deploy.md's CLI deploy builds its zip with git archive: every function folder of the app must be in it
    (a hand-kept list once left openapi_http out)."""
    import subprocess
    import zipfile

    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    command = re.search(r"^(git archive .*?)\n(?!\s)", guide, re.S | re.M)
    assert command, "the guide's git archive command"
    line = command.group(1).replace("\\\n", " ").replace("/tmp/lab-intake.zip", str(tmp_path / "app.zip"))
    subprocess.run(line, shell=True, cwd=REPO_ROOT, check=True, capture_output=True)
    names = zipfile.ZipFile(tmp_path / "app.zip").namelist()
    folders = {p.parent.name for p in REPO_ROOT.glob("*/function.json")}
    assert folders and all(f"{folder}/function.json" in names for folder in folders), sorted(folders)
    assert "host.json" in names and "shared/api.py" in names and not any(n.startswith("tests/") for n in names)


def test_sampling_never_drops_exceptions_or_the_apps_traces() -> None:
    """Application Insights' adaptive sampling may drop any telemetry type it is not told to keep: exceptions and the
    app's traces (the poison and given-up lines operators alert on) are kept whole."""
    config = json.loads((REPO_ROOT / "host.json").read_text())
    sampling = config["logging"]["applicationInsights"]["samplingSettings"]
    assert {"Exception", "Trace"} <= set(sampling["excludedTypes"].split(";"))
