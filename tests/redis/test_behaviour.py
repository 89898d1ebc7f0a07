"""Behaviour of the Redis-backed engine beyond the vectors: differential random streams against
the in-memory engine (the executable spec), retention, duplicates, big ids, refused configs."""

from __future__ import annotations

import hashlib
from typing import Any

import fakeredis
import pytest

from cluster_risk import ConfigError, RiskEngine, build_config
from cluster_risk.benchmark import SEED_CONFIG
from cluster_risk.errors import EventError
from cluster_risk.events import Order, Trade
from cluster_risk.remote import BatchError, RemoteEngine, replay_batched, scope_key, scope_values
from cluster_risk.replay import replay_events, replay_lines
from cluster_risk.rules import OrderRateLimitRule
from cluster_risk.state.redis import RedisStore, StoreError
from cluster_risk.wire import decode_event
from tests.helpers import DAY, T0, EngineFactory, lines, load_case, views
from tests.redis import streams
from tests.redis.servers import RedisServer

REMOTE = ["fakeredis", "redis", "cluster"]


def remote_pair(make: EngineFactory, seed: int, shards: int, retention: int = 7) -> tuple[RiskEngine, RemoteEngine]:
    rules = streams.rules(seed)
    memory = RiskEngine(rules, streams.CONTRACTS, id_retention_days=retention)
    probe = make(num_shards=shards)  # a fresh, flushed store on the backend
    assert isinstance(probe, RemoteEngine)
    return memory, RemoteEngine(rules, streams.CONTRACTS, store=probe.store, id_retention_days=retention)


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
@pytest.mark.parametrize("seed", range(6))
def test_random_streams_print_what_memory_prints(backend_engine: EngineFactory, seed: int) -> None:
    memory, remote = remote_pair(backend_engine, seed, shards=1 + seed % 4)
    events = streams.stream(seed)
    expected = list(replay_events(memory, events))
    batch = [1, 7, 64, 1000][seed % 4]
    assert list(replay_batched(remote, events, batch, decoded=True)) == expected
    assert any(r.get("type") == "PAUSE_ORDER" for r in expected)  # the stream does exercise the rules
    assert remote.paused_scopes() == memory.paused_scopes()


@pytest.mark.parametrize("backend", ["fakeredis", "redis"], indirect=True)
@pytest.mark.parametrize("seed", range(4))
def test_id_retention_over_many_days_one_shard(backend_engine: EngineFactory, seed: int) -> None:
    """Days far apart make ids expire; on one shard the shard's latest day is the engine's."""
    memory, remote = remote_pair(backend_engine, seed, shards=1, retention=1 + seed % 2)
    events = streams.stream(100 + seed, n=500, days=12)
    expected = list(replay_events(memory, events))
    assert list(replay_batched(remote, events, 50, decoded=True)) == expected


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_order_expiring_inside_a_batch_is_an_unknown_order(backend_engine: EngineFactory) -> None:
    """The index read before the batch still has oid 1; the script finds it expired when it
    reaches the trade (an earlier event moved the day on), aborts without writing, and the
    trade is rejected like the in-memory engine rejects it."""
    config = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 1}], "id_retention_days": 1}
    engine = backend_engine(**config, num_shards=1)
    memory = RiskEngine.from_config(build_config(config))
    day = DAY
    first = [Order(1, "A", "C", "BID", 1.0, 1, T0)]
    second = [
        Order(2, "B", "C", "BID", 1.0, 1, T0 + 3 * day),
        Trade(9, 1, 1.0, 5, T0 + 3 * day + 1),
        Trade(10, 2, 1.0, 5, T0 + 3 * day + 2),
    ]
    assert engine.process_batch(first) == memory.process_many(first) == []
    if isinstance(engine, RemoteEngine):
        outcomes = engine.apply_batch(second)
        assert isinstance(outcomes[1], EventError)
        assert outcomes[1].to_dict(1) == {
            "error": "unknown_order",
            "field": "oid",
            "index": 1,
            "reason": "oid 1 was never seen and the trade has no account_id",
        }
        assert outcomes[0] == memory.process(second[0])
        with pytest.raises(EventError):
            memory.process(second[1])
        assert outcomes[2] == memory.process(second[2])
        assert [a.type.value for a in outcomes[2]] == ["PAUSE_ORDER"]


