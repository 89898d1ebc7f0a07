"""Publishing: what a publisher writes (the same text as encode_event), and that a call sent
again after a lost reply adds nothing (publish.lua's per-publisher sequence numbers)."""

from __future__ import annotations

import json

from cluster_risk.cluster.launcher import RedisProcess
from cluster_risk.cluster.streams import Publisher
from cluster_risk.events import Direction, Order, ResetDaily, Tick, Trade
from cluster_risk.state.redis import RedisStore
from cluster_risk.wire import decode_entries, decode_line, encode_event
from tests.cluster.conftest import connect
from tests.helpers import DAY, T0
from tests.redis.proxy import CuttingProxy

SHARDS = 4


def entries(server: RedisProcess, publisher: Publisher) -> list[bytes]:
    client = connect(server.url)
    out = []
    for shard in range(SHARDS):
        out += [fields[b"e"] for _, fields in client.xrange(publisher.keys.input(shard))]
    return out


def test_the_wire_text_is_encode_events() -> None:
    publisher = Publisher.__new__(Publisher)
    publisher._quoted, publisher._memory = {}, 10  # only what _wire needs
    events = [
        Order(1, "A", "C1", "BID", 1.5, 3, T0),
        Order(2, 'ä"\\x', "C\n2", Direction.ASK, -7, 1, T0 + 1),
        Order(3, "A", "C1", "BID", 1e300, 2**31 - 1, 2**63 - 1),
        Trade(4, 1, 0.1, 1, T0 + 2),
        Trade(5, 1, 2, 1, T0 + 3, "A", None),
        Trade(6, 1, 2.0, 1, T0 + 3, None, "C1"),
        Order(7, "A", "C1", "BID", float("nan"), 1, T0),  # not valid: the generic encoder
        Order(True, "A", "C1", "BID", 1.0, 1, T0),  # type: ignore[arg-type]
        Tick(T0),
        ResetDaily(T0),
    ]
    for event in events:
        assert publisher._wire(event) == json.JSONEncoder(separators=(",", ":")).encode(encode_event(event))


def test_the_fast_decoder_answers_as_decode_line() -> None:
    good = json.dumps(
        {
            "type": "order",
            "oid": 1,
            "account_id": "A",
            "contract_id": "C",
            "direction": "BID",
            "price": 1.0,
            "volume": 1,
            "timestamp": T0,
        },
        separators=(",", ":"),
    ).encode()
    raws = [
        good,
        b" " + good,
        b"{not json",
        b'{"type":"order","oid":2}',
        b"1,2",
        b'"a',
        b'b"',
        b'{"type":"trade","tid":1,"oid":1,"price":1,"volume":1,"timestamp":5,"account_id":null}',
        b'{"type":"trade","tid":1,"oid":1,"price":1,"volume":0,"timestamp":5}',
        b'{"type":"order","oid":1,"account_id":"","contract_id":"C","direction":"BID","price":1,"volume":1,"timestamp":1}',
        b'{"type":"tick","timestamp":5}',
        b'{"type":"reset_daily","timestamp":5}',
        '{"type":"order","oid":1,"account_id":"\u00e9","contract_id":"C","direction":"BID",'
        '"price":1,"volume":1,"timestamp":1}'.encode(),
        b"",
        b"[]",
        b'{"type":"order","oid":1,"account_id":"A","contract_id":"C","direction":"SELL","price":1,"volume":1,"timestamp":1}',
    ]
    for raws_ in (raws, raws[::-1], [raws[4], raws[5], raws[6]]):
        got = decode_entries(raws_)
        for raw, outcome in zip(raws_, got, strict=True):
            try:
                want: object = decode_line(raw)
            except Exception as exc:  # compared below
                want = exc
            if isinstance(want, Exception):
                assert type(outcome) is type(want) and str(outcome) == str(want), raw
            else:
                assert outcome == want, raw


def test_a_call_sent_again_adds_nothing(server: RedisProcess) -> None:
    publisher = Publisher(connect(server.url), shards=SHARDS)
    sent: list[list[tuple[object, ...]]] = []
    real = publisher._send_once

    def twice(commands: list[tuple[object, ...]]) -> list[object]:
        sent.append(list(commands))
        real(commands)  # applied, and its reply "lost": the retry sends the same calls again
        return real(commands)

    publisher._send_once = twice  # type: ignore[method-assign]
    publisher.publish([(0, Order(1, "A", "C1", "BID", 1.0, 1, T0)), (1, ResetDaily(T0 + 1))])
    publisher.publish([(2, Order(2, "A", "C1", "BID", 1.0, 1, T0 + 2))])
    assert sent
    got = [decode_line(raw) for raw in entries(server, publisher)]
    assert sorted(e.timestamp for e in got) == sorted([T0, T0 + 2] + [T0 + 1] * SHARDS)  # one reset per shard


