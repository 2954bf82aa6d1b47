-- A cook hands a ticket over: in_progress -> done, announced by order.finished.
-- A ticket cancelled while it cooked stays cancelled and is not announced.
-- Either way the ticket's kitchen entry leaves the stream in the same step: it is acknowledged
-- exactly when the ticket is done (a crash before this script leaves both to be taken over,
-- after it neither), and without a round trip of its own.
--
-- KEYS: 1 ticket:<id>  2 tickets:in_progress  3 tickets:done  4 outbox  5 kitchen
-- ARGV: 1 ticket id  2 finished at (ISO)  3 cooks' group  4 kitchen entry id
--       5 .. the order.finished outbox entry's fields
-- Returns 'finished' | 'skip'
redis.call('XACK', KEYS[5], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[5], ARGV[4])
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then
  return 'skip'
end
redis.call('HSET', KEYS[1], 'status', 'done', 'finished_at', ARGV[2])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0'
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 5))
return 'finished'
