"""Runtime settings: sources and their priority, validation, and a password that never shows."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest

from cluster_risk.errors import ConfigError
from cluster_risk.observability import JsonFormatter
from cluster_risk.settings import RedisUrl, RuntimeSettings, load_settings, mask_secrets, mask_url

SECRET = "s3cr3t-Pa55"
URL = f"redis://risk:{SECRET}@redis.internal:6380/2"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests below set what they need; nothing leaks in from the machine."""
    for name in list(os.environ):
        if name.upper().startswith("CLUSTER_RISK_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = RuntimeSettings()
    assert s.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert s.metrics_port is None
    assert (s.num_shards, s.tick_ms, s.batch_size, s.fail_open, s.log_level) == (16, 100, 1000, False, "INFO")
    host, _, pid = s.worker_id.rpartition("-")
    assert host and pid.isdigit()


def test_environment_prefixed_and_plain_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://plain:6379/0")
    monkeypatch.setenv("CLUSTER_RISK_METRICS_PORT", "9100")
    monkeypatch.setenv("CLUSTER_RISK_WORKER_ID", "w-1")
    monkeypatch.setenv("CLUSTER_RISK_FAIL_OPEN", "true")
    s = RuntimeSettings()
    assert (s.redis_url.get_secret_value(), s.metrics_port, s.worker_id, s.fail_open) == (
        "redis://plain:6379/0",
        9100,
        "w-1",
        True,
    )
    monkeypatch.setenv("CLUSTER_RISK_REDIS_URL", "redis://prefixed:6379/0")
    assert RuntimeSettings().redis_url.get_secret_value() == "redis://prefixed:6379/0"  # the specific name wins


def test_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTER_RISK_METRICS_PORT", "")
    assert RuntimeSettings().metrics_port is None


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".json"])
def test_file_below_environment_below_arguments(suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"redis_url": "redis://from-file:6379/0", "num_shards": 8, "tick_ms": 7}
    path = tmp_path / f"settings{suffix}"
    if suffix == ".toml":
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()), encoding="utf-8")
    else:  # JSON is valid YAML
        path.write_text(json.dumps(values), encoding="utf-8")
    monkeypatch.setenv("CLUSTER_RISK_SETTINGS_FILE", str(path))
    monkeypatch.setenv("CLUSTER_RISK_TICK_MS", "50")
    s = load_settings(num_shards=None, batch_size=10)  # None: a CLI flag that was not given
    assert (s.redis_url.get_secret_value(), s.num_shards, s.tick_ms, s.batch_size) == (
        "redis://from-file:6379/0",
        8,
        50,
        10,
    )
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")
    assert load_settings().redis_url.get_secret_value() == "redis://from-env:6379/0"


def test_file_refuses_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"redis_ulr": "redis://x"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="redis_ulr: Extra inputs are not permitted"):
        load_settings(settings_file=path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings"):
        load_settings(settings_file=tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("redis_url", "http://x:6379", "redis_url: must be a URL with scheme redis://"),
        ("metrics_port", 0, "metrics_port: Input should be greater than or equal to 1"),
        ("num_shards", 0, "num_shards: Input should be greater than or equal to 1"),
        ("worker_id", "a b", "worker_id: String should match pattern"),
        ("log_level", "LOUD", "log_level: Input should be"),
    ],
)
def test_invalid_values_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(**{field: value})