def test_lost_replies_to_a_publisher_do_not_repeat_entries(server: RedisProcess) -> None:
    proxy = CuttingProxy(server.port)
    try:
        client = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}/0").client
        publisher = Publisher(client, shards=SHARDS)
        for k in range(20):
            proxy.cut_next_replies(1)
            batch = [(None, Order(10 * k + i, f"A{i}", "C1", "BID", 1.0, 1, T0 + k)) for i in range(5)]
            publisher.publish([*batch, (None, ResetDaily(T0 + k))])
    finally:
        proxy.close()
    assert proxy.cut_replies >= 10
    got = [decode_line(raw) for raw in entries(server, publisher)]
    assert sum(isinstance(e, ResetDaily) for e in got) == 20 * SHARDS
    assert sorted(e.oid for e in got if isinstance(e, Order)) == sorted(10 * k + i for k in range(20) for i in range(5))


def test_one_call_per_chunk_and_routes_keep_every_character(server: RedisProcess) -> None:
    client = connect(server.url)
    publisher = Publisher(client, shards=SHARDS)
    sent: list[list[tuple[object, ...]]] = []
    real = publisher._send_once

    def record(commands: list[tuple[object, ...]]) -> list[object]:
        sent.append(list(commands))
        return real(commands)

    publisher._send_once = record  # type: ignore[method-assign]
    accounts = ['ä"\\x', "A\nB", "\U0001f600", "plain", "\x00"]
    orders = [Order(i + 1, account, "C1", "BID", 1.0, 1, T0) for i, account in enumerate(accounts)]
    publisher.publish([(None, order) for order in orders] + [(None, ResetDaily(T0 + 1))])
    assert [len(commands) for commands in sent] == [1] * len(sent)  # every shard's events and the routes
    assert sent[-1][0][2] == 2 * SHARDS + len({publisher.keys.route(o.oid, T0 // DAY) for o in orders})
    for order in orders:
        assert client.hget(publisher.keys.route(order.oid, T0 // DAY), str(order.oid)) == (order.account_id.encode())
        assert client.ttl(publisher.keys.route(order.oid, T0 // DAY)) > 0
    got = [decode_line(raw) for raw in entries(server, publisher)]
    assert sorted(e.oid for e in got if isinstance(e, Order)) == [1, 2, 3, 4, 5]


def test_a_big_publish_goes_as_calls_of_bounded_size_in_order(server: RedisProcess) -> None:
    publisher = Publisher(connect(server.url), shards=1)  # a fresh server: one shard, one route hash
    orders = [Order(i + 1, f"A{i % 3}", "C1", "BID", 1.0, 1, T0 + i) for i in range(5000)]
    publisher.publish([(None, order) for order in orders])
    client = connect(server.url)
    assert client.get(publisher.keys.publisher(0, publisher.publisher_id)) == b"3"  # 2,000 + 2,000 + 1,000
    got = [decode_line(fields[b"e"]) for _, fields in client.xrange(publisher.keys.input(0))]
    assert [e.oid for e in got] == [o.oid for o in orders]
    assert client.hlen(publisher.keys.route(1, T0 // DAY)) == 5000


def test_routes_past_what_a_script_can_unpack_at_once(server: RedisProcess) -> None:
    """publish.lua writes a route hash's pairs in HSETs of at most 4,000 values (unpack's
    limit is ~8,000): one call of 2,000 orders on one route hash."""
    publisher = Publisher(connect(server.url), shards=1)
    client = connect(server.url)
    keys = [publisher.keys.input(0), publisher.keys.publisher(0, "x"), publisher.keys.route(1, 0)]
    pairs = [str(v) for i in range(5000) for v in (i, f"A{i}")]
    args = [1, 1, "", "", 1, json.dumps(pairs), "1", 60, 60]
    assert client.eval(publisher._script, 3, *keys, *args) == 0
    assert client.hlen(keys[2]) == 5000 and client.hget(keys[2], "4999") == b"A4999"
