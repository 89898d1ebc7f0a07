"""Every shared conformance vector (copied from ../shared/conformance/cases), three ways:
through the API, through `cluster-risk replay` as a subprocess, and in two batches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster_risk import RiskEngine, build_config
from cluster_risk.replay import replay_events
from tests.helpers import CASE_FILES, load_case, views


def fresh_engine(case: dict[str, Any]) -> RiskEngine:
    return RiskEngine.from_config(build_config(case["config"]))


def test_all_shared_vectors_are_here() -> None:
    assert [p.name for p in CASE_FILES] == [f"case-{n}.json" for n in range(1, 25)]


@pytest.fixture(params=CASE_FILES, ids=lambda p: p.stem)
def case(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_case(request.param)


def test_api_replay(case: dict[str, Any]) -> None:
    got = views(replay_events(fresh_engine(case), case["events"]))
    assert got == case["expected"]


def test_cli_replay(case: dict[str, Any], tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(case["config"]), encoding="utf-8")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(e) + "\n" for e in case["events"]), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "cluster_risk.cli", "replay", "--config", str(config), str(events)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    got = views(json.loads(line) for line in proc.stdout.splitlines())
    assert got == case["expected"]


@pytest.mark.parametrize("fraction", [1 / 3, 1 / 2])
def test_two_batches(case: dict[str, Any], fraction: float) -> None:
    """One engine fed the stream in two calls gives the same output (indices shifted back)."""
    engine = fresh_engine(case)
    events = case["events"]
    split = int(len(events) * fraction)
    first = views(replay_events(engine, events[:split]))
    second = views(replay_events(engine, events[split:]))
    for record in second:
        if "index" in record:
            record["index"] += split
    assert first + second == case["expected"]


def split_by_account(events: list[Any]) -> list[list[tuple[int, Any]]]:
    """(index, event) streams, one per account; ticks and resets go to every stream (a stream
    opened late first receives the earlier ones).  A trade goes where its order's account is."""
    owner: dict[int, str] = {}
    for e in events:
        if e.get("type") == "order" and isinstance(e.get("account_id"), str):
            owner.setdefault(e["oid"], e["account_id"])
    shards: dict[str, list[tuple[int, Any]]] = {}
    broadcast: list[tuple[int, Any]] = []
    for index, e in enumerate(events):
        if e.get("type") in ("tick", "reset_daily"):
            broadcast.append((index, e))
            for stream in shards.values():
                stream.append((index, e))
        else:
            account = e.get("account_id") if isinstance(e.get("account_id"), str) else owner.get(e.get("oid"), "")
            shards.setdefault(account, list(broadcast)).append((index, e))
    return list(shards.values())


def by_scope(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if "error" not in r:
            out.setdefault(json.dumps([r["rule"], r["scope"]]), []).append(r)
    return out


def errors(records: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records if "error" in r)


def test_sharded_by_account(case: dict[str, Any]) -> None:
    """The README's fleet criterion, in process: one engine per account (plus a final tick at the
    largest timestamp) gives, per (rule, scope), the same actions, and the same set of errors.
    This is what per-account trading days buy."""
    events = case["events"]
    final = {"type": "tick", "timestamp": max(e["timestamp"] for e in events if isinstance(e.get("timestamp"), int))}
    whole = views(replay_events(fresh_engine(case), [*events, final]))
    parts: list[dict[str, Any]] = []
    for stream in split_by_account(events):
        engine = fresh_engine(case)
        for index, e in [*stream, (len(events), final)]:
            parts.extend({**r, "index": index} if "error" in r else r for r in views(replay_events(engine, [e])))
    assert by_scope(parts) == by_scope(whole)
    assert errors(parts) == errors(whole)