def test_memory_backend_runs_too(backend_engine: EngineFactory, backend: str) -> None:
    """The suite's fixture gives every backend the same engine API."""
    engine = backend_engine({"type": "OrderRateLimitRule", "threshold": 1})
    first = engine.process(Order(1, "A", "C", "BID", 1.0, 1, T0))
    second = engine.process(Order(2, "A", "C", "BID", 1.0, 1, T0 + 1))
    assert first == [] and [a.value for a in second] == [2]
    assert engine.process(Order(2, "A", "C", "BID", 1.0, 1, T0 + 2)) == []  # duplicate


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_ids_near_two_to_the_64_survive(backend_engine: EngineFactory) -> None:
    engine = backend_engine({"type": "AccountVolumeLimitRule", "daily_cap": 5, "metric": "count"})
    assert isinstance(engine, RemoteEngine)
    big = 2**64 - 1
    events = [Order(big, "A", "C", "BID", 1.0, 1, T0)]
    events += [Trade(big - k, big, 1.0, 1, T0 + k) for k in range(1, 7)]
    events += [Trade(big - 1, big, 1.0, 1, T0 + 9), Order(big - 1, "A", "C", "BID", 1.0, 1, T0 + 10)]
    actions = engine.process_batch(events)
    assert [(a.type.value, a.value) for a in actions] == [("PAUSE_ORDER", 6)]
    # big - 1 was seen as a tid, not as an oid: different seen-sets; the trade duplicate is ignored
    assert engine.process(Trade(big - 1, big, 1.0, 1, T0 + 11)) == []


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_process_batch_applies_the_valid_events_and_reports_the_rest(backend_engine: EngineFactory) -> None:
    engine = backend_engine({"type": "OrderRateLimitRule", "threshold": 1})
    assert isinstance(engine, RemoteEngine)
    events = [
        Order(1, "A", "C", "BID", 1.0, 1, T0),
        Order(2, "A", "C", "BID", 1.0, 0, T0 + 1),  # volume 0
        Trade(5, 77, 1.0, 1, T0 + 2),  # unknown order
        Order(3, "A", "C", "BID", 1.0, 1, T0 + 3),
    ]
    with pytest.raises(BatchError) as caught:
        engine.process_batch(events)
    assert [(i, e.code, e.field) for i, e in caught.value.errors] == [
        (1, "invalid_field", "volume"),
        (2, "unknown_order", "oid"),
    ]
    assert [(a.type.value, a.value) for a in caught.value.actions] == [("PAUSE_ORDER", 2)]
    assert (caught.value.code, caught.value.field) == ("invalid_field", "volume")


def test_configs_the_store_cannot_shard_are_refused() -> None:
    store = RedisStore(fakeredis.FakeRedis())
    with pytest.raises(ConfigError, match=r"rules\[0\]\.dimensions: must include 'account'"):
        RemoteEngine([OrderRateLimitRule(threshold=1, dimensions=["contract"])], store=store)
    with pytest.raises(ConfigError, match=r"rules\[0\]\.bucket_ns: must be at least 1024"):
        RemoteEngine([OrderRateLimitRule(threshold=1, window_ns=1000, bucket_ns=1)], store=store)
    with pytest.raises(ConfigError, match="unique"):
        RemoteEngine([OrderRateLimitRule(threshold=1), OrderRateLimitRule(threshold=2)], store=store)


@pytest.mark.parametrize(
    "values",
    [("A1",), ("A:1", "C%2", "P\n3"), ("", "x"), ("ü", ":", "%3A")],
    ids=["plain", "escaped", "empty", "mixed"],
)
def test_scope_keys_split_back_exactly(values: tuple[str, ...]) -> None:
    key = scope_key(values)
    assert scope_values(key) == values
    assert "\n" not in key and key.count(":") == len(values) - 1


