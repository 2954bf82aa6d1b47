-- Announce that the kitchen cannot make an order (reserve.lua found stock short), exactly once.
--
-- KEYS: 1 inbox:<event id>  2 cancelled:<order id>  3 order-ticket:<order id>  4 outbox
-- ARGV: 1 inbox ttl (s)  2 .. the production.failed outbox entry's fields
-- Returns 'failed' | 'duplicate' | 'cancelled' | 'exists'
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then
  return 'duplicate'  -- a concurrent delivery of the same event got here first
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'cancelled'  -- cancelled meanwhile: nobody waits for the failure any more
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return 'exists'
end
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 2))
return 'failed'
