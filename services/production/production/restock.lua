-- The kitchen manager's count: set a stocked SKU's available units; never invents a SKU.
-- KEYS: 1 stock   ARGV: 1 sku  2 available
-- Returns 1 when set, 0 when the SKU is not stocked.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
