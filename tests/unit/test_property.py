"""Hypothesis: random small streams (a few accounts and contracts, two or three trading days,
duplicates, out-of-order and late events, bad events) through the engine and through a naive
model written straight from SEMANTICS.md must give the same output."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster_risk import RiskEngine, build_config
from cluster_risk.replay import replay_events
from tests.helpers import DAY, S, views

MAPPING = {"C1": "P1", "C2": "P1"}  # C3 is unmapped: its own product


class Model:
    """The contract, literally: bucket dicts, high-water times, per-account days, daily sums."""

    def __init__(self, config: dict[str, Any]) -> None:
        hour, minute = map(int, config["trading_day"]["start"].split(":"))
        self.tz = ZoneInfo(config["trading_day"]["timezone"])
        self.shift = (timedelta(days=1) - timedelta(hours=hour, minutes=minute)) % timedelta(days=1)
        self.rules = config["rules"]
        self.seen_oids: set[int] = set()
        self.seen_tids: set[int] = set()
        self.index: dict[int, tuple[str, str]] = {}
        self.own_day: dict[str, int] = {}  # latest day of each account's own events
        self.clock_day = -1  # latest day of any tick or reset
        self.buckets: list[dict[tuple[str, ...], dict[int, int]]] = [defaultdict(dict) for _ in self.rules]
        self.high: list[dict[tuple[str, ...], int]] = [{} for _ in self.rules]
        self.sums: list[dict[tuple[str, ...], dict[int, float]]] = [defaultdict(dict) for _ in self.rules]
        self.paused: list[dict[tuple[str, ...], int]] = [{} for _ in self.rules]  # key -> day it was set
        self.out: list[dict[str, Any]] = []

    # -- calendar
    def day(self, t: int) -> int:
        local = datetime.fromtimestamp(t // S, self.tz).replace(tzinfo=None)
        return (local + self.shift).date().toordinal()

    def start_of(self, day: int) -> int:
        local = datetime.combine(date.fromordinal(day), time(0)) - self.shift
        return int(local.replace(tzinfo=self.tz).timestamp()) * S

    def current_day(self, account: str) -> int:
        return max(self.own_day.get(account, -1), self.clock_day)

    # -- helpers
    def key(self, i: int, account: str, contract: str) -> tuple[str, ...]:
        values = {"account": account, "contract": contract, "product": MAPPING.get(contract, contract)}
        return tuple(values[d] for d in self.rules[i]["dimensions"])

    def emit(self, kind: str, i: int, key: tuple[str, ...], t: int, value: float, limit: float) -> None:
        rule = self.rules[i]
        scope = dict(zip(rule["dimensions"], key, strict=True))
        self.out.append(
            {"type": kind, "rule": rule["name"], "scope": scope, "timestamp": t, "value": value, "limit": limit}
        )

    def is_rate(self, i: int) -> bool:
        return self.rules[i]["type"] == "OrderRateLimitRule"

    def count(self, i: int, key: tuple[str, ...], at: int) -> int:
        rule = self.rules[i]
        b, k = rule["bucket_ns"], rule["window_ns"] // rule["bucket_ns"]
        return sum(self.buckets[i][key].get(j, 0) for j in range(at // b - k + 1, at // b + 1))

    def move_days(self, accounts: list[str], update: Any) -> None:
        """Apply ``update`` (which raises some D_a) and lift the daily pauses it ends."""
        before = {a: self.current_day(a) for a in accounts}
        update()
        lifted = []
        for a in accounts:
            new = self.current_day(a)
            if new <= before[a]:
                continue
            for i, rule in enumerate(self.rules):
                pos = rule["dimensions"].index("account") if not self.is_rate(i) else -1
                for key, set_on in self.paused[i].items():
                    if pos >= 0 and key[pos] == a and set_on < new:
                        lifted.append((i, key, new))
        for i, key, new in sorted(lifted):
            del self.paused[i][key]
            self.emit(
                "RESUME_ORDER", i, key, self.start_of(new), self.sums[i][key].get(new, 0), self.rules[i]["daily_cap"]
            )

    def own_event(self, account: str, t: int) -> None:
        def update() -> None:
            self.own_day[account] = max(self.own_day.get(account, -1), self.day(t))

        self.move_days([account], update)

    def clock(self, t: int) -> None:
        def update() -> None:
            self.clock_day = max(self.clock_day, self.day(t))

        self.move_days(sorted(self.own_day), update)

    # -- events
    def order(self, e: dict[str, Any]) -> None:
        if e["oid"] in self.seen_oids:
            return
        self.seen_oids.add(e["oid"])
        account, contract, t = e["account_id"], e["contract_id"], e["timestamp"]
        self.index[e["oid"]] = (account, contract)
        self.own_event(account, t)
        for i, rule in enumerate(self.rules):
            if not self.is_rate(i):
                continue
            key = self.key(i, account, contract)
            b, k = rule["bucket_ns"], rule["window_ns"] // rule["bucket_ns"]
            h = self.high[i][key] = max(self.high[i].get(key, t), t)
            if not t // b <= h // b - k:
                self.buckets[i][key][t // b] = self.buckets[i][key].get(t // b, 0) + 1
            n = self.count(i, key, h)
            resume = rule.get("resume_threshold", rule["threshold"])
            if key not in self.paused[i] and n > rule["threshold"]:
                self.paused[i][key] = 0
                self.emit("PAUSE_ORDER", i, key, t, n, rule["threshold"])
            elif key in self.paused[i] and n <= resume:
                del self.paused[i][key]
                self.emit("RESUME_ORDER", i, key, t, n, rule["threshold"])

    def trade(self, e: dict[str, Any], index: int) -> None:
        if e["tid"] in self.seen_tids:
            return
        account, contract = e.get("account_id"), e.get("contract_id")
        if e["oid"] in self.index:
            account = account or self.index[e["oid"]][0]
            contract = contract or self.index[e["oid"]][1]
        if account is None or contract is None:
            self.out.append({"error": "unknown_order", "field": "oid", "index": index})
            return
        self.seen_tids.add(e["tid"])
        t = e["timestamp"]
        d = self.day(t)
        self.own_event(account, t)
        for i, rule in enumerate(self.rules):
            if self.is_rate(i):
                continue
            key = self.key(i, account, contract)
            sums = self.sums[i][key]
            sums[d] = sums.get(d, 0) + (e["volume"] if rule["metric"] == "volume" else 1)
            if d == self.current_day(account) and key not in self.paused[i] and sums[d] > rule["daily_cap"]:
                self.paused[i][key] = d
                self.emit("PAUSE_ORDER", i, key, t, sums[d], rule["daily_cap"])

    def tick(self, t: int) -> None:
        self.clock(t)
        for i, rule in enumerate(self.rules):
            if not self.is_rate(i):
                continue
            for key in sorted(self.paused[i]):
                n = self.count(i, key, max(t, self.high[i][key]))
                if n <= rule.get("resume_threshold", rule["threshold"]):
                    del self.paused[i][key]
                    self.emit("RESUME_ORDER", i, key, t, n, rule["threshold"])

    def reset_daily(self, t: int) -> None:
        self.clock(t)
        d = self.day(t)
        for i, rule in enumerate(self.rules):
            if self.is_rate(i):
                continue
            for sums in self.sums[i].values():
                sums[d] = 0
            for key in sorted(self.paused[i]):
                self.emit("RESUME_ORDER", i, key, t, 0, rule["daily_cap"])
            self.paused[i].clear()

    def run(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for index, e in enumerate(events):
            kind = e["type"]
            if e.get("volume", 1) <= 0 or e["timestamp"] < 0:
                field = "volume" if e.get("volume", 1) <= 0 else "timestamp"
                self.out.append({"error": "invalid_field", "field": field, "index": index})
            elif kind == "order":
                self.order(e)
            elif kind == "trade":
                self.trade(e, index)
            elif kind == "tick":
                self.tick(e["timestamp"])
            else:
                self.reset_daily(e["timestamp"])
        return self.out


# ---------------------------------------------------------------- strategies

ACCOUNTS = st.sampled_from(["A", "B"])
CONTRACTS = st.sampled_from(["C1", "C2", "C3"])
ACCOUNT_DIMS = [["account"], ["account", "contract"], ["account", "product"], ["product", "account"]]


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    threshold = draw(st.integers(1, 3))
    bucket = draw(st.sampled_from([1000, 4000]))
    rate: dict[str, Any] = {
        "type": "OrderRateLimitRule",
        "name": "rate",
        "threshold": threshold,
        "bucket_ns": bucket,
        "window_ns": bucket * draw(st.integers(1, 6)),
        "dimensions": draw(st.sampled_from(ACCOUNT_DIMS[:2])),
    }
    if draw(st.booleans()):
        rate["resume_threshold"] = draw(st.integers(0, threshold))
    dailies = [
        {
            "type": "AccountVolumeLimitRule",
            "name": f"daily{n}",
            "daily_cap": draw(st.integers(1, 12)),
            "metric": draw(st.sampled_from(["volume", "count"])),
            "dimensions": draw(st.sampled_from(ACCOUNT_DIMS)),
        }
        for n in range(draw(st.integers(1, 2)))
    ]
    rules = [*dailies]
    rules.insert(draw(st.integers(0, len(dailies))), rate)
    timezone, start = draw(st.sampled_from([("UTC", "00:00"), ("Asia/Shanghai", "21:00")]))
    return {"contract_to_product": MAPPING, "rules": rules, "trading_day": {"timezone": timezone, "start": start}}


@st.composite
def streams(draw: st.DrawFn, config: dict[str, Any]) -> list[dict[str, Any]]:
    rate = next(r for r in config["rules"] if r["type"] == "OrderRateLimitRule")
    b, w = rate["bucket_ns"], rate["window_ns"]
    model = Model(config)
    first_day = date(2023, 3, 2).toordinal()
    now = model.start_of(first_day) - draw(st.integers(0, 3 * w))  # start just before a day boundary
    events: list[dict[str, Any]] = []
    oids: list[int] = []
    for _ in range(draw(st.integers(5, 40))):
        now += draw(st.sampled_from([0, 0, 0, 1, 1, b // 3, b // 3, b, w, DAY // 3]))
        t = now - draw(st.sampled_from([0, 0, 0, 0, b, w, w + b, DAY // 2]))  # out of order, late
        kind = draw(st.sampled_from(["order"] * 10 + ["trade"] * 6 + ["tick"] * 3 + ["reset_daily"]))
        if kind in ("tick", "reset_daily"):
            events.append({"type": kind, "timestamp": t})
            continue
        bad = draw(st.sampled_from([None] * 19 + ["volume", "timestamp"]))
        if kind == "order":
            e: dict[str, Any] = {
                "type": "order",
                "oid": draw(st.integers(1, 12)),
                "account_id": draw(ACCOUNTS),
                "contract_id": draw(CONTRACTS),
                "direction": draw(st.sampled_from(["BID", "ASK"])),
                "price": 100.0,
                "volume": draw(st.integers(1, 5)),
                "timestamp": t,
            }
        else:
            e = {
                "type": "trade",
                "tid": draw(st.integers(1, 12)),
                "oid": draw(st.sampled_from([*oids, 13])),  # mostly known orders, sometimes not
                "price": 100.0,
                "volume": draw(st.integers(1, 6)),
                "timestamp": t,
            }
            for field, values in (("account_id", ACCOUNTS), ("contract_id", CONTRACTS)):
                if draw(st.integers(0, 3)) == 0:
                    e[field] = draw(values)
        if bad is not None:
            e[bad] = 0 if bad == "volume" else -1
        elif kind == "order":
            oids.append(e["oid"])
        events.append(e)
    return events


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config = draw(configs())
    return config, draw(streams(config))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_engine_matches_the_naive_model(scenario: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    config, events = scenario
    engine = RiskEngine.from_config(build_config(config))
    assert views(replay_events(engine, events)) == Model(config).run(events)


def test_the_model_is_not_vacuous() -> None:
    """The model itself pauses, resumes, rolls over and rejects on a hand-made stream."""
    config = {
        "contract_to_product": MAPPING,
        "rules": [
            {"type": "OrderRateLimitRule", "name": "rate", "threshold": 1, "bucket_ns": 1000, "window_ns": 4000,
             "dimensions": ["account"]},
            {"type": "AccountVolumeLimitRule", "name": "daily0", "daily_cap": 3, "metric": "volume",
             "dimensions": ["account", "product"]},
        ],
        "trading_day": {"timezone": "UTC", "start": "00:00"},
    }  # fmt: skip
    t0 = Model(config).start_of(date(2023, 3, 2).toordinal())
    order = {"type": "order", "account_id": "A", "contract_id": "C1", "direction": "BID", "price": 1.0, "volume": 1}
    events = [
        {**order, "oid": 1, "timestamp": t0},
        {**order, "oid": 2, "timestamp": t0 + 1},
        {"type": "trade", "tid": 1, "oid": 2, "price": 1.0, "volume": 4, "timestamp": t0 + 2},
        {"type": "tick", "timestamp": t0 + 10_000},
        {**order, "oid": 3, "timestamp": t0 + DAY, "volume": 0},
        {"type": "tick", "timestamp": t0 + DAY},
    ]
    expected = [
        {"type": "PAUSE_ORDER", "rule": "rate", "scope": {"account": "A"}, "timestamp": t0 + 1, "value": 2, "limit": 1},
        {"type": "PAUSE_ORDER", "rule": "daily0", "scope": {"account": "A", "product": "P1"}, "timestamp": t0 + 2,
         "value": 4, "limit": 3},
        {"type": "RESUME_ORDER", "rule": "rate", "scope": {"account": "A"}, "timestamp": t0 + 10_000, "value": 0,
         "limit": 1},
        {"error": "invalid_field", "field": "volume", "index": 4},
        {"type": "RESUME_ORDER", "rule": "daily0", "scope": {"account": "A", "product": "P1"}, "timestamp": t0 + DAY,
         "value": 0, "limit": 3},
    ]  # fmt: skip
    assert Model(config).run(events) == expected
    engine = RiskEngine.from_config(build_config(config))
    assert views(replay_events(engine, events)) == expected
