"""devhost HTTP trigger: routing, parameters, methods, headers, query, responses, errors, prefix, disabling."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devhost.process import DevHostProcess
from tests.apps.support import APPS, serving

BASIC = APPS / "basic"


@pytest.fixture(scope="module")
def basic(azurite) -> Iterator[DevHostProcess]:
    """One devhost serving the basic app for the read-only HTTP checks of this module."""
    yield from serving(BASIC, {
        "AzureWebJobsStorage": azurite.connection_string,
        "AzureWebJobs.disabled_dot.Disabled": "true",
        "AzureWebJobs_disabled_underscore_Disabled": "1",
    })


@pytest.fixture(scope="module")
def client(basic: DevHostProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=basic.url, timeout=30) as c:
        yield c


def test_status_endpoint_reports_running(client):
    r = client.get("/admin/host/status")
    assert r.status_code == 200 and r.json()["state"] == "Running"


def test_route_params_headers_query_and_url(client, basic):
    r = client.get("/api/echo/alice?b=2&a=1&a=3", headers={"X-Mixed-Case": "Value"})
    assert r.status_code == 200
    seen = r.json()
    assert seen["method"] == "GET"
    assert seen["route_params"] == {"name": "alice"}
    assert seen["params"] == {"a": "1,3", "b": "2"}  # repeated names are comma-joined, as the host does
    assert seen["headers"]["x-mixed-case"] == "Value"
    assert all(k == k.lower() for k in seen["headers"])
    assert seen["url"] == f"{basic.url}/api/echo/alice?b=2&a=1&a=3"


def test_optional_route_param(client):
    assert client.get("/api/echo/alice/extra").json()["route_params"] == {"name": "alice", "tail": "extra"}
    assert client.get("/api/echo/alice").json()["route_params"] == {"name": "alice"}


def test_post_body_reaches_function(client):
    r = client.post("/api/echo/bob", content=b"\x00\x01binary\xff")
    assert r.json()["body_len"] == 9
    assert r.json()["body_sha256"] == hashlib.sha256(b"\x00\x01binary\xff").hexdigest()


def test_100_mb_body(client):
    body = bytes(range(256)) * (100 * 1024 * 1024 // 256)
    r = client.post("/api/echo/big", content=body)
    assert r.status_code == 200
    assert r.json()["body_len"] == len(body)
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_wrong_method_is_405_and_unknown_route_404(client):
    assert client.delete("/api/echo/alice").status_code == 405
    assert client.get("/api/nowhere").status_code == 404
    assert client.get("/echo/alice").status_code == 404  # the prefix is required


def test_int_constraint_async_function_and_literal_precedence(client):
    assert client.get("/api/items/42").json() == {"fn": "item_by_id", "id": "42"}
    assert client.get("/api/items/latest").json() == {"fn": "item_latest"}
    assert client.get("/api/items/abc").status_code == 404


def test_default_route_is_function_name_and_all_methods(client):
    assert client.get("/api/default_route").text == "default GET"
    assert client.put("/api/default_route").text == "default PUT"
    assert client.get("/api/default_route").headers["content-type"] == "text/plain; charset=utf-8"


def test_response_status_headers_mimetype_charset(client):
    r = client.get("/api/custom")
    assert r.status_code == 201
    assert r.headers["x-custom"] == "yes" and r.headers["location"] == "/api/x/1"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.content == "créé".encode()


def test_function_logging_goes_to_the_console(client, basic):
    assert client.get("/api/custom").status_code == 201
    assert "custom function logging reaches the console" in basic.logs()


def test_context_parameter_and_named_http_output(client):
    r = client.get("/api/context")
    assert r.status_code == 202
    assert r.json()["function_name"] == "with_context"
    assert re.fullmatch(r"[0-9a-f-]{36}", r.json()["invocation_id"])


def test_app_root_importable_and_custom_script_file_entry_point(client):
    assert client.get("/api/shared").text == "hello from basic_lib"
    assert client.get("/api/entry").text == "custom entry point"


def test_unhandled_exception_is_500_without_details_and_logged(client, basic):
    r = client.get("/api/boom")
    assert r.status_code == 500
    assert "secret-internal-detail" not in r.text and "Traceback" not in r.text
    log = basic.logs()
    assert "secret-internal-detail" in log and "Traceback (most recent call last)" in log
    assert re.search(r"Executed 'Functions\.boom' \(Failed, Id=[0-9a-f-]{36}, Duration=\d+ms\)", log)


def test_disabled_http_functions_are_404_both_spellings(client):
    assert client.get("/api/disabled-dot").status_code == 404
    assert client.get("/api/disabled-underscore").status_code == 404


def test_broken_function_is_reported_and_others_run(client, basic):
    assert client.get("/api/broken").status_code == 404
    assert "The 'broken_import' function is in error" in basic.logs()
    assert client.get("/api/echo/still-fine").status_code == 200


def test_startup_listing_and_invocation_log_lines(client, basic):
    r = client.get("/api/echo/logged")
    assert r.status_code == 200
    log = basic.logs()
    assert f"echo: [GET,POST] http://localhost:{basic.port}/api/echo/{{name}}/{{tail?}}" in log
    assert f"item_by_id: [GET] http://localhost:{basic.port}/api/items/{{id:int}}" in log
    ids = re.findall(r"Executing 'Functions\.echo' \(Reason='[^']+', Id=([0-9a-f-]{36})\)", log)
    assert ids
    assert re.search(rf"Executed 'Functions\.echo' \(Succeeded, Id={ids[-1]}, Duration=\d+ms\)", log)


def test_route_prefix_override_from_setting(start_devhost, storage):
    # Mixed-case path: keys of AzureFunctionsJobHost__ overrides match host.json case-insensitively.
    host = start_devhost(BASIC, env={"AzureWebJobsStorage": storage,
                                     "AzureFunctionsJobHost__Extensions__Http__RoutePrefix": "v1"})
    assert httpx.get(f"{host.url}/v1/items/7").json()["id"] == "7"
    assert httpx.get(f"{host.url}/api/items/7").status_code == 404


def test_empty_route_prefix_from_host_json(start_devhost, storage):
    host = start_devhost(APPS / "prefix", env={"AzureWebJobsStorage": storage})
    assert httpx.get(f"{host.url}/hello").text == "hello"
    assert httpx.get(f"{host.url}/api/hello").status_code == 404


def test_local_settings_json_is_read_and_environment_wins(start_devhost, storage, tmp_path: Path):
    app = tmp_path / "app"
    shutil.copytree(BASIC, app, ignore=shutil.ignore_patterns("__pycache__"))
    (app / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": {
        "FROM_FILE": "file-value", "BOTH": "file-value", "AzureWebJobs.echo.Disabled": "true",
        "FUNCTIONS_WORKER_RUNTIME": "python"}}))
    host = start_devhost(app, env={"AzureWebJobsStorage": storage, "BOTH": "env-value"})
    get = lambda name: httpx.get(f"{host.url}/api/settings/{name}").json()["value"]  # noqa: E731
    assert get("FROM_FILE") == "file-value"
    assert get("BOTH") == "env-value"
    assert get("AZURE_FUNCTIONS_ENVIRONMENT") == "Development"  # as Core Tools sets it
    assert httpx.get(f"{host.url}/api/echo/x").status_code == 404  # disabled from local.settings.json