def test_frozen() -> None:
    s = RuntimeSettings()
    with pytest.raises(ValueError, match="frozen"):
        s.tick_ms = 5


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (URL, "redis://risk:***@redis.internal:6380/2"),
        (f"rediss://:{SECRET}@h:6379/0?ssl_ca_certs=/ca.pem", "rediss://:***@h:6379/0?ssl_ca_certs=/ca.pem"),
        (f"redis://h:6379/0?password={SECRET}&db=1", "redis://h:6379/0?password=***&db=1"),
        (f"redis+sentinel://:{SECRET}@s1:26379,s2:26379/mymaster", "redis+sentinel://:***@s1:26379,s2:26379/mymaster"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://user@h:6379/0", "redis://user@h:6379/0"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_secrets(f"cannot connect to {url}: refused") == f"cannot connect to {masked}: refused"


def test_secret_never_in_repr_str_or_dump() -> None:
    s = RuntimeSettings(redis_url=URL)
    assert s.redis_url.get_secret_value() == URL
    shown = [repr(s), str(s), repr(s.redis_url), str(s.redis_url), f"{s.redis_url}", s.model_dump_json()]
    shown += [json.dumps(s.redacted()), str(s.model_dump()), str(s.model_dump(mode="json"))]
    for text in shown:
        assert SECRET not in text
    assert "redis://risk:***@redis.internal:6380/2" in repr(s)
    assert s.redacted()["redis_url"] == "redis://risk:***@redis.internal:6380/2"


def test_secret_never_in_validation_errors() -> None:
    bad = f"http://risk:{SECRET}@h:6379/0"
    with pytest.raises(ConfigError) as caught:
        load_settings(redis_url=bad)
    assert SECRET not in str(caught.value)
    with pytest.raises(ValueError) as raw:  # the pydantic error of a direct construction
        RuntimeSettings(redis_url=bad, metrics_port=f"{SECRET}")
    assert SECRET not in str(raw.value)


def test_secret_never_in_log_output() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"worker": "w1"}))
    log = logging.getLogger("test.settings.secrets")
    log.addHandler(handler)
    log.propagate = False
    try:
        s = RuntimeSettings(redis_url=URL)
        log.warning("starting with %s", s)
        log.warning("settings", extra={"settings": s.redacted(), "url": s.redis_url})
        try:
            raise ConnectionError(f"Error connecting to {URL}")  # a driver quoting the URL
        except ConnectionError:
            log.exception("redis down")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("\n") == 3
    assert SECRET not in text
    assert "redis://risk:***@redis.internal:6380/2" in text


def test_redis_url_value_semantics() -> None:
    assert RedisUrl(URL) == RedisUrl(URL)
    assert len({RedisUrl(URL), RedisUrl(URL)}) == 1
    assert RuntimeSettings(redis_url=RedisUrl(URL)).redis_url == RedisUrl(URL)
    with pytest.raises(ValueError, match="must be a URL with scheme"):
        RedisUrl("localhost:6379")


# Shapes of a hostile 5 MB id (or a log line quoting one) that made the old URL pattern scan
# the rest of the text from each position: quadratic, minutes of CPU for one line.
HOSTILE_UNITS = ["a", "a://", "a://b:", "a://b:c/", "://:", "a:/", "password=", "p" * 99 + "://u:", "a://b:c:/"]


@pytest.mark.parametrize("unit", HOSTILE_UNITS)
def test_mask_secrets_is_linear_in_the_text(unit: str) -> None:
    text = unit * (5_000_000 // len(unit))
    started = time.perf_counter()
    mask_secrets(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f} s to mask 5 MB of {unit!r}"


def test_mask_secrets_many_credentials_in_one_text() -> None:
    text = " ".join(f"redis://u{i}:{SECRET}@h{i}:6379/0?password={SECRET}" for i in range(20_000))
    started = time.perf_counter()
    masked = mask_secrets(text)
    assert time.perf_counter() - started < 1.0
    assert SECRET not in masked and masked.count("***") == 40_000


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"a {URL} b", "a redis://risk:***@redis.internal:6380/2 b"),
        (f"1://u:{SECRET}@h", "1://u:***@h"),  # any scheme-like word: masking more is safe
        (f"x{URL}", "xredis://risk:***@redis.internal:6380/2"),
        (f"redis://u:{SECRET}/x@h", "redis://u:***@h"),  # a raw "/" in a password
        (f"{URL}\n{URL}", "redis://risk:***@redis.internal:6380/2\nredis://risk:***@redis.internal:6380/2"),
        (f"redis://h:6379/0 and user:{SECRET}@x", f"redis://h:6379/0 and user:{SECRET}@x"),  # not a URL's
        (f"PASSWORD={SECRET},next", "PASSWORD=***,next"),
        (f"'password={SECRET}'", "'password=***'"),
    ],
)
def test_mask_secrets_in_free_text(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked
