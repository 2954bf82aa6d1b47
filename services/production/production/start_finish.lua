-- A kitchen with no preparation time starts and finishes a ticket in one step: start.lua, then,
-- if it started (or resumed) the ticket, finish.lua, atomically. Both events are appended in
-- order, production.started before order.finished, just as the two steps would append them; a
-- cancellation simply cannot land between them. One round trip instead of two.
--
-- layout.script (layout.py) puts the two scripts' text in place of the comments below, each as the body of a
-- function taking the KEYS and ARGV it expects: their rules exist once, in their own files.
--
-- KEYS: 1-5 start.lua's keys   6-10 finish.lua's keys
-- ARGV: 1 n = number of start.lua's arguments   2 .. 1+n start.lua's   2+n .. finish.lua's
-- Returns 'finished' (started, or resumed, and finished) | start.lua's 'paused' | 'skip'
local start = function(KEYS, ARGV)
--[[ start.lua ]]
end
local finish = function(KEYS, ARGV)
--[[ finish.lua ]]
end
local n = tonumber(ARGV[1])
local outcome = start({unpack(KEYS, 1, 5)}, {unpack(ARGV, 2, 1 + n)})
if outcome ~= 'started' and outcome ~= 'resumed' then
  return outcome
end
return finish({unpack(KEYS, 6, 10)}, {unpack(ARGV, 2 + n)})  -- 'finished': it is in progress
