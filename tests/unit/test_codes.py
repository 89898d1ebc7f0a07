"""One table of result codes and fixed reason texts for Python and Lua (cluster_risk/state/codes.py)."""

from __future__ import annotations

import re
from pathlib import Path

from cluster_risk.state import codes, memory

LUA = Path(__file__).resolve().parents[2] / "lua"


def test_lua_codes_are_generated_from_the_python_table() -> None:
    assert (LUA / "codes.lua").read_text(encoding="utf-8") == codes.lua_source(), (
        "lua/codes.lua is stale: run python -m cluster_risk.state.codes"
    )


def test_memory_primitives_use_the_shared_transitions() -> None:
    assert (memory.NO_CHANGE, memory.PAUSED, memory.RESUMED) == (0, 1, 2)
    assert memory.PAUSED is codes.PAUSED and memory.RESUMED is codes.RESUMED


def test_codes_are_distinct_within_each_table() -> None:
    for table in (codes.TRANSITIONS, codes.RECORDS):
        assert len(set(table.values())) == len(table)
    assert codes.NO_CHANGE == 0  # the hot path tests `if code`


def test_lua_scripts_use_names_not_numbers_for_codes() -> None:
    """The scripts that write or read records name the codes (no bare record numbers)."""
    apply = (LUA / "apply.lua").read_text(encoding="utf-8")
    assert not re.search(r"X\.out\[#X\.out \+ 1\] = \{pos, \d", apply)
    rollover = (LUA / "rollover.lua").read_text(encoding="utf-8")
    assert not re.search(r"lift\(X, pos, \d", rollover)
    emit = (LUA / "emit.lua").read_text(encoding="utf-8")
    assert not re.search(r"code == \d|rec\[2\] == \d", emit)
    for text in codes.TEXTS.values():
        assert text not in emit  # the fixed reasons come from codes.lua
    for script in ("apply.lua", "inspect.lua"):
        body = (LUA / script).read_text(encoding="utf-8")
        assert "--@include builtins.lua\n--@include codes.lua\n" in body
