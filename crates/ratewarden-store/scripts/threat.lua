-- Client behaviour, threat levels and blocks (see src/threat and src/redis/threat.rs).
--
-- KEYS[1]: the client's base key, {prefix}:v1:{tag}:threat; every key this script
-- touches is that base plus a suffix, so all of them share the client's cluster slot.
-- ARGV[1]: the operation. Times are the server's, in microseconds; integers go back
-- through format_int (tostring would drop digits).
--
-- observe window first_at last_at first_agent last_agent <eleven bucket counts> endpoint...
--   Adds a batch of the client's requests to the bucket of the current window (a hash
--   per window, expiring after two windows) and its endpoints to that window's
--   HyperLogLog; times the gap between the client's previous request and the batch's
--   first (arrival times in microseconds, from the gateways). Reply: now, the recorded level (0-3), the end
--   of the block in force (0: none), the eleven
--   bucket fields of the current then the previous window, the distinct endpoints of
--   the current then the previous window (single-key PFCOUNTs, which Redis caches; a
--   two-key PFCOUNT would merge two dense sketches on every request).
-- status
--   Reply: now, the level record ("level|reason,reason" or ""), and the block in force:
--   until (0: none), offence, reasons, client.
-- set_level expected level reasons ttl_ms
--   Records the level (a normal level deletes the record), only if the level recorded
--   now is `expected`, so of two concurrent changes from one level only the first
--   lands (and alerts). Reply: 1 if recorded, 0 if not.
-- block forget reasons client length1 length2 ...
--   Unless a block is in force, counts an offence and blocks for the length of that
--   offence (the last length for any later one). Reply: until, offence, reasons,
--   client, 1 if this call blocked, now.
-- neighbours window [member]
--   A network's failing addresses: adds `member` (if given) to the current window's
--   HyperLogLog. Reply: now, the distinct members of the current and the previous
--   window together (a two-key PFCOUNT, their union; these sets are small).
-- lift window
--   Deletes the block, the offences, the level and the behaviour of the current and
--   previous windows: a lifted client starts with a clean slate. Reply: 1 if a block
--   was in force.

if redis.replicate_commands then
  redis.replicate_commands()
end

-- In the order of Bucket::fields (src/threat/signals.rs in ratewarden-core).
local FIELDS = { 'requests', 'errors', 'auth_failures', 'limited', 'automation', 'spoofed',
  'agent_changes', 'gaps', 'gap_sum_ms', 'gap_squares_ms', 'stuffing' }
local MAX_TIMED_GAP_MS = 60000

local function format_int(n)
  return string.format('%d', n)
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function ceil_ms(us)
  return math.floor((us + 999) / 1000)
end

local base = KEYS[1]
local op = ARGV[1]
local now = server_now()

local function recorded_level()
  local record = redis.call('GET', base .. ':level')
  if record then
    return tonumber(string.match(record, '^(%d)')) or 0
  end
  return 0
end

local function block_in_force()
  local b = redis.call('HMGET', base .. ':block', 'until', 'offence', 'reasons', 'client')
  local untl = tonumber(b[1] or '0') or 0
  if untl > now then
    return { untl, tonumber(b[2] or '1') or 1, b[3] or '', b[4] or '' }
  end
  return nil
end

