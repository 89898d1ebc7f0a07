"""Result codes and fixed reason texts: the one table Python and Lua share.

A state primitive's *transition* (memory.py's ``SlidingWindow``/``DailySum``, lua/window.lua)
says whether a step paused or resumed its group.  An apply *record* (lua/apply.lua's result,
read by :mod:`cluster_risk.remote` and lua/emit.lua) says what happened to one event.

``lua/codes.lua`` is generated from this module (``python -m cluster_risk.state.codes``
rewrites it); tests/unit/test_codes.py fails when the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = [
    "NO_CHANGE",
    "PAUSED",
    "RESUMED",
    "DUPLICATE",
    "PAUSE",
    "RESUME",
    "ROLLOVER",
    "TICK_RESUME",
    "RESET_RESUME",
    "ROLLOVER_REASON",
    "RESET_REASON",
    "TRANSITIONS",
    "RECORDS",
    "TEXTS",
    "lua_source",
]

# Transitions of a group after one step (0 is falsy: the hot path tests ``if code``).
TRANSITIONS: dict[str, int] = {"NO_CHANGE": 0, "PAUSED": 1, "RESUMED": 2}
NO_CHANGE = TRANSITIONS["NO_CHANGE"]
PAUSED = TRANSITIONS["PAUSED"]
RESUMED = TRANSITIONS["RESUMED"]

# apply.lua's record codes: record = {pos, code, rule, scope key, value}.
RECORDS: dict[str, int] = {
    "DUPLICATE": 1,  # the event was a duplicate (no other fields)
    "PAUSE": 2,  # a pause, by an order or trade
    "RESUME": 3,  # a window resume, by an order
    "ROLLOVER": 4,  # a daily pause lifted by a trading-day rollover
    "TICK_RESUME": 5,  # a window resume, by a tick
    "RESET_RESUME": 6,  # a daily pause lifted by a manual reset
}
DUPLICATE = RECORDS["DUPLICATE"]
PAUSE = RECORDS["PAUSE"]
RESUME = RECORDS["RESUME"]
ROLLOVER = RECORDS["ROLLOVER"]
TICK_RESUME = RECORDS["TICK_RESUME"]
RESET_RESUME = RECORDS["RESET_RESUME"]

# Reason texts that do not depend on a rule (the rules' own: cluster_risk.front).
TEXTS: dict[str, str] = {
    "ROLLOVER_REASON": "trading day rolled over to ",  # + the new day, YYYY-MM-DD
    "RESET_REASON": "manual daily reset",
}
ROLLOVER_REASON = TEXTS["ROLLOVER_REASON"]
RESET_REASON = TEXTS["RESET_REASON"]

LUA_FILE = "codes.lua"


def _lua_string(text: str) -> str:
    assert "'" not in text and "\\" not in text and text.isprintable()
    return f"'{text}'"


def lua_source() -> str:
    """The text of ``lua/codes.lua``: every name above as a local of the including script."""
    lines = [
        "#!lua",
        "--[[ codes.lua - library: result codes and fixed reason texts, as locals of the script.",
        "",
        "GENERATED from cluster_risk/state/codes.py (`python -m cluster_risk.state.codes`); do not",
        "edit: tests/unit/test_codes.py fails when this file and the Python table differ.",
        "Included right after builtins.lua by every script that uses the names.",
        "]]",
        "",
    ]
    for table in (TRANSITIONS, RECORDS):
        names = ", ".join(table)
        values = ", ".join(str(v) for v in table.values())
        lines.append(f"local {names} = {values}")
    names = ", ".join(TEXTS)
    values = ", ".join(_lua_string(v) for v in TEXTS.values())
    lines.append(f"local {names} = {values}")
    return "\n".join(lines) + "\n"


def lua_path() -> Path:
    """``lua/codes.lua`` of this source checkout."""
    return Path(__file__).resolve().parents[2] / "lua" / LUA_FILE


if __name__ == "__main__":  # pragma: no cover - a maintainer's command
    lua_path().write_text(lua_source(), encoding="utf-8")
    sys.stdout.write(f"wrote {lua_path()}\n")
