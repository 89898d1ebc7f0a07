#!lua
--[[ publish.lua - append a gateway's events to one shard's input stream, in order, once.

KEYS[1]  <prefix>:{s<N>}:in          the shard's input stream
KEYS[2]  <prefix>:{s<N>}:pub:<id>    the publisher's last sequence number on this shard
ARGV[1]  the events' wire JSON, separated by "\n" (JSON text holds no raw newline)
ARGV[2]  their line indices, separated by "\n", an empty one for an event without; or "" when
         no event has one
ARGV[3]  this call's sequence number (decimal, increasing per publisher and shard)
ARGV[4]  TTL of KEYS[2] in seconds
Returns  the number of entries added; 0 for a call whose number is not above the last one
         seen (a retry of a call that was applied but whose reply was lost: nothing twice)

Each event becomes one entry {e = event[, i = index]}. One call per shard and chunk, with the
events in two arguments: the publisher's cost per event is then the JSON text, not a Redis
command's packing and parsing. Not atomic across shards (a chunk's shards are separate
calls); within the shard the entries keep their order.
]]

local seq = tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
if seq <= last then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])

local events, indices = ARGV[1], ARGV[2]
local elen, ilen = #events, #indices
local ep, ip, n = 1, 1, 0
while ep <= elen do
  local ee = string.find(events, '\n', ep, true) or (elen + 1)
  local event = string.sub(events, ep, ee - 1)
  local index = ''
  if ilen > 0 then
    local ie = string.find(indices, '\n', ip, true) or (ilen + 1)
    index = string.sub(indices, ip, ie - 1)
    ip = ie + 1
  end
  if index == '' then
    redis.call('XADD', KEYS[1], '*', 'e', event)
  else
    redis.call('XADD', KEYS[1], '*', 'e', event, 'i', index)
  end
  ep = ee + 1
  n = n + 1
end
return n
