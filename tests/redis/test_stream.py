"""RemoteEngine.process_stream: one batch in flight while the next is planned; the same
outcomes as batch by batch, through aborts, lost replies and script cache loss."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cluster_risk import RiskEngine, build_config
from cluster_risk.errors import EventError
from cluster_risk.events import Event, Order, Trade
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_events
from cluster_risk.state.redis import RedisStore
from tests.helpers import DAY, T0, EngineFactory, load_case, views
from tests.redis import streams
from tests.redis.proxy import CuttingProxy
from tests.redis.servers import RedisCluster3, RedisServer


def every(events: list[Any], n: int, action: Callable[[], object]) -> Iterator[Any]:
    """The events, doing ``action`` after every ``n`` of them (while batches are in flight)."""
    for i, event in enumerate(events, 1):
        yield event
        if i % n == 0:
            action()


@pytest.mark.parametrize("backend", ["fakeredis", "redis", "cluster"], indirect=True)
def test_script_cache_lost_mid_stream(backend_engine: EngineFactory, request: pytest.FixtureRequest) -> None:
    data = load_case(16)
    engine = backend_engine(**data["config"])
    assert isinstance(engine, RemoteEngine)
    if engine.store.is_cluster:
        nodes: RedisCluster3 = request.getfixturevalue("cluster")
        clients = [node.client() for node in nodes.nodes]
    else:
        clients = [engine.store.client]  # type: ignore[list-item]

    def flush() -> None:
        for client in clients:
            client.script_flush()

    got = views(replay_batched(engine, every(data["events"], 137, flush), 50, decoded=True))
    assert got == data["expected"]


@pytest.mark.parametrize("hang", [False, True], ids=["cut", "timeout"])
def test_lost_replies_mid_stream(standalone: RedisServer, hang: bool) -> None:
    data = load_case(16)
    standalone.client().flushall()
    proxy = CuttingProxy(standalone.port)
    store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0", num_shards=3, socket_timeout=0.5)
    engine = RemoteEngine.from_config(build_config(data["config"]), store)
    cut = every(data["events"], 211, lambda: proxy.cut_next_replies(1, hang=hang))
    assert views(replay_batched(engine, cut, 40, decoded=True)) == data["expected"]
    assert proxy.cut_replies >= 5
    proxy.close()
    store.close()


@pytest.mark.parametrize("backend", ["fakeredis", "redis", "cluster"], indirect=True)
def test_an_abort_while_the_next_batch_is_in_flight(backend_engine: EngineFactory) -> None:
    """Batch 2 aborts (oid 1 expires inside it); batch 3, already sent to the same shard, is
    refused as stale and sent again once batch 2 is settled."""
    config = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 3}], "id_retention_days": 1}
    engine = backend_engine(**config, num_shards=1)
    assert isinstance(engine, RemoteEngine)
    day, t0 = DAY, T0
    events: list[Event] = [
        Order(1, "A", "C", "BID", 1.0, 1, t0),
        Order(99, "D", "C", "BID", 1.0, 1, t0 + 1),
        Order(2, "B", "C", "BID", 1.0, 1, t0 + 3 * day),
        Trade(9, 1, 1.0, 5, t0 + 3 * day + 1),  # oid 1 is gone by now: unknown_order
        Trade(10, 2, 1.0, 5, t0 + 3 * day + 2, "B", "C"),  # names its account: no lookup, no wait
        Order(3, "A", "C", "BID", 1.0, 1, t0 + 3 * day + 3),
    ]
    memory = RiskEngine.from_config(build_config(config))
    expected: list[Any] = []
    for event in events:
        try:
            expected.append(memory.process(event))
        except EventError as exc:
            expected.append(exc.to_dict(0))
    got = [o.to_dict(0) if isinstance(o, EventError) else o for o in engine.process_stream(events, 2)]
    assert got == expected
    assert got[3]["error"] == "unknown_order" and [a.type.value for a in got[4]] == ["PAUSE_ORDER"]


def test_a_stream_closed_early_leaves_the_engine_usable(standalone: RedisServer) -> None:
    rules = streams.rules(1)
    events = streams.stream(11)
    wire = [e for e in events if isinstance(e, dict)]
    expected = list(replay_events(RiskEngine(rules, streams.CONTRACTS), wire))
    standalone.client().flushall()
    store = RedisStore.from_url(standalone.url, num_shards=2)
    engine = RemoteEngine(rules, streams.CONTRACTS, store=store)
    first = replay_batched(engine, wire[:200], 30, decoded=True)
    head = [next(first) for _ in range(3)]
    first.close()  # stops with a batch in flight: it is collected, the connection stays in step
    assert head == expected[:3]
    store.close()