def test_replay_batched_prints_what_the_cli_prints(standalone: RedisServer) -> None:
    """Lines in, JSON records out: the same as cluster_risk.replay.replay_lines, errors included."""
    rules = streams.rules(3)
    text = [*lines(streams.stream(3)), "", "{not json", '{"type": "tick"}']
    expected = list(replay_lines(RiskEngine(rules, streams.CONTRACTS), text))
    standalone.client().flushall()
    store = RedisStore.from_url(standalone.url, num_shards=3)
    got = list(replay_batched(RemoteEngine(rules, streams.CONTRACTS, store=store), text, 100))
    store.close()
    assert got == expected


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_apply_shard_with_the_callers_own_script_call(backend_engine: EngineFactory) -> None:
    """The hook a cluster worker uses: it plans, the caller sends (here: plain apply.lua)."""

    case = load_case(12)
    engine = backend_engine(**case["config"], num_shards=1)
    assert isinstance(engine, RemoteEngine)
    store = engine.store
    seq = store.high_water_marks()[0]
    got: list[dict[str, Any]] = []
    raw = case["events"]
    for start in range(0, len(raw), 100):
        decoded: list[tuple[int, Any]] = []
        for index in range(start, min(start + 100, len(raw))):
            try:
                decoded.append((index, decode_event(raw[index])))
            except EventError as exc:
                decoded.append((index, exc))
        events = [e for _, e in decoded if not isinstance(e, EventError)]
        sent: list[Any] = []

        def send(
            blob: bytes, positions: Any, scopes: Any, outcomes: Any, sent: Any = sent, number: int = seq + 1
        ) -> Any:
            sent.append((list(positions), dict(scopes)))
            digest = hashlib.blake2b(blob, digest_size=16).hexdigest()
            return store.apply({0: (number, blob, digest, engine.constants())})[0]

        outcomes = iter(engine.apply_shard(0, events, send))
        seq += 1
        for index, item in decoded:
            outcome = item if isinstance(item, EventError) else next(outcomes)
            got += [outcome.to_dict(index)] if isinstance(outcome, EventError) else [a.to_dict() for a in outcome]
        assert sent and all(isinstance(scope.account, str) for _, scopes in sent for scope in scopes.values())
    assert views(got) == case["expected"]


def test_a_scope_key_shared_by_rules_is_planned_once() -> None:
    """The seed's rate and volume rules both group by account: the plan lists each account's
    key once, and its pairs list no group (each rule's group is the pair's account). With a
    rule that groups otherwise, a pair lists each rule's group; rules that share a scope key
    point at one entry (the script tells the rules apart)."""
    engine = RemoteEngine.from_config(build_config(SEED_CONFIG), RedisStore(fakeredis.FakeRedis(), num_shards=1))
    orders = [Order(i + 1, f"A{i % 3}", "T2303", "BID", 1.0, 1, T0 + i) for i in range(6)]
    plan = engine.plan_shard(0, orders).plan
    assert plan.groups == plan.accounts == ["A0", "A1", "A2"]
    assert plan.pairs == [1, "2:A0T2303", 2, "2:A1T2303", 3, "2:A2T2303"]

    by_contract = {"type": "AccountVolumeLimitRule", "name": "c", "daily_cap": 9, "dimensions": ["account", "contract"]}
    config = build_config({**SEED_CONFIG, "rules": [*SEED_CONFIG["rules"], by_contract]})
    engine = RemoteEngine.from_config(config, RedisStore(fakeredis.FakeRedis(), num_shards=1))
    plan = engine.plan_shard(0, orders).plan
    assert plan.groups == ["A0", "A0:T2303", "A1", "A1:T2303", "A2", "A2:T2303"]
    width = 2 + 3  # account, pair key, then one group per stateful rule
    pairs = [plan.pairs[i : i + width] for i in range(0, len(plan.pairs), width)]
    assert [tuple(pair[2:]) for pair in pairs] == [(1, 1, 2), (3, 3, 4), (5, 5, 6)]  # rate, volume, c


def _account_day_batches() -> list[list[Order | Trade]]:
    """A is paused by its day-1 volume; on day 2 its first order is a duplicate (in the batch that
    brings day 2 to the shard), then come its new orders. The first new one lifts the pause."""
    day, t0 = DAY, T0
    return [
        [Order(1, "A", "C", "BID", 1.0, 1, t0), Order(2, "B", "C", "BID", 1.0, 1, t0), Trade(1, 1, 1.0, 5, t0 + 1)],
        [Order(3, "B", "C", "BID", 1.0, 1, t0 + day), Order(1, "A", "C", "BID", 1.0, 1, t0 + day + 1)],
        [Order(4, "A", "C", "BID", 1.0, 1, t0 + day + 2), Order(5, "B", "C", "BID", 1.0, 1, t0 + day + 2)],
        [Order(6, "A", "C", "BID", 1.0, 1, t0 + day + 3), Order(7, "B", "C", "BID", 1.0, 1, t0 + day + 3)],
    ]


