"""The Lua twins against their Python originals, primitive by primitive: window.lua against
memory.SlidingWindow, the trading-day key names against date.isoformat, daily sums' text
against Python's numbers. On fakeredis and on a real redis-server."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis

from cluster_risk.state.memory import SlidingWindow
from tests.redis.servers import RedisServer

LUA = Path(__file__).parents[2] / "lua"


def library(name: str) -> str:
    return (LUA / name).read_text(encoding="utf-8").split("\n", 1)[1]


@pytest.fixture(params=["fakeredis", "redis"])
def run_lua(request: pytest.FixtureRequest) -> Callable[[list[str], str, str], Any]:
    """``run_lua(libraries, body, arg)``: the libraries, then ``body``, run with ARGV[1] = arg."""
    if request.param == "fakeredis":
        client: Any = fakeredis.FakeRedis()
        shims = [library("struct_shim.lua")]  # fakeredis has no struct
    else:
        server: RedisServer = request.getfixturevalue("standalone")
        client = redis.Redis(port=server.port)
        shims = []

    def run(libraries: list[str], body: str, arg: str) -> Any:
        # builtins.lua (then codes.lua) first and bound before the body, as every script that
        # includes libraries does
        names = ["builtins.lua", "codes.lua", *libraries]
        script = "\n".join([*shims, *(library(name) for name in names), "builtins.bind()", body])
        return json.loads(client.eval(script, 0, arg))

    return run


CHUNKS = """
local chunks = {} -- the older buckets (window.lua's backend), kept in a Lua table here
window.backend = {
  get = function(_, n) return chunks[n] end,
  set = function(_, n, chunk) chunks[n] = chunk end,
  del = function(_, n) chunks[n] = nil end,
}
-- a tick's count at bucket c (at the group's high-water bucket when that is later)
local function count_at(w, c, K)
  if w.hb and w.hb > c then c = w.hb end
  return window.count_at(w, c, K)
end
"""

WINDOW_HARNESS = (
    CHUNKS
    + """
