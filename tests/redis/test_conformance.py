"""Every conformance vector on every backend: event by event, and in batches."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_events
from tests.helpers import CASE_FILES, Engine, EngineFactory, views


def replay(engine: Engine, events: Iterable[object], batch_size: int) -> Iterator[dict[str, Any]]:
    if isinstance(engine, RemoteEngine) and batch_size > 1:
        return replay_batched(engine, events, batch_size, decoded=True)
    return replay_events(engine, events)


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.stem)
def test_vector_in_batches(path: Path, backend_engine: EngineFactory) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    engine = backend_engine(**case["config"])
    assert views(replay(engine, case["events"], 250)) == case["expected"]


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.stem)
def test_vector_event_by_event(path: Path, backend_engine: EngineFactory) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    engine = backend_engine(**case["config"])
    assert views(replay(engine, case["events"], 1)) == case["expected"]
