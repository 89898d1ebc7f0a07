"""`cluster-risk replay`: JSON Lines out, bad lines dead-lettered with their line number,
stdin, and exit 2 with one line on stderr when the config or the file is unusable."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_risk import __version__
from cluster_risk.cli import build_parser
from cluster_risk.cli.common import apply_runtime_settings
from tests.helpers import T0, views

CONFIG = {
    "rules": [{"type": "OrderRateLimitRule", "threshold": 1}, {"type": "AccountVolumeLimitRule", "daily_cap": 10}]
}


def order_line(oid: int, t: int, volume: int = 1) -> str:
    return json.dumps(
        {
            "type": "order",
            "oid": oid,
            "account_id": "A",
            "contract_id": "C1",
            "direction": "BID",
            "price": 1.5,
            "volume": volume,
            "timestamp": t,
        }
    )


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cluster_risk.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def records(proc: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.decode().splitlines()]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "risk.json"
    path.write_text(json.dumps(CONFIG), encoding="utf-8")
    return path


STREAM = "\n".join(
    [
        order_line(1, T0),  # 0
        "",  # 1: blank, still counted
        "{not json",  # 2
        order_line(2, T0 + 1, volume=0),  # 3
        json.dumps({"type": "cancel", "oid": 1}),  # 4
        json.dumps({"type": "trade", "tid": 1, "oid": 99, "price": 1.0, "volume": 1, "timestamp": T0 + 2}),  # 5
        order_line(3, T0 + 3),  # 6: the second order in the window
        "   ",  # 7
        json.dumps([1, 2]),  # 8
    ]
)
EXPECTED = [
    {"error": "invalid_json", "field": "", "index": 2},
    {"error": "invalid_field", "field": "volume", "index": 3},
    {"error": "unknown_type", "field": "type", "index": 4},
    {"error": "unknown_order", "field": "oid", "index": 5},
    {
        "type": "PAUSE_ORDER",
        "rule": "OrderRateLimitRule",
        "scope": {"account": "A"},
        "timestamp": T0 + 3,
        "value": 2,
        "limit": 1,
    },
    {"error": "invalid_json", "field": "", "index": 8},
]


def test_replay_file(config: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(STREAM + "\n", encoding="utf-8")
    proc = run("replay", "--config", str(config), str(events))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    out = records(proc)
    assert views(out) == EXPECTED
    # One compact JSON object per line; errors carry a reason besides the compared keys.
    assert proc.stdout.decode().splitlines()[0].startswith('{"error":"invalid_json","field":"","index":2')
    assert all(set(r) >= {"error", "field", "index"} for r in out if "error" in r)


def test_replay_stdin(config: Path) -> None:
    proc = run("replay", "--config", str(config), "-", stdin=STREAM.encode())  # no final newline
    assert proc.returncode == 0, proc.stderr
    assert views(records(proc)) == EXPECTED


def test_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "risk.yaml"
    path.write_text("rules:\n  - {type: OrderRateLimitRule, threshold: 1}\n", encoding="utf-8")
    proc = run("replay", "--config", str(path), "-", stdin=f"{order_line(1, T0)}\n{order_line(2, T0 + 1)}\n".encode())
    assert proc.returncode == 0
    assert [r["type"] for r in records(proc)] == ["PAUSE_ORDER"]


def one_line_failure(proc: subprocess.CompletedProcess[bytes], *fragments: str) -> None:
    assert proc.returncode == 2
    assert proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_config_file(tmp_path: Path) -> None:
    proc = run("replay", "--config", str(tmp_path / "absent.json"), "-", stdin=b"")
    one_line_failure(proc, "absent.json")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            json.dumps({"rules": [CONFIG["rules"][0], {"type": "AccountVolumeLimitRule", "daily_cap": 0}]}),
            "rules[1].daily_cap",
        ),
        (json.dumps({"rules": [{"type": "Nope"}]}), "rules[0].type"),
        ("{", "risk.json"),
    ],
    ids=["bad-value", "unknown-rule", "not-json"],
)
def test_bad_config(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "risk.json"
    path.write_text(text, encoding="utf-8")
    one_line_failure(run("replay", "--config", str(path), "-", stdin=b""), fragment)


def test_missing_events_file(config: Path, tmp_path: Path) -> None:
    one_line_failure(run("replay", "--config", str(config), str(tmp_path / "absent.jsonl")), "absent.jsonl")


def test_a_line_of_bad_bytes_is_dead_lettered_and_the_replay_goes_on(config: Path, tmp_path: Path) -> None:
    # A line that is not UTF-8 is not a JSON object: invalid_json at its index, then carry on.
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        f"{order_line(1, T0)}\n".encode() + b"\xff\xfe\x00garbage\n" + f"{order_line(2, T0 + 1)}\n".encode()
    )
    proc = run("replay", "--config", str(config), str(events))
    assert proc.returncode == 0, proc.stderr
    assert [r.get("error") or r["type"] for r in records(proc)] == ["invalid_json", "PAUSE_ORDER"]
    assert records(proc)[0]["index"] == 1


def test_usage_errors_exit_2() -> None:
    assert run("replay").returncode == 2
    assert run("no-such-command").returncode == 2


# ---------------------------------------------------------------------- operator paper cuts

SECRET = "s3cr3t-Pa55"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the machine (the CLI reads REDIS_URL and CLUSTER_RISK_*)."""
    for name in list(os.environ):
        if name.upper().startswith("CLUSTER_RISK_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_option_has_help_with_its_default() -> None:
    parser = build_parser()
    walked = 0
    for prog, sub in _parsers(parser):
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            walked += 1
            name = action.option_strings[-1] if action.option_strings else action.dest
            assert action.help and action.help != argparse.SUPPRESS, f"{prog} {name}: no help"
            if not action.option_strings or action.required:
                continue  # positionals and required options have no default
            text = formatter._expand_help(action)
            assert "default" in text, f"{prog} {name}: help does not say its default: {text!r}"
            if action.default not in (None, False, argparse.SUPPRESS):
                assert str(action.default) in text, f"{prog} {name}: default {action.default!r} not in {text!r}"
    assert walked > 60  # every command was walked


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.decode().strip() == f"cluster-risk {__version__}"


@pytest.mark.parametrize("url", ["127.0.0.1:6379", "http://127.0.0.1:6379/0", f"redis://h:port/0?password={SECRET}"])
@pytest.mark.parametrize(
    "command",
    [["status"], ["worker", "--config", "CONFIG"], ["pause", "--account", "A", "--reason", "r"], ["replay"]],
    ids=lambda c: c[0],
)
def test_a_malformed_redis_url_is_one_line_and_exit_2(command: list[str], url: str, config: Path) -> None:
    args = [str(config) if arg == "CONFIG" else arg for arg in [*command, "--redis-url", url]]
    if command == ["replay"]:
        args += ["--config", str(config), str(config)]
    done = run(*args)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("cluster-risk: ") and "--redis-url" in err, err
    assert SECRET not in err and "Traceback" not in err


@pytest.mark.parametrize("command", [["status"], ["replay"]], ids=lambda c: c[0])
@pytest.mark.parametrize("url", [f"redis://127.0.0.1:1/0?password={SECRET}", f"redis://u:{SECRET}@127.0.0.1:1/0"])
def test_no_password_in_a_connection_error(command: list[str], url: str, config: Path) -> None:
    args = [*command, "--redis-url", url]
    if command == ["replay"]:
        args += ["--config", str(config), str(config)]
    done = run(*args)  # port 1: connection refused
    err = done.stderr.decode()
    assert done.returncode == 2 and "cannot connect" in err and "***" in err, err
    assert SECRET not in err + done.stdout.decode()


def test_the_redis_url_has_no_silent_default(clean_env: None) -> None:
    done = run("status")
    assert done.returncode == 2
    assert "--redis-url is required (or REDIS_URL" in done.stderr.decode()


def test_settings_precedence_flag_environment_file_default(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "settings.toml"
    file.write_text(
        'redis_url = "redis://from-file:6379/0"\nnum_shards = 8\nbatch_size = 11\ntick_ms = 12\n'
        'metrics_port = 9200\nmetrics_host = "0.0.0.0"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("CLUSTER_RISK_SETTINGS_FILE", str(file))
    monkeypatch.setenv("CLUSTER_RISK_BATCH_SIZE", "9")
    monkeypatch.setenv("CLUSTER_RISK_TICK_MS", "7")
    monkeypatch.setenv("CLUSTER_RISK_WORKER_ID", "pod-1")

    def resolved(*flags: str) -> argparse.Namespace:
        args = build_parser().parse_args(["worker", "--config", "c.json", *flags])
        apply_runtime_settings(args)
        return args

    args = resolved("--tick-ms", "0")
    got = (args.redis_url, args.shards, args.batch, args.tick_ms, args.metrics_port, args.metrics_host)
    assert got == ("redis://from-file:6379/0", 8, 9, 0, 9200, "0.0.0.0")  # file, file, env, flag, file, file
    assert (args.id, args.log_level) == ("pod-1", "INFO")  # env; the command's default
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")
    assert resolved().redis_url == "redis://from-env:6379/0"
    assert resolved("--redis-url", "redis://flag:6379/0").redis_url == "redis://flag:6379/0"
    monkeypatch.delenv("CLUSTER_RISK_SETTINGS_FILE")
    args = resolved("--settings-file", str(file))
    assert (args.shards, args.tick_ms, args.metrics_port) == (8, 7, 9200)
    monkeypatch.delenv("CLUSTER_RISK_BATCH_SIZE")
    monkeypatch.delenv("CLUSTER_RISK_TICK_MS")
    monkeypatch.delenv("CLUSTER_RISK_WORKER_ID")
    args = resolved()  # nothing but the URL from the environment: the worker's own defaults
    got = (args.shards, args.batch, args.tick_ms, args.metrics_port, args.metrics_host, args.id)
    assert got == (None, 1000, 1000, 0, "127.0.0.1", None)


def test_a_bad_setting_is_named_without_its_value(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", f"http://u:{SECRET}@h:1/0")
    done = run("status")
    err = done.stderr.decode()
    assert done.returncode == 2 and "redis_url: must be a URL with scheme" in err and SECRET not in err


def test_up_requires_a_config() -> None:
    up = subprocess.Popen([sys.executable, "-m", "cluster_risk.cli", "up", "--workers", "1"], stderr=subprocess.PIPE)
    try:
        _, err = up.communicate(timeout=60)
    finally:
        if up.poll() is None:  # it started a fleet with some config: SIGTERM stops it all
            up.terminate()
            up.communicate(timeout=60)
    assert up.returncode == 2 and "--config" in err.decode()


def test_bench_passes_every_argument_to_the_benchmark() -> None:
    """`cluster-risk bench --orders N ...` is `python -m cluster_risk.benchmark --orders N ...`
    (argparse alone refused a first argument that looks like an option)."""
    command = [sys.executable, "-m", "cluster_risk.cli", "bench", "--orders", "300", "--trades", "60"]
    out = subprocess.run(
        [*command, "--accounts", "5", "--repeat", "1", "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["workload"]["orders"] == 300
