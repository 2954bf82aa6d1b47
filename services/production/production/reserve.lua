-- Reserve a paid order's stock and queue its ticket, or report what is short: all or nothing.
-- The check and the decrement happen in this one script, so concurrent orders for the last
-- units cannot both take them.
--
-- KEYS: 1 inbox:<event id>   2 cancelled:<order id>   3 order-ticket:<order id>   4 stock
--       5 ticket:<ticket id>  6 tickets   7 tickets:queued   8 kitchen   9 outbox
-- ARGV: 1 inbox ttl (s)  2 ticket id  3 order id  4 lines (JSON)  5 created at (ISO)
--       6 created at (epoch ms, the listing's score)  7 traceparent  8 n = number of SKUs
--       9 .. 8+2n  sku, quantity pairs   9+2n ..  the production.queued outbox entry's fields
-- Returns {'queued', ticket id} | {'duplicate'} | {'cancelled'} | {'exists', ticket id}
--       | {'short', sku, available, ...} where available is -1 for a SKU not stocked at all.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'duplicate'}
end
local function remember()
  redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  remember()  -- the order was cancelled before its ticket existed: nothing to make
  return {'cancelled'}
end
local existing = redis.call('GET', KEYS[3])
if existing then
  remember()
  return {'exists', existing}
end

local n = tonumber(ARGV[8])
local levels, short = {'short'}, false
for i = 0, n - 1 do
  local sku, wanted = ARGV[9 + 2 * i], tonumber(ARGV[10 + 2 * i])
  local have = tonumber(redis.call('HGET', KEYS[4], sku) or '-1')
  levels[#levels + 1] = sku
  levels[#levels + 1] = have
  if have < wanted then
    short = true
  end
end
if short then
  return levels  -- nothing written: the caller records the failure (record_failure.lua)
end

for i = 0, n - 1 do
  redis.call('HINCRBY', KEYS[4], ARGV[9 + 2 * i], -tonumber(ARGV[10 + 2 * i]))
end
local ticket_id = ARGV[2]
redis.call('HSET', KEYS[5], 'id', ticket_id, 'order_id', ARGV[3], 'status', 'queued',
  'lines', ARGV[4], 'created_at', ARGV[5], 'traceparent', ARGV[7])
redis.call('SET', KEYS[3], ticket_id)
redis.call('ZADD', KEYS[6], ARGV[6], ticket_id)
redis.call('ZADD', KEYS[7], ARGV[6], ticket_id)
-- The kitchen entry carries what a cook needs to announce the ticket's steps (its order, and the
-- trace to continue), so the cook does not read the ticket back before starting it.
redis.call('XADD', KEYS[8], '*', 'ticket_id', ticket_id, 'order_id', ARGV[3], 'traceparent', ARGV[7])
remember()
redis.call('XADD', KEYS[9], '*', unpack(ARGV, 9 + 2 * n))
return {'queued', ticket_id}
