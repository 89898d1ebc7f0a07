#!lua
--[[ builtins.lua - library, included first: Lua's standard libraries as locals of the script.

KEYS / ARGV: none. Included first into every script that includes other libraries
(`--@include builtins.lua`); the script's body calls `builtins.bind()` before anything else.

Why: in a Redis Function (apply.lua runs as one) the globals table is empty and reaches Redis's
globals through an __index metatable, so each `string.sub` or `tonumber` is a failed look-up,
a metatable fetch and a second look-up: ~250 instructions, where an upvalue costs one. The
libraries' own names below are locals that shadow the globals for all the code after them.
A Function library's top level runs at FUNCTION LOAD, where these globals do not exist, so
they are bound by the first call (under EVALSHA, where each call runs the whole script: by
every call; one code path).

  builtins.bind()   string, struct, math, table, tonumber, type, pairs, ipairs, unpack, and for
                    the hot path the functions struct_pack, struct_unpack (one upvalue, not an
                    upvalue and a field look-up); once: the standard libraries are the same
                    tables for the life of the server's Lua
]]

-- defined before the locals below, so these names are the globals here
local function globals() return string, struct, math, table, tonumber, type, pairs, ipairs, unpack end

local string, struct, math, table, tonumber, type, pairs, ipairs, unpack
local struct_pack, struct_unpack
local builtins = {}

local bound = false
function builtins.bind()
  if bound then return end
  bound = true
  string, struct, math, table, tonumber, type, pairs, ipairs, unpack = globals()
  struct_pack, struct_unpack = struct.pack, struct.unpack
end
