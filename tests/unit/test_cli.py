"""`cluster-risk replay`: JSON Lines out, bad lines dead-lettered with their line number,
stdin, and exit 2 with one line on stderr when the config or the file is unusable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
