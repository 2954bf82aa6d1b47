-- A cook picks a ticket up: queued -> in_progress, announced by production.started.
-- (The ticket states are domain.TRANSITIONS; this script applies them atomically.)
--
-- KEYS: 1 ticket:<id>  2 tickets:queued  3 tickets:in_progress  4 outbox  5 kitchen:paused
-- ARGV: 1 ticket id  2 started at (ISO)  3 .. the production.started outbox entry's fields
-- Returns 'started' | 'resumed' (in progress already: a cook died with it)
--       | 'paused' (the line is paused: hold it) | 'skip'
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'in_progress' then
  return 'resumed'
end
if status ~= 'queued' then
  return 'skip'  -- cancelled, done, or unknown
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return 'paused'
end
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'started_at', ARGV[2])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0'
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 3))
return 'started'
