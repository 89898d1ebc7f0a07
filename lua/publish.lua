#!lua
--[[ publish.lua - append a gateway's events to one shard's input stream, in order.

KEYS[1]  <prefix>:{s<N>}:in   the shard's input stream
ARGV     event, index, event, index, ...: each event's wire JSON and its line index ("" for
         none); each pair becomes one entry {e = event[, i = index]}
Returns  the number of entries added

One call per shard and chunk instead of one XADD each: the publisher's cost per event is then
the JSON encoding, not a Redis command's packing and parsing. Not atomic across shards (a
chunk's shards are separate calls); within the shard the entries keep their order.
]]

for k = 1, #ARGV, 2 do
  if ARGV[k + 1] == '' then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[k])
  else
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[k], 'i', ARGV[k + 1])
  end
end
return #ARGV / 2
