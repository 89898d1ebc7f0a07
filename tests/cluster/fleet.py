"""Driving a fleet from a test: worker processes, a publisher thread, waiting for the lag to
reach zero, and the conformance check on the workload."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_risk.cluster.launcher import start_worker
from cluster_risk.cluster.shards import Deployment
from cluster_risk.cluster.status import fleet_status, total_lag
from cluster_risk.cluster.streams import Publisher
from tests.cluster.conform import by_scope, expected, fleet_output, with_final_tick
from tests.cluster.conftest import connect
from tests.cluster.workload import CONFIG
from tests.helpers import lines

SHARDS = 8


def wait_for(what: str, condition: Callable[[], bool], timeout: float, explain: Callable[[], str] = str) -> float:
    """Poll ``condition`` until true; the seconds it took (fails the test past ``timeout``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{explain()}")
        time.sleep(0.02)
    return time.monotonic() - started


class Fleet:
    """Worker processes on one Redis URL, stopped (SIGKILL if need be) at the end."""

    def __init__(self, url: str, folder: Path, config: dict[str, Any] = CONFIG) -> None:
        self.url = url
        self.folder = folder
        self.config_path = folder / "config.json"
        self.config_path.write_text(json.dumps(config), encoding="utf-8")
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client = connect(url)
        self.rejected: set[Any] = set()
        self.published = 0
        self.failure: Exception | None = None

    def start(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        args = ["--tick-ms", "0", "--lease-ms", "1000", "--batch", "100", "--shards", str(SHARDS), *extra]
        proc = start_worker(str(self.config_path), self.url, name, *args, stdout=log, stderr=log)
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def applied(self) -> int:
        keys = Deployment(self.client).ensure(None)
        pipe = self.client.pipeline(transaction=False)
        for shard in range(keys.shards):
            pipe.hget(keys.lease(shard), "applied")
        return sum(int(v) for v in pipe.execute() if v)

    def lag(self) -> int:
        return total_lag(self.client, Deployment(self.client).ensure(None))

    def publish(self, events: list[Any], rate: float | None = None, **options: Any) -> threading.Thread:
        """Publish in a thread (``rate`` events/s); rejected lines land in ``self.rejected``."""
        publisher = Publisher(connect(self.url), shards=SHARDS, **options)

        def run() -> None:
            try:
                for index, error in publisher.publish_lines(lines(events), rate=rate):
                    self.rejected.add((error.code, error.field, index))
            except Exception as exc:  # reported by drained()
                self.failure = exc
                raise
            self.published = len(events)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def explain(self) -> str:
        logs = "\n".join(f"--- {name}\n" + "\n".join(self.log(name).splitlines()[-8:]) for name in self.procs)
        status = fleet_status(self.client)
        return f"published {self.published}\nstatus {json.dumps(status['shards'])}\n{logs}"

    def drained(self, total: int) -> bool:
        if self.failure is not None:
            raise AssertionError(f"the publisher failed: {self.failure!r}") from self.failure
        return self.published == total and self.lag() == 0

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def check(self, events: list[Any]) -> None:
        """Per (rule, scope) the engine's actions, the same errors, nothing twice."""
        want_actions, want_errors = expected(self.config, events)
        actions, dead, ids = fleet_output(self.client)
        got, want = by_scope(actions), by_scope(want_actions)
        errors = self.rejected | dead
        assert set(got) == set(want), (
            sorted(set(got) - set(want))[:5],
            sorted(set(want) - set(got))[:5],
            sorted(errors - want_errors)[:5],
            sorted(want_errors - errors)[:5],
        )
        for scope, sequence in want.items():
            assert got[scope] == sequence, (scope, got[scope], sequence)
        assert self.rejected | dead == want_errors
        assert len(ids) == len(set(ids))


def final(events: list[Any]) -> list[Any]:
    return with_final_tick(events)


def fleet_fixture(url: str, folder: Path) -> Iterator[Fleet]:
    fleet = Fleet(url, folder)
    try:
        yield fleet
    finally:
        fleet.stop()
