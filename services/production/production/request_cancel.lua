-- The customer asks to cancel a paid order: the kitchen decides, atomically with its own steps
-- (start.lua takes only a queued ticket). A ticket no cook has started is dropped and gives its
-- stock back; no ticket yet leaves a tombstone so a late order.received queues nothing; a ticket
-- in progress or done is not cancelled. Either way the answer goes to the outbox. The rule is
-- production.domain.answer_cancel_request; a test holds this script to it.
-- The answers are built before the script runs and name the ticket the order had then (ARGV 3,
-- '' for none); if the order has another by now (its order.received was applied in between),
-- nothing is done and 'moved' tells the caller to read it again and build the answers anew.
--
-- KEYS: 1 inbox:<event id>  2 cancelled:<order id>  3 order-ticket:<order id>  4 stock
--       5 tickets:queued  6 tickets:cancelled  7 outbox
-- ARGV: 1 inbox and tombstone ttl (s)  2 cancelled at (ISO)  3 the ticket the answers name
--       4 n = fields of the accepted answer  5 .. 4+n  production.cancelled outbox fields
--       5+n ..  production.cancel_refused fields
-- Returns 'moved' | 'duplicate' | 'no_ticket' | 'released' | 'already_cancelled' | 'refused'
local ticket_id = redis.call('GET', KEYS[3])
if (ticket_id or '') ~= ARGV[3] then
  return 'moved'
end
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then
  return 'duplicate'
end
local n = tonumber(ARGV[4])
local function answer(accepted)
  if accepted then
    redis.call('XADD', KEYS[7], '*', unpack(ARGV, 5, 4 + n))
  else
    redis.call('XADD', KEYS[7], '*', unpack(ARGV, 5 + n))
  end
end
if not ticket_id then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
  answer(true)
  return 'no_ticket'
end
local ticket = 'ticket:' .. ticket_id
local status = redis.call('HGET', ticket, 'status')
if status == 'cancelled' then
  answer(true)
  return 'already_cancelled'
end
if status ~= 'queued' then
  answer(false)  -- in progress or done: the kitchen has the last word
  return 'refused'
end
for _, line in ipairs(cjson.decode(redis.call('HGET', ticket, 'lines'))) do
  redis.call('HINCRBY', KEYS[4], line.sku, line.quantity)
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
redis.call('HSET', ticket, 'status', 'cancelled', 'cancelled_at', ARGV[2])
local score = redis.call('ZSCORE', KEYS[5], ticket_id) or '0'
redis.call('ZREM', KEYS[5], ticket_id)
redis.call('ZADD', KEYS[6], score, ticket_id)
answer(true)
return 'released'