if op == 'observe' then
  local window = tonumber(ARGV[2])
  local first_at, last_at = tonumber(ARGV[3]), tonumber(ARGV[4])
  local index = math.floor(now / window)
  local current = base .. ':w:' .. format_int(index)
  local previous = base .. ':w:' .. format_int(index - 1)
  local ends_current = base .. ':e:' .. format_int(index)
  local ends_previous = base .. ':e:' .. format_int(index - 1)
  local last = base .. ':last'
  local keep_ms = ceil_ms(2 * window) + 1000

  local add = {}
  for i = 1, #FIELDS do
    add[i] = tonumber(ARGV[6 + i])
  end
  -- The gap and agent change before the batch's first request, against the client's
  -- previous request (as any gateway saw it).
  local seen = redis.call('HMGET', last, 'at', 'agent')
  local seen_at = tonumber(seen[1] or '')
  if seen_at then
    if first_at >= seen_at then
      local gap = math.floor((first_at - seen_at) / 1000)
      if gap <= MAX_TIMED_GAP_MS then
        add[8] = add[8] + 1
        add[9] = add[9] + gap
        add[10] = add[10] + gap * gap
      end
    end
    if seen[2] ~= ARGV[5] then
      add[7] = add[7] + 1
    end
  end
  local fresh = false
  for i = 1, #FIELDS do
    if add[i] ~= 0 then
      local n = redis.call('HINCRBY', current, FIELDS[i], format_int(add[i]))
      if i == 1 and n == add[1] then
        fresh = true
      end
    end
  end
  if #ARGV > 6 + #FIELDS then
    redis.call('PFADD', ends_current, unpack(ARGV, 7 + #FIELDS))
  end
  if fresh then
    -- The window's first requests: its keys expire two windows from now, once.
    redis.call('PEXPIRE', current, keep_ms)
    redis.call('PEXPIRE', ends_current, keep_ms)
  end
  if seen_at == nil or last_at >= seen_at then
    redis.call('HSET', last, 'at', format_int(last_at), 'agent', ARGV[6])
  end
  redis.call('PEXPIRE', last, keep_ms)

  local level = recorded_level()
  if level ~= 0 then
    redis.call('PEXPIRE', base .. ':level', ceil_ms(window))
  end
  local b = block_in_force()
  local reply = { now, level, b and b[1] or 0 }
  for _, key in ipairs({ current, previous }) do
    local values = redis.call('HMGET', key, unpack(FIELDS))
    for i = 1, #FIELDS do
      reply[#reply + 1] = tonumber(values[i] or '0') or 0
    end
  end
  reply[#reply + 1] = redis.call('PFCOUNT', ends_current)
  reply[#reply + 1] = redis.call('PFCOUNT', ends_previous)
  return reply
elseif op == 'status' then
  local record = redis.call('GET', base .. ':level') or ''
  local b = block_in_force()
  if b then
    return { now, record, b[1], b[2], b[3], b[4] }
  end
  return { now, record, 0, 0, '', '' }
elseif op == 'set_level' then
  if recorded_level() ~= tonumber(ARGV[2]) then
    return 0
  end
  if ARGV[3] == '0' then
    redis.call('DEL', base .. ':level')
  else
    redis.call('SET', base .. ':level', ARGV[3] .. '|' .. ARGV[4], 'PX', ARGV[5])
  end
  return 1
elseif op == 'block' then
  local b = block_in_force()
  if b then
    return { b[1], b[2], b[3], b[4], 0, now }
  end
  local forget = tonumber(ARGV[2])
  local offence = redis.call('INCR', base .. ':offences')
  local ladder = #ARGV - 4
  local length = tonumber(ARGV[4 + math.min(offence, ladder)])
  local untl = now + length
  redis.call('HSET', base .. ':block', 'until', format_int(untl), 'offence', offence,
    'reasons', ARGV[3], 'client', ARGV[4])
  redis.call('PEXPIRE', base .. ':block', ceil_ms(length) + 1)
  redis.call('PEXPIRE', base .. ':offences', ceil_ms(length + forget) + 1)
  return { untl, offence, ARGV[3], ARGV[4], 1, now }
elseif op == 'neighbours' then
  local window = tonumber(ARGV[2])
  local index = math.floor(now / window)
  local ends_current = base .. ':e:' .. format_int(index)
  local ends_previous = base .. ':e:' .. format_int(index - 1)
  if ARGV[3] then
    redis.call('PFADD', ends_current, ARGV[3])
    redis.call('PEXPIRE', ends_current, ceil_ms(2 * window) + 1000)
  end
  return { now, redis.call('PFCOUNT', ends_current, ends_previous) }
elseif op == 'lift' then
  local had = block_in_force() and 1 or 0
  local index = math.floor(now / tonumber(ARGV[2]))
  redis.call('DEL', base .. ':block', base .. ':offences', base .. ':level', base .. ':last',
    base .. ':w:' .. format_int(index), base .. ':w:' .. format_int(index - 1),
    base .. ':e:' .. format_int(index), base .. ':e:' .. format_int(index - 1))
  return had
end
return redis.error_reply('ratewarden threat script: unknown operation ' .. tostring(op))
