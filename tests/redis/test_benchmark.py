"""The Redis benchmark's two modes on a tiny workload: the timed run (against the in-memory
engine's decisions) and the callgrind count (valgrind inside the private redis-server)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cluster_risk.benchmark import SEED_CONFIG, make_workload
from cluster_risk.benchmark.cluster import _callgrind
from cluster_risk.benchmark.redis_store import callgrind_run, main, private_redis, run
from cluster_risk.config import build_config
from cluster_risk.engine import RiskEngine
from tools.redis_compare import compare_run

LUA = Path(__file__).parents[2] / "lua"


def _memory_actions(orders: int, trades: int, accounts: int) -> int:
    engine = RiskEngine.from_config(build_config(SEED_CONFIG))
    _, events = make_workload(orders, trades, accounts)
    return sum(len(engine.process(e)) for e in events[1:]) + len(engine.process(events[0]))


@pytest.mark.redis
def test_timed_run_reports_the_engines_work_and_the_limits_comparison() -> None:
    # 2 accounts at 1 us apart: 600 orders each within the second, so the rate rule pauses
    with private_redis() as url:
        result = run(url, orders=1200, trades=300, accounts=2, batch_size=100, shards=2, limits_events=200)
    engine = result["engine"]
    assert engine["events"] == 1499
    assert engine["actions"] == _memory_actions(1200, 300, 2) > 0
    assert engine["events_per_s"] > 0 and engine["redis_server_cpu_us_per_event"] > 0
    assert result["limits_moving_window"]["events"] == 200
    assert result["engine_vs_limits"] > 0


@pytest.mark.redis
def test_limits_events_0_skips_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    with private_redis() as url:
        assert (
            main(["--redis-url", url, "--orders", "200", "--trades", "50", "--accounts", "5", "--limits-events", "0"])
            == 0
        )
    out = capsys.readouterr().out
    assert "RemoteEngine" in out and "limits: skipped (--limits-events 0)" in out


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(900)  # Redis under valgrind, ~50x slower
def test_callgrind_counts_the_scripts_instructions() -> None:
    assert shutil.which("valgrind"), "valgrind is needed (apt-get install valgrind; CI installs it)"
    counted = callgrind_run(orders=400, trades=100, accounts=50, batch_size=100, shards=1)
    assert counted["script_calls"] == 6  # the warm-up event, then 499 events in 5 batches
    # a plausible count: an event in a batch of 100 costs thousands of instructions, and far
    # less than the ~500k of a script call of its own
    assert 1_000 < counted["instructions_per_event"] < 300_000


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(900)  # Redis under valgrind, ~50x slower
def test_callgrind_counts_a_workers_calls() -> None:
    """``python -m cluster_risk.benchmark cluster --callgrind``: a worker drains a published
    stream in calls of at most --batch entries per shard, counted inside FCALL."""
    assert shutil.which("valgrind"), "valgrind is needed (apt-get install valgrind; CI installs it)"
    _, events = make_workload(400, 100, 50)
    counted = _callgrind(events, shards=4, batch=10)
    assert counted["entries"] == 500
    assert counted["calls"] >= 50  # every shard's entries, 10 at a time at most
    assert 10_000 < counted["instructions_per_call"] < 5_000_000
    total = counted["instructions_per_call"] * counted["calls"]
    assert abs(counted["instructions_per_entry"] * counted["entries"] - total) <= total // 100


@pytest.mark.redis
def test_compare_lua_measures_two_versions_side_by_side(tmp_path: Path) -> None:
    """``tools/redis_compare.py``: the same Lua on both sides gives a ratio near 1 per round; a version
    that decides differently is refused, and so is a folder without apply.lua."""
    sizes = {"orders": 1200, "trades": 300, "accounts": 2, "batch_size": 100}
    same = compare_run(LUA, **sizes, rounds=2)
    assert len(same["rounds"]) == 2
    assert all(row["a_us"] > 0 and row["b_us"] > 0 for row in same["rounds"])
    assert 0.3 < same["median_b_over_a"] < 3
    changed = tmp_path / "lua"
    shutil.copytree(LUA, changed)
    window = changed / "window.lua"
    text = window.read_text()
    assert "elseif n > threshold then" in text
    window.write_text(text.replace("elseif n > threshold then", "elseif n > threshold + 1000 then"))
    with pytest.raises(SystemExit, match="decided differently"):
        compare_run(changed, **sizes, rounds=1)
    with pytest.raises(SystemExit, match=r"has no apply\.lua"):
        compare_run(tmp_path, **sizes, rounds=1)


@pytest.mark.redis
def test_a_private_server_that_does_not_start_is_a_failure_not_a_dead_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redis-server that exits at once (as Redis 6.2 did when given hash-max-listpack-entries)
    fails the benchmark with the reason; it was handed out as a URL nobody answered, and the
    run then waited forever on it."""
    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Bad directive or wrong number of arguments' >&2\nexit 1\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(SystemExit, match="did not start"), private_redis() as url:
        pytest.fail(f"private_redis handed out {url}")
