#!lua
--[[ emit.lua - library: a worker batch's outputs, written in the same script call as the
state (apply.lua, after shard.flush): the actions, the dead letters and the input cursor.

KEYS / ARGV: those of fence.lua (W holds them). Reads only X.out, the result records
{pos, code, r, scope key, value} (codes.lua: DUPLICATE, PAUSE, RESUME by an order, ROLLOVER
resume, TICK_RESUME, RESET_RESUME), so it does not depend on the plan format.

W.x (the extras, built by cluster_risk/cluster/render.py):
  x[4] rules[r]    {config index, kind "w"|"d", name JSON, {dimension JSON...}, limit JSON,
                    pause reason prefix, pause suffix, resume prefix, resume suffix}
  x[5] events[pos] "<timestamp> <start of its trading day> <its trading day YYYY-MM-DD>"
  x[6] stateless   flat list pos, config index, action JSON, ... (verdicts of stateless rules,
                    computed by Python: dropped when the event turns out to be a duplicate)
  x[7] dead        {{entry id, index, error, field, reason, excerpt of the raw event, its
                    length in bytes}, ...}
  x[8] maxlen      approximate cap of the actions stream (0: none)
  x[9] channel     (optional) publish the hint here as {shard, previous id, id, JSON, ...}, in
                   the codec of the call (msgpack, or JSON), as soon as the batch is applied
  x[10] shard      the shard number that message starts with

Actions of one event come in the contract's order (SEMANTICS.md): rollover resumes first,
by (rule, scope values), then the event's own actions in rule (config) order; for a tick or
a reset, the rollover resumes, then its own resumes, each by (rule, scope values). Each goes
to the actions stream as one entry {a = action JSON, conformance keys then reason}.

  emit.run(W, X) -> hint {previous action id, id, JSON, id, JSON, ...}: the latency hint, for
  gateways; a client that had seen `previous` applies it, any other resyncs. Published here
  when x[9] names a channel (the worker's fast durability: a gateway sees the action without
  waiting for the rest of the worker's pipeline), else by the worker (after WAIT).
]]

local emit = {}

local function bytes_lt(a, b) -- byte order (Python's code point order); `<` would use the locale
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function values(key)
  local out = {}
  for part in string.gmatch(key .. ':', '([^:]*):') do
    out[#out + 1] = string.gsub(part, '%%(%x%x)', function(h) return string.char(tonumber(h, 16)) end)
  end
  return out
end

local function scope_lt(p, q) -- p = {config index, values, ...}
  if p[1] ~= q[1] then return p[1] < q[1] end
  for i = 1, #p[2] do
    if p[2][i] ~= q[2][i] then return bytes_lt(p[2][i], q[2][i]) end
  end
  return false
end

-- an id's JSON string: cjson passes bytes >= 0x80 through, so a lone surrogate (sent by
-- Python as UTF-8 with surrogatepass: ED A0..BF 80..BF, cluster_risk/keys.py) would make the
-- action invalid UTF-8; it is written as the \uXXXX escape Python's json writes
local function surrogate(b, c)
  return string.format('\\u%04x', 53248 + (string.byte(b) - 128) * 64 + string.byte(c) - 128) -- 0xD000 + ...
end

local function id_json(s)
  return (string.gsub(cjson.encode(s), '\237([\160-\191])([\128-\191])', surrogate))
end

local function render(R, kind, vals, ts, value, reason)
  local scope = {}
  for i, d in ipairs(R[4]) do scope[i] = d .. ':' .. id_json(vals[i]) end
  return '{"type":"' .. kind .. '_ORDER","rule":' .. R[3] .. ',"scope":{' .. table.concat(scope, ',')
    .. '},"timestamp":' .. ts .. ',"value":' .. value .. ',"limit":' .. R[5]
    .. ',"reason":' .. cjson.encode(reason) .. '}'
end

local function action(x, rec)
  local R, code = x[4][rec[3]], rec[2]
  local ev = {string.match(x[5][rec[1]], '^(%S+) (%S+) (.+)$')} -- a day's start may be negative
  local v = rec[5]
  if type(v) == 'number' then v = string.format('%d', v) end
  local vals = values(rec[4])
  local json
  if code == PAUSE then
    json = render(R, 'PAUSE', vals, ev[1], v, R[6] .. v .. R[7])
  elseif code == ROLLOVER then
    json = render(R, 'RESUME', vals, ev[2], v, ROLLOVER_REASON .. ev[3])
  elseif code == RESET_RESUME then
    json = render(R, 'RESUME', vals, ev[1], v, RESET_REASON)
  else
    json = render(R, 'RESUME', vals, ev[1], v, R[8] .. v .. R[9])
  end
  return {R[1], vals, json}
end

-- The actions of one event, in order (records: that event's result records).
local function event_actions(x, records, verdicts)
  local rolled, own = {}, {}
  for _, rec in ipairs(records) do
    if rec[2] == DUPLICATE then return {} end -- a duplicate emits nothing, stateless rules included
    if rec[2] == ROLLOVER then rolled[#rolled + 1] = action(x, rec) else own[#own + 1] = action(x, rec) end
  end
  for _, v in ipairs(verdicts) do own[#own + 1] = {v[1], {}, v[2]} end
  table.sort(rolled, scope_lt)
  table.sort(own, scope_lt)
  local out = {}
  for _, a in ipairs(rolled) do out[#out + 1] = a[3] end
  for _, a in ipairs(own) do out[#out + 1] = a[3] end
  return out
end

-- The worker cursor and the count of entries applied, in one HSET (the count was read with
-- the epoch: one redis.call less than an HINCRBY, in every call of the worker).
local function advance(W, x, last)
  local cursor = {'applied', string.format('%.0f', W.applied + x[3])}
  if x[2] ~= '' then
    cursor[3], cursor[4] = 'sid', x[2]
  end
  if last then
    cursor[#cursor + 1] = 'aid'
    cursor[#cursor + 1] = last
  end
  redis.call('HSET', W.lease, unpack(cursor))
end

function emit.run(W, X)
  local x = W.x
  if #X.out == 0 and #x[6] == 0 and #x[7] == 0 then -- most small batches: nothing to emit
    advance(W, x, nil)
    return {W.aid}
  end
  -- only the events with records or verdicts can emit: visit those, in event order
  local by_pos, verdicts, positions = {}, {}, {}
  for _, rec in ipairs(X.out) do
    local l = by_pos[rec[1]]
    if not l then
      l = {}
      by_pos[rec[1]] = l
      positions[#positions + 1] = rec[1]
    end
    l[#l + 1] = rec
  end
  local sl = x[6]
  for i = 1, #sl, 3 do
    local l = verdicts[sl[i]]
    if not l then
      l = {}
      verdicts[sl[i]] = l
      if not by_pos[sl[i]] then positions[#positions + 1] = sl[i] end
    end
    l[#l + 1] = {sl[i + 1], sl[i + 2]}
  end
  table.sort(positions)
  local hint, last = {W.aid}, nil -- W.aid: the lease's last action id, read by fence.check_epoch
  local maxlen = tonumber(x[8]) or 0
  for _, pos in ipairs(positions) do
    for _, json in ipairs(event_actions(x, by_pos[pos] or {}, verdicts[pos] or {})) do
      if maxlen > 0 then
        last = redis.call('XADD', W.actions, 'MAXLEN', '~', maxlen, '*', 'a', json)
      else
        last = redis.call('XADD', W.actions, '*', 'a', json)
      end
      hint[#hint + 1] = last
      hint[#hint + 1] = json
    end
  end
  for _, d in ipairs(x[7]) do
    redis.call('XADD', W.dead, '*', 'entry', d[1], 'index', d[2], 'error', d[3], 'field', d[4],
      'reason', d[5], 'event', d[6], 'length', d[7])
  end
  advance(W, x, last)
  if x[9] and #hint > 1 then
    local message = {x[10]}
    for i = 1, #hint do message[i + 1] = hint[i] end
    if W.json then message = cjson.encode(message) else message = cmsgpack.pack(message) end
    redis.call('PUBLISH', x[9], message)
  end
  return hint
end
