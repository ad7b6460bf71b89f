"""host.json overrides, TimeSpan parsing, queue option defaults, settings and disabled flags (no Azurite)."""

import json

import pytest

from devhost.azurite import DEFAULT_PORTS, connection_string
from devhost.hostconfig import QueueOptions, apply_overrides, get_ci, parse_timespan, route_prefix
from devhost.queues import Backoff, decode_body
from devhost.settings import SettingError, Settings, expand_connection_string


@pytest.mark.parametrize("text,seconds", [
    ("00:00:01", 1), ("00:01:00", 60), ("01:00:00", 3600), ("00:00:00.100", 0.1), ("00:00:02.5", 2.5),
    ("1.02:00:00", 93600), ("00:10", 600), ("2", 172800),
])
def test_parse_timespan(text, seconds):
    assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "1:2:3:4", "00:61:00", ""])
def test_parse_timespan_rejects(text):
    with pytest.raises(ValueError):
        parse_timespan(text)


def test_overrides_match_keys_case_insensitively_and_create_missing_ones():
    config = {"version": "2.0", "extensions": {"queues": {"maxDequeueCount": 5}}}
    settings = Settings({
        "AzureFunctionsJobHost__Extensions__Queues__MAXDEQUEUECOUNT": "3",
        "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
        "AzureFunctionsJobHost:extensions:http:routePrefix": "v1",
        "Unrelated__extensions__queues__batchSize": "1",
    })
    apply_overrides(config, settings)
    assert config["extensions"]["queues"] == {"maxDequeueCount": "3", "visibilityTimeout": "00:00:01"}
    assert route_prefix(config) == "v1"
    opts = QueueOptions.from_config(config, development=True)
    assert (opts.max_dequeue_count, opts.visibility_timeout, opts.batch_size) == (3, 1.0, 16)


def test_queue_defaults_follow_the_extension():
    dev = QueueOptions.from_config({}, development=True, cpu_count=4)
    assert (dev.batch_size, dev.max_dequeue_count, dev.visibility_timeout, dev.message_encoding) == (16, 5, 0, "base64")
    assert dev.new_batch_threshold == 16 // 2 * 4  # batchSize/2 × CPU count
    assert dev.max_polling_interval == 2  # Development
    assert QueueOptions.from_config({}, development=False).max_polling_interval == 60
    given = QueueOptions.from_config({"extensions": {"queues": {"batchSize": 10, "newBatchThreshold": 3}}}, True, 8)
    assert (given.batch_size, given.new_batch_threshold) == (10, 3)
    assert QueueOptions.from_config({"extensions": {"queues": {"batchSize": 10}}}, True, 2).new_batch_threshold == 10


@pytest.mark.parametrize("queues", [{"batchSize": 0}, {"batchSize": 33}, {"maxPollingInterval": "00:00:00.050"},
                                    {"maxDequeueCount": 0}, {"messageEncoding": "utf8"}])
def test_queue_options_out_of_range(queues):
    with pytest.raises(ValueError):
        QueueOptions.from_config({"extensions": {"queues": queues}}, development=True)


def test_route_prefix_default_and_empty():
    assert route_prefix({}) == "api"
    assert route_prefix({"extensions": {"http": {"routePrefix": ""}}}) == ""
    assert get_ci({"A": {"b": 1}}, "a", "B") == 1


def test_local_settings_values_with_environment_winning(tmp_path):
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": {
        "FROM_FILE": "file", "BOTH": "file", "NUMBER": 5}}))
    settings = Settings.load(tmp_path, environ={"BOTH": "env"})
    assert (settings.get("FROM_FILE"), settings.get("BOTH"), settings.get("NUMBER")) == ("file", "env", "5")
    assert settings.get("both") == "env"  # configuration keys are case-insensitive


@pytest.mark.parametrize("values,disabled", [
    ({"AzureWebJobs.fn.Disabled": "true"}, True),
    ({"AzureWebJobs_fn_Disabled": "1"}, True),
    ({"azurewebjobs.FN.disabled": "TRUE"}, True),
    ({"AzureWebJobs.fn.Disabled": "false"}, False),
    ({"AzureWebJobs.fn.Disabled": "0"}, False),
    ({"AzureWebJobs.other.Disabled": "true"}, False),
])
def test_disabled_settings(values, disabled):
    assert Settings(values).is_disabled("fn") is disabled


def test_setting_expressions():
    settings = Settings({"QUEUE": "reports"})
    assert settings.resolve("%QUEUE%") == "reports"
    assert settings.resolve("%QUEUE%-archive") == "reports-archive"
    with pytest.raises(SettingError):
        settings.resolve("%MISSING%")


def test_use_development_storage_is_expanded():
    assert expand_connection_string("UseDevelopmentStorage=true") == connection_string(*DEFAULT_PORTS)
    other = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=b"
    assert expand_connection_string(other) == other
    connection = Settings({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}).storage_connection(None)
    assert connection.connection_string.startswith("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1")
    with pytest.raises(SettingError):
        Settings({}).storage_connection("MyConn")


def test_polling_backoff_sequence():
    # Jitter pinned to 1.0: min, min+Δ, min+2Δ, min+4Δ … then the cap, and back to min once a message is found.
    b = Backoff(0.1, 2.0, jitter=lambda lo, hi: 1.0)
    seq = [round(b.next(False), 3) for _ in range(8)]
    assert seq == [0.1, 0.2, 0.3, 0.5, 0.9, 1.7, 2.0, 2.0]
    assert b.next(True) == 0.1
    assert round(b.next(False), 3) == 0.2


def test_polling_backoff_jitter_stays_within_20_percent():
    for _ in range(50):
        b = Backoff(0.1, 60.0)
        delays = [b.next(False) for _ in range(6)]
        assert delays[0] == 0.1
        assert 0.1 + 0.8 * 1.6 <= delays[5] <= 0.1 + 1.2 * 1.6


def test_decode_body():
    assert decode_body("aGVsbG8=", "base64") == b"hello"
    assert decode_body("aGVs\r\nbG8=", "base64") == b"hello"  # .NET ignores white space
    assert decode_body("not base64!", "base64") is None
    assert decode_body("aGVsbG8", "base64") is None  # missing padding is invalid for .NET too
    assert decode_body("plain text", "none") == b"plain text"
