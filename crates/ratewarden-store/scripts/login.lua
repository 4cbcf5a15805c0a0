-- Login attempt state (see src/login and src/redis/login.rs).
--
-- KEYS[1]: the subject's base key, {prefix}:v1:{tag}:login; every key this script
-- touches is that base plus a suffix, so all of them share the subject's cluster slot.
-- The subject is a pseudonymised account (begin, finish) or address (tried).
-- ARGV[1]: the operation. Times are the server's, in microseconds; durations come in
-- milliseconds. Integers go back through format_int (tostring would drop digits).
--
-- Keys of an account: :f failures and :ft the time of the last one (both expire
-- `window` after it), :lock the end
-- of a lockout (expires with it), :fl attempts in flight (expire `in_flight` after the
-- latest began), :good known addresses (sorted by when they stop being known), :a:<n>
-- the addresses that tried it in window n (HyperLogLog).
--
-- begin limit window_ms lockout_ms scope in_flight_ms address
--   scope: 1 for account+ip (a known address is not locked out), 0 for account.
--   Reply: {'locked', remaining_us} | {'busy'} |
--          {'ok', failures, known (0/1), distinct addresses, microseconds since the
--           last failure (-1: none)}
-- finish limit window_ms lockout_ms outcome address known_ms
--   outcome: f (failure), s (success) or i (inconclusive).
--   Reply: {failures, lockout_ms started (0: none)}
-- tried window_ms route account
--   Keys of an address: :r:<route>:<n> the accounts it tried on the route in window n.
--   Reply: distinct accounts, the sliding estimate over a window.

if redis.replicate_commands then
  redis.replicate_commands()
end

local function format_int(n)
  return string.format('%d', n)
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local base = KEYS[1]
local op = ARGV[1]
local now = server_now()

local function int(v)
  return tonumber(v or '0') or 0
end

-- Adds `member` to window `index`'s HyperLogLog and returns the sliding estimate of
-- distinct members: the current window's count plus the previous one's, weighted by
-- the share of it still within one window of now (as the threat signals are read).
-- Single-key PFCOUNTs: Redis caches them, where a two-key count merges two dense
-- sketches on every call.
local function add_distinct(prefix, window_ms, member)
  local window_us = window_ms * 1000
  local index = math.floor(now / window_us)
  local current = prefix .. format_int(index)
  redis.call('PFADD', current, member)
  redis.call('PEXPIRE', current, 2 * window_ms)
  local weight = 1 - (now - index * window_us) / window_us
  local estimate = redis.call('PFCOUNT', current)
    + weight * redis.call('PFCOUNT', prefix .. format_int(index - 1))
  return math.floor(estimate + 0.5)
end

if op == 'begin' then
  local limit, window_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
  local scope, in_flight_ms, address = ARGV[5], tonumber(ARGV[6]), ARGV[7]
  local good = redis.call('ZSCORE', base .. ':good', address)
  local known = good and tonumber(good) > now
  local exempt = known and scope == '1'
  local locked = int(redis.call('GET', base .. ':lock'))
  if locked > now and not exempt then
    return { 'locked', format_int(locked - now) }
  end
  local failures = int(redis.call('GET', base .. ':f'))
  local in_flight = int(redis.call('GET', base .. ':fl'))
  if not exempt and failures + in_flight >= limit then
    return { 'busy' }
  end
  redis.call('INCR', base .. ':fl')
  redis.call('PEXPIRE', base .. ':fl', in_flight_ms)
  local addresses = add_distinct(base .. ':a:', window_ms, address)
  local since = -1
  if failures > 0 then
    since = math.max(0, now - int(redis.call('GET', base .. ':ft')))
  end
  return { 'ok', format_int(failures), known and 1 or 0, addresses, format_int(since) }
elseif op == 'finish' then
  local limit, window_ms, lockout_ms = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local outcome, address, known_ms = ARGV[5], ARGV[6], tonumber(ARGV[7])
  if int(redis.call('GET', base .. ':fl')) > 0 then
    redis.call('DECR', base .. ':fl')
  end
  if outcome == 'f' then
    local failures = redis.call('INCR', base .. ':f')
    redis.call('PEXPIRE', base .. ':f', window_ms)
    redis.call('SET', base .. ':ft', format_int(now), 'PX', window_ms)
    if failures >= limit then
      -- A lockout clears the count: when it ends, the account starts afresh.
      redis.call('DEL', base .. ':f', base .. ':ft')
      redis.call('SET', base .. ':lock', format_int(now + lockout_ms * 1000), 'PX', lockout_ms)
      return { 0, lockout_ms }
    end
    return { failures, 0 }
  elseif outcome == 's' then
    redis.call('DEL', base .. ':f', base .. ':ft', base .. ':lock')
    local good = base .. ':good'
    redis.call('ZADD', good, now + known_ms * 1000, address)
    redis.call('ZREMRANGEBYSCORE', good, '-inf', now)
    -- The newest addresses are kept (KNOWN_ADDRESSES in src/login/mod.rs).
    redis.call('ZREMRANGEBYRANK', good, 0, -17)
    redis.call('PEXPIRE', good, known_ms)
    return { 0, 0 }
  end
  return { int(redis.call('GET', base .. ':f')), 0 }
elseif op == 'tried' then
  local window_ms, route, account = tonumber(ARGV[2]), ARGV[3], ARGV[4]
  return add_distinct(base .. ':r:' .. route .. ':', window_ms, account)
end
return redis.error_reply('unknown login operation ' .. tostring(op))
