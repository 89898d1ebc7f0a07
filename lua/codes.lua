#!lua
--[[ codes.lua - library: result codes and fixed reason texts, as locals of the script.

GENERATED from cluster_risk/state/codes.py (`python -m cluster_risk.state.codes`); do not
edit: tests/unit/test_codes.py fails when this file and the Python table differ.
Included right after builtins.lua by every script that uses the names.
]]

local NO_CHANGE, PAUSED, RESUMED = 0, 1, 2
local DUPLICATE, PAUSE, RESUME, ROLLOVER, TICK_RESUME, RESET_RESUME = 1, 2, 3, 4, 5, 6
local ROLLOVER_REASON, RESET_REASON = 'trading day rolled over to ', 'manual daily reset'
