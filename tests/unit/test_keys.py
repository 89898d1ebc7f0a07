"""lua/keys.lua builds the same shard keys as cluster_risk.keys, the one definition of the layout."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import fakeredis
import lupa.lua51 as lupa  # fakeredis[lua]'s runtime; Lua 5.1, as in Redis
import pytest

from cluster_risk.keys import MANUAL, Keys, scope_key, scope_values, shard_base, shard_of
from cluster_risk.state.redis import RedisStore

KEYS_LUA = Path(__file__).parents[2] / "lua" / "keys.lua"
SHARD = 3
ON = date(2026, 12, 7)  # a trading day for the day-named keys
RULE = scope_key(["Order:Rate%Limit"])  # a rule name as the scripts get it: a scope key

# keys.lua's functions that name no key of their own: the base of a meta key, the day format
NOT_KEYS = {"base", "iso_day"}


def _lua_keys() -> Any:
    runtime = lupa.LuaRuntime()
    text = KEYS_LUA.read_text(encoding="utf-8").removeprefix("#!lua\n")
    return runtime.execute(text + "\nreturn keys")


def _python(keys: Keys) -> dict[str, tuple[tuple[Any, ...], str]]:
    """keys.lua's function -> (its arguments after the base, the key cluster_risk.keys names)."""
    iso, ordinal = ON.isoformat(), ON.toordinal()
    return {
        "acct": ((), keys.acct(SHARD)),
        "win": ((RULE,), keys.window(SHARD, RULE)),
        "winc": ((RULE,), keys.window_chunks(SHARD, RULE)),
        "day": ((ordinal, RULE), keys.day(SHARD, iso, RULE)),
        "paused": ((RULE,), keys.pauses(SHARD, RULE)),
        "ids_block": ((ordinal, "o12"), keys.ids_block(SHARD, iso, "o12")),
        "ids_blocks": ((ordinal,), keys.ids_blocks(SHARD, iso)),
    }


def test_every_key_keys_lua_builds_is_the_one_cluster_risk_keys_names() -> None:
    lua = _lua_keys()
    keys = Keys("risk", 16)
    expected = _python(keys)
    defined = set(re.findall(r"^function keys\.(\w+)\(", KEYS_LUA.read_text(encoding="utf-8"), re.M))
    assert defined - NOT_KEYS == set(expected), "a key function of keys.lua has no twin in cluster_risk.keys"
    base = lua.base(keys.meta(SHARD))
    assert base == keys.base(SHARD) == shard_base("risk", SHARD)
    for name, (args, key) in expected.items():
        function: Callable[..., str] = lua[name]
        assert function(base, *args) == key, name


def test_the_day_keys_lua_writes_is_the_iso_date_for_every_ordinal() -> None:
    lua = _lua_keys()
    for day in (date(1, 1, 1), date(1970, 1, 1), date(2000, 2, 29), ON, date(9999, 12, 31)):
        assert lua.iso_day(day.toordinal()) == day.isoformat()


def test_the_store_the_cluster_and_keys_agree() -> None:
    keys = Keys("p", 8)
    store = RedisStore(fakeredis.FakeRedis(), prefix="p", num_shards=8)
    assert store.meta_key(5) == keys.meta(5)
    assert store.key(5, "acct") == keys.acct(5)
    assert keys.paused(2, "OrderRateLimitRule") == store.key(2, "paused:OrderRateLimitRule")
    assert keys.manual(1) == keys.pauses(1, MANUAL)
    assert keys.shard_of("ACC\ud800") == shard_of("ACC\ud800", 8)


@pytest.mark.parametrize("values", [("A",), ("a:b", "%", "\x00\x1f\x7f"), ("", "x")])
def test_a_scope_key_splits_back_exactly(values: tuple[str, ...]) -> None:
    assert scope_values(scope_key(values)) == values
