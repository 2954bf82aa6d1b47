-- Drop an order's ticket: a queued one gives its stock back, one in progress just stops (its
-- stock is used), a done one stays done. The tombstone stops a late order.received from
-- queueing a ticket for the cancelled order. Announces nothing: payment compensates.
--
-- KEYS: 1 inbox:<event id>  2 cancelled:<order id>  3 order-ticket:<order id>  4 stock
--       5 tickets:queued  6 tickets:in_progress  7 tickets:cancelled
-- ARGV: 1 inbox and tombstone ttl (s)  2 cancelled at (ISO)
-- Returns 'released' | 'stopped' | 'duplicate' | 'no_ticket' | 'done' | 'cancelled'
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then
  return 'duplicate'
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
local ticket_id = redis.call('GET', KEYS[3])
if not ticket_id then
  return 'no_ticket'
end
local ticket = 'ticket:' .. ticket_id
local status = redis.call('HGET', ticket, 'status')
local from
if status == 'queued' then
  for _, line in ipairs(cjson.decode(redis.call('HGET', ticket, 'lines'))) do
    redis.call('HINCRBY', KEYS[4], line.sku, line.quantity)
  end
  from = KEYS[5]
elseif status == 'in_progress' then
  from = KEYS[6]
else
  return status  -- done or cancelled already: nothing to undo
end
redis.call('HSET', ticket, 'status', 'cancelled', 'cancelled_at', ARGV[2])
local score = redis.call('ZSCORE', from, ticket_id) or '0'
redis.call('ZREM', from, ticket_id)
redis.call('ZADD', KEYS[7], score, ticket_id)
if status == 'queued' then
  return 'released'
end
return 'stopped'
