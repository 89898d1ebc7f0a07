#!lua
--[[ constants.lua - library: a call's constant argument (the rules), decoded once per server.

KEYS / ARGV: none. Included into apply.lua (`--@include constants.lua`), which passes the
rules of the sender's configuration in an argument of their own (ARGV[6]): the same bytes in
every call of a deployment.

Why: cmsgpack builds every table it decodes without a size, so each grows by rehashing, and
each string is hashed byte by byte as it is made. The rules (and, for a worker, the texts
that render its actions) were a third of the values and half of the tables a worker's call
of 5 events decoded. As a Redis Function library this table outlives its calls, so a blob
seen before is not decoded again; under EVALSHA it lives for one call (no gain, same result).

  constants.decode(blob, json) -> the decoded value, shared by every call that passes the same
                                  blob: read it, never change it
  constants.derived(v, build) -> build(v), computed once per decoded value v (what a script
                                  derives from the rules: the same for every call)
]]

local constants = {}

local decoded, derived, size = {}, {}, 0
local KEEP = 8 -- distinct blobs kept (one per configuration that calls this server)

function constants.decode(blob, json)
  local v = decoded[blob]
  if v == nil then
    if json then v = cjson.decode(blob) else v = cmsgpack.unpack(blob) end
    if size >= KEEP then decoded, derived, size = {}, {}, 0 end
    decoded[blob] = v
    size = size + 1
  end
  return v
end

function constants.derived(v, build)
  local d = derived[v]
  if d == nil then
    d = build(v)
    derived[v] = d
  end
  return d
end
