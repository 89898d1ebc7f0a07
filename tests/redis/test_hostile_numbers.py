"""Numbers a backend cannot hold exactly (issue 15, item 4): refused where they enter (a daily
cap above 2**53), or saturated the same way in every backend (a daily sum past 2**53, a
notional past the largest double), never drifting, never an invalid JSON line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from cluster_risk import RiskEngine, build_config
from cluster_risk.errors import ConfigError
from cluster_risk.events import Trade
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_lines
from cluster_risk.rules.base import DailyCapParams, DailyCapRule, RuleParams, register_rule
from cluster_risk.state.redis import RedisStore
from tests.helpers import T0, lines
from tests.redis.servers import RedisServer

FLOAT_MAX = 1.7976931348623157e308
SATURATED_SUM = (1 << 53) + 2  # cluster_risk.state.memory.SATURATED_SUM


@register_rule
class HugeAmountRule(DailyCapRule):
    """A daily rule whose amounts are far beyond a trade's volume (what a custom metric may give):
    volume 1 -> 2**53 - 1, volume 3 -> 2**70, volume 4 -> -1.5, else the volume."""

    Params: ClassVar[type[RuleParams]] = DailyCapParams

    def trade_amount(self, trade: Trade, contract_id: str) -> float | None:
        return {1: (1 << 53) - 1, 3: 1 << 70, 4: -1.5}.get(trade.volume, trade.volume)


def _fill(tid: int, volume: int, price: float = 1, account: str = "A") -> dict[str, Any]:
    return {
        "type": "trade",
        "tid": tid,
        "oid": tid,
        "price": price,
        "volume": volume,
        "timestamp": T0 + tid,
        "account_id": account,
        "contract_id": "C",
    }


@pytest.fixture
def store(standalone: RedisServer) -> Iterator[RedisStore]:
    standalone.client().flushall()
    got = RedisStore.from_url(standalone.url, num_shards=2)
    yield got
    got.close()


def _both(config: dict[str, Any], events: list[dict[str, Any]], store: RedisStore) -> tuple[list[Any], list[Any]]:
    built = build_config(config)
    text = lines(events)
    want = list(replay_lines(RiskEngine.from_config(built), text))
    got = list(replay_batched(RemoteEngine.from_config(built, store), text, 1))
    return want, got


def _strict_json(records: list[Any]) -> None:
    for record in records:
        json.dumps(record, allow_nan=False)  # raises on Infinity / NaN


def test_an_integer_sum_past_2_53_saturates_and_pauses_in_every_backend(store: RedisStore) -> None:
    """2**53 - 1, then + 2: in process 2**53 + 1 > cap; in Redis the double stayed 2**53, not
    over the cap, and never grew again: no PAUSE.  Now both say SATURATED_SUM."""
    config = {"rules": [{"type": "HugeAmountRule", "daily_cap": 1 << 53}]}
    want, got = _both(config, [_fill(1, 1), _fill(2, 2), _fill(3, 2, account="B"), _fill(4, 1, account="B")], store)
    assert [(a["scope"], a["value"]) for a in want] == [
        ({"account": "A"}, SATURATED_SUM),
        ({"account": "B"}, SATURATED_SUM),
    ]
    assert got == want


def test_an_integer_amount_past_2_64_does_not_crash(store: RedisStore) -> None:
    config = {"rules": [{"type": "HugeAmountRule", "daily_cap": 10}]}
    want, got = _both(config, [_fill(1, 3), _fill(2, 2)], store)
    assert [a["value"] for a in want] == [SATURATED_SUM]
    assert got == want


def test_a_notional_past_the_largest_double_is_valid_json(store: RedisStore) -> None:
    """1e308 x 100 is inf in Python: ``"value": Infinity`` was printed.  Now the sum stays at
    the largest finite double, in both engines, and a negative amount then moves it."""
    config = {
        "rules": [
            {"type": "AccountVolumeLimitRule", "metric": "notional", "daily_cap": 10},
            {"type": "HugeAmountRule", "name": "h", "daily_cap": 10},
        ]
    }
    events = [_fill(1, 100, price=1e308), _fill(2, 4, price=-1e308), _fill(3, 4, price=-1e308)]
    want, got = _both(config, events, store)
    assert [a["value"] for a in want] == [FLOAT_MAX, 100]
    _strict_json(want)
    assert got == want


def test_a_daily_cap_above_2_53_is_refused_naming_the_field_and_the_bound() -> None:
    for cap in (1e20, (1 << 53) + 2, float("inf")):
        with pytest.raises(ConfigError, match=r"rules\[0\]\.daily_cap: must be at most 2\*\*53 = 9007199254740992"):
            build_config({"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": cap}]})
    assert build_config({"rules": [{"type": "AccountVolumeLimitRule", "daily_cap": 1 << 53}]})
