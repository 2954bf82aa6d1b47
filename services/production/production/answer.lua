-- Announce an event in answer to a consumed one, exactly once: the inbox mark and the outbox
-- entry in one step.
--
-- KEYS: 1 inbox:<event id>  2 outbox
-- ARGV: 1 inbox ttl (s)  2 .. the answer's outbox entry fields
-- Returns 'announced' | 'duplicate'
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then
  return 'duplicate'
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
return 'announced'
