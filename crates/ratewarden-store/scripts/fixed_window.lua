-- The fixed window, a line-by-line port of ratewarden-core's algorithm/fixed_window.rs,
-- in microseconds. Windows are multiples of the period since the Unix epoch (UTC).
-- State: "window:count". Parameters: `limit` and `period`.

local function fixed_decide(state, now, cost, limit, period)
  local stored, count = nil, 0
  if state then
    local parts = split_state(state)
    stored, count = parts[1], parts[2]
  end
  local index, elapsed, behind, lag = locate(now, period, stored)
  local used = 0
  if behind == 0 then
    used = count
  end
  local reset_after = time_until(elapsed, lag, period, 1, 0)
  if cost <= limit and used + cost <= limit then
    return {
      allowed = true,
      limit = limit,
      remaining = limit - used - cost,
      reset_after = reset_after,
      retry_after = 0,
      next = format_int(index) .. ':' .. format_int(used + cost),
      expires_at = now + reset_after,
    }
  end
  local retry_after = NEVER
  if cost <= limit then
    -- A fresh window admits any cost up to the limit.
    retry_after = reset_after
  end
  return {
    allowed = false,
    limit = limit,
    remaining = math.max(0, limit - used),
    reset_after = reset_after,
    retry_after = retry_after,
  }
end

local function fixed_refund(current, written, cost)
  local now_state, then_state = split_state(current), split_state(written)
  if now_state[1] == then_state[1] then
    now_state[2] = math.max(0, now_state[2] - cost)
  end
  return format_int(now_state[1]) .. ':' .. format_int(now_state[2])
end
