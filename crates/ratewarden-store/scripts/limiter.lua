-- The entry point: decides (or refunds) all the checks of one request, atomically.
--
-- KEYS: one counter per check. ARGV[1]: "decide" or "refund". ARGV[2]: the time in
-- microseconds, or "" to read the Redis server's clock (always, outside the
-- conformance test), so gateways whose clocks disagree still agree. Then six arguments
-- per key: algorithm ("gcra", "sliding_window", "fixed_window"), cost, three parameters
-- (gcra: interval, tolerance, capacity; windows: limit, period, 0) and, for a refund,
-- the state the admission wrote.
--
-- decide: every check is judged against its current state; only if all admit is each
-- new state written, with its expiry in the same SET, so no key ever lives without a
-- TTL and a denied request is charged to none of its limits. Reply: six values per
-- check: allowed (1/0), limit, remaining, reset_after, retry_after (-1: never), the
-- state written ("" if none).
--
-- refund: takes back admissions that another part of the same request (on another
-- cluster slot) denied; keeps each key's TTL. Reply: the number of keys changed.

local ARGS_PER_KEY = 6

-- Redis before 5 refuses writes after TIME unless effects are replicated; from 7 on
-- this is the only mode and the call is a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local now
local fixed_time = ARGV[2] ~= ''
if fixed_time then
  now = tonumber(ARGV[2])
else
  now = server_now()
end

local function arguments(i)
  local base = 2 + (i - 1) * ARGS_PER_KEY
  return ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
    tonumber(ARGV[base + 4]), tonumber(ARGV[base + 5]), ARGV[base + 6]
end

local function decide_one(algorithm, state, cost, a, b, c)
  if algorithm == 'gcra' then
    return gcra_decide(state, now, cost, a, b, c)
  elseif algorithm == 'sliding_window' then
    return sliding_decide(state, now, cost, a, b)
  elseif algorithm == 'fixed_window' then
    return fixed_decide(state, now, cost, a, b)
  end
  return redis.error_reply('ratewarden: unknown algorithm ' .. tostring(algorithm))
end

if ARGV[1] == 'decide' then
  local outcomes, all_allowed = {}, true
  for i, key in ipairs(KEYS) do
    local algorithm, cost, a, b, c = arguments(i)
    local outcome = decide_one(algorithm, redis.call('GET', key), cost, a, b, c)
    if outcome.err then
      return outcome
    end
    outcomes[i] = outcome
    all_allowed = all_allowed and outcome.allowed
  end
  local reply = {}
  for i, key in ipairs(KEYS) do
    local o = outcomes[i]
    local written = ''
    if all_allowed then
      -- Milliseconds, rounded up: the key outlives its state by less than 1 ms.
      local ttl = math.max(1, floor_div(o.expires_at - now + 999, 1000))
      if fixed_time then
        -- A test's time does not pass with the server's: keep the key a minute longer,
        -- so it is still there when the test's clock says it should be.
        ttl = ttl + 60000
      end
      redis.call('SET', key, o.next, 'PX', format_int(ttl))
      written = o.next
    end
    local allowed = 0
    if o.allowed then
      allowed = 1
    end
    local n = #reply
    reply[n + 1] = allowed
    reply[n + 2] = o.limit
    reply[n + 3] = o.remaining
    reply[n + 4] = o.reset_after
    reply[n + 5] = o.retry_after
    reply[n + 6] = written
  end
  return reply
elseif ARGV[1] == 'refund' then
  local changed = 0
  for i, key in ipairs(KEYS) do
    local algorithm, cost, a, _, _, written = arguments(i)
    local current = redis.call('GET', key)
    if current and written ~= '' then
      local refunded
      if algorithm == 'gcra' then
        refunded = gcra_refund(current, written, now, cost, a)
      elseif algorithm == 'sliding_window' then
        refunded = sliding_refund(current, written, cost)
      else
        refunded = fixed_refund(current, written, cost)
      end
      redis.call('SET', key, refunded, 'KEEPTTL')
      changed = changed + 1
    end
  end
  return changed
end
return redis.error_reply('ratewarden: unknown mode ' .. tostring(ARGV[1]))