@pytest.mark.parametrize("backend", REMOTE, indirect=True)
def test_a_duplicate_is_not_an_accounts_event_of_the_day(backend_engine: EngineFactory) -> None:
    """The engine tells apply.lua which accounts had an applied event on the shard's latest day
    (their day records are not read). A duplicate is no such event: the script skipped it, so
    A's first new order of day 2 still finds day 1 in its record and lifts A's daily pause."""
    config = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 1}]}
    engine = backend_engine(**config, num_shards=1)
    memory = RiskEngine.from_config(build_config(config))
    got = []
    for batch in _account_day_batches():
        outcomes = engine.apply_batch(batch)  # type: ignore[union-attr]
        expected = [o if isinstance(o, EventError) else memory.process(e) for e, o in zip(batch, outcomes, strict=True)]
        assert outcomes == expected
        got.append([action.to_dict() for outcome in outcomes if isinstance(outcome, list) for action in outcome])
    assert [a["type"] for a in got[0]] == ["PAUSE_ORDER"]
    assert [(a["type"], a["scope"]) for a in got[2]] == [("RESUME_ORDER", {"account": "A"})]


def test_the_engine_hints_only_accounts_it_saw_applied_on_the_latest_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """What apply.lua is told (its plan's optional hint day and list of accounts not hinted)."""
    store = RedisStore(fakeredis.FakeRedis(), num_shards=1)
    config = build_config({"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 1}]})
    engine = RemoteEngine.from_config(config, store)
    sent: list[list[Any]] = []
    send_apply = store.send_apply

    def spy(calls: Any) -> Any:
        sent.extend(store.decode(call[1]) for call in calls.values())
        return send_apply(calls)

    monkeypatch.setattr(store, "send_apply", spy)
    for batch in _account_day_batches():
        engine.apply_batch(batch)
    hints = [(plan[9], plan[10]) if len(plan) > 9 else None for plan in sent]
    accounts = [plan[2] for plan in sent]
    assert accounts == [["A", "B"], ["B", "A"], ["A", "B"], ["A", "B"]]
    day1 = sent[0][5][1]  # the plan's first entry: (5, day)
    assert hints == [
        None,  # nothing applied yet
        (day1, []),  # both had day-1 events; the script finds day 2 is not the latest day and reads them
        (day1 + 1, [1]),  # B's day-2 order applied; A's only day-2 event was a duplicate: read A
        (day1 + 1, []),
    ]


@pytest.mark.parametrize("backend", ["fakeredis", "redis"], indirect=True)
def test_hints_start_over_when_the_high_water_marks_are_read_again(backend_engine: EngineFactory) -> None:
    """The shard's state is wiped under the engine: its next batch is refused (stale), and the
    engine reads the high-water marks again. What it saw applied before no longer holds, so A's
    day is read from its (new) record: A's late trade of the day before does not pause A."""
    config = {"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 1}]}
    engine = backend_engine(**config, num_shards=1)
    assert isinstance(engine, RemoteEngine)
    day, t0 = DAY, T0 + DAY
    engine.apply_batch([Order(1, "A", "C", "BID", 1.0, 1, t0), Order(2, "B", "C", "BID", 1.0, 1, t0)])
    engine.store.client.flushall()  # a server we started for this test (or fakeredis)
    again = [Order(3, "B", "C", "BID", 1.0, 1, t0 + 1)]
    with pytest.raises(StoreError, match="another writer"):
        engine.apply_batch(again)
    memory = RiskEngine.from_config(build_config(config))  # what the wiped state has seen
    late = [Order(4, "A", "C", "BID", 1.0, 1, t0 + 2), Order(5, "A", "C", "BID", 1.0, 1, t0 - day + 5)]
    for batch in [again, late, [Trade(1, 5, 1.0, 5, t0 - day + 6)]]:
        assert engine.apply_batch(batch) == [memory.process(event) for event in batch]
    assert memory.paused_scopes() == engine.paused_scopes() == []