local p = cjson.decode(ARGV[1])
local K, threshold, resume = p[1], p[2], p[3]
local w, out = window.decode(nil), {}
for i, op in ipairs(p[4]) do
  if op[1] == 1 then
    local code = window.hit(w, op[2], K, threshold, resume)
    out[#out + 1] = {code, w.n}
  else
    out[#out + 1] = {0, count_at(w, op[2], K)}
  end
  if i % 3 == 0 then w = window.decode(window.encode(w)) end -- as between two batches
end
return cjson.encode(out)
"""
)


def _window_case(rnd: random.Random, k: int, steps: list[int], late: list[int], n: int) -> tuple[list[Any], Any]:
    """Random hits and counts on one SlidingWindow: (K, threshold, resume, ops) and its answers."""
    bucket = rnd.choice([1024, 1_000_000])
    threshold = rnd.randint(1, 8)
    resume = rnd.randint(0, threshold)
    window = SlidingWindow(("A",), k * bucket, bucket, threshold, resume)
    t = 1_795_000_000_000_000_000 // bucket * bucket
    ops: list[list[int]] = []
    expected: list[list[int]] = []
    for _ in range(n):
        t += rnd.choice(steps) * bucket // 3
        if rnd.random() < 0.15:  # a tick's count at some time at or after the group's high water
            at = t + rnd.choice([0, bucket, k * bucket])
            ops.append([2, at // bucket])
            expected.append([0, window.count_at(at)])
            continue
        hit = t - rnd.choice(late) * bucket if rnd.random() < 0.3 else t
        ops.append([1, hit // bucket])
        code = window.hit(hit)
        expected.append([code, window.count()])
    return [k, threshold, resume, ops], expected


@pytest.mark.parametrize("seed", range(8))
def test_window_lua_is_the_sliding_window(run_lua: Callable[..., Any], seed: int) -> None:
    rnd = random.Random(seed)
    k = rnd.choice([1, 2, 5, 10, 100])
    # steps in thirds of a bucket: none, a third, one bucket, two, half the window, 3 windows
    steps = [0, 1, 3, 6, 3 * (k // 2) + 3, 9 * k]
    case, expected = _window_case(rnd, k, steps, [0, 0, 0, 1, k // 2, 2 * k], 400)
    assert run_lua(["window.lua"], WINDOW_HARNESS, json.dumps(case)) == expected


@pytest.mark.parametrize("seed", range(4))
def test_window_lua_keeps_long_windows_in_chunks(run_lua: Callable[..., Any], seed: int) -> None:
    """Hundreds of live buckets: older buckets move to chunks, leave the window from there, and
    late hits land among them."""
    rnd = random.Random(100 + seed)
    k = 300
    case, expected = _window_case(rnd, k, [0, 3, 3, 3, 6, 1], [0, 1, 50, 200, 299, 400], 2000)
    assert max(n for _, n in expected) > 40  # more live hits than the hot part keeps (HOT_MAX)
    assert run_lua(["window.lua"], WINDOW_HARNESS, json.dumps(case)) == expected


RAW_HARNESS = (
    CHUNKS
    + """
local p = cjson.decode(ARGV[1])
local K, threshold, resume = p[1], p[2], p[3]
local s, out, raw, differ = nil, {}, 0, {}
for i, op in ipairs(p[4]) do
  local w = window.decode(s)
  if op[1] == 1 then
    local v, rcode, rn = window.hit_raw(s, op[2], K, threshold, resume)
    local code = window.hit(w, op[2], K, threshold, resume)
    s = window.encode(w)
    if v then
      raw = raw + 1
      if v ~= s or rcode ~= code or rn ~= w.n then differ[#differ + 1] = i end
    end
    out[#out + 1] = {code, w.n}
  else
    out[#out + 1] = {0, count_at(w, op[2], K)}
  end
end
return cjson.encode({out, raw, differ})
"""
)


@pytest.mark.parametrize("seed", range(6))
def test_window_hit_raw_equals_decode_hit_encode(run_lua: Callable[..., Any], seed: int) -> None:
    """The value-to-value hit (the apply script's common case) writes exactly what decoding,
    hitting and encoding would, with the same code and count, wherever it applies; the
    answers still are the SlidingWindow's."""
    rnd = random.Random(200 + seed)
    k = rnd.choice([2, 10, 300])
    steps = [0, 1, 3, 3, 6, 3 * (k // 2) + 3] if k < 300 else [0, 3, 3, 3, 6, 1]
    case, expected = _window_case(rnd, k, steps, [0, 0, 1, k // 2, 2 * k], 1500)
    answers, raw, differ = run_lua(["window.lua"], RAW_HARNESS, json.dumps(case))
    assert answers == expected
    assert not differ  # (cjson writes an empty table as {} on Redis, [] on fakeredis)
    hits = sum(1 for op in case[3] if op[0] == 1)
    assert 0 < raw < hits  # both paths ran: the fast one and the table one it falls back to


def test_trading_day_keys_name_the_date(run_lua: Callable[..., Any]) -> None:
    days = [1, 59, 60, 366, 719163, 730119, 738886, 739000, 767011, 3652059]
    days += random.Random(1).sample(range(1, 3652059), 300)
    body = (
        "local out = {} for i, d in ipairs(cjson.decode(ARGV[1])) do out[i] = keys.iso_day(d) end "
        "return cjson.encode(out)"
    )
    assert run_lua(["keys.lua"], body, json.dumps(days)) == [date.fromordinal(d).isoformat() for d in days]


def test_daily_sums_keep_their_python_type_and_value(run_lua: Callable[..., Any]) -> None:
    rnd = random.Random(2)
    cases = [(rnd.randint(0, 2**40), False) for _ in range(50)]
    cases += [(rnd.uniform(0, 1e6) * rnd.choice([1, 1e-9, 1e12]), True) for _ in range(200)]
    cases += [(0.1 + 0.2, True), (200.0, True), (1e20, True), (5e-324, True), (0, False)]
    body = """
local out = {}
for i, c in ipairs(cjson.decode(ARGV[1])) do
  local s = daily.format(tonumber(c[1]), c[2] == 1)
  local x, isfloat = daily.parse(s)
  out[i] = {s, daily.format(x, isfloat)}
end
return cjson.encode(out)
"""
    arg = json.dumps([[repr(value), int(isfloat)] for value, isfloat in cases])
    for (value, isfloat), (text, again) in zip(cases, run_lua(["daily_sum.lua"], body, arg), strict=True):
        assert text == again  # parse(format(x)) == x, type included
        parsed = float(text) if isfloat else int(text)
        assert parsed == value and isinstance(parsed, float) == isfloat
        assert isfloat == any(c in text for c in ".en")
