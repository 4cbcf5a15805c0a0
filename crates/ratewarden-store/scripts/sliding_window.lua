-- The sliding window, a line-by-line port of ratewarden-core's
-- algorithm/sliding_window.rs, in microseconds.
-- State: "window:current:previous", the window index in full (Redis has room for it).
-- Parameters: `limit` (units per period) and `period`.

-- ceil(count x (period - elapsed) / period)
local function sliding_weigh(count, elapsed, period)
  local q, r = mul_div(count, period - elapsed, period)
  if r > 0 then
    q = q + 1
  end
  return q
end

-- The elapsed time into a window from which the weighed `count` is at most `room`.
local function sliding_elapsed_needed(count, room, period)
  if count == 0 then
    return 0
  end
  local tolerated = mul_div(room, period, count)
  return math.max(0, period - tolerated)
end

local function sliding_reset(elapsed, lag, period, current, previous)
  local windows
  if current > 0 then
    windows = 2
  elseif previous > 0 then
    windows = 1
  else
    return lag
  end
  return time_until(elapsed, lag, period, windows, 0)
end

local function sliding_decide(state, now, cost, limit, period)
  local stored, stored_current, stored_previous = nil, 0, 0
  if state then
    local parts = split_state(state)
    stored, stored_current, stored_previous = parts[1], parts[2], parts[3]
  end
  local index, elapsed, behind, lag = locate(now, period, stored)
  local current, previous = 0, 0
  if behind == 0 then
    current, previous = stored_current, stored_previous
  elseif behind == 1 then
    previous = stored_current
  end
  local used = sliding_weigh(previous, elapsed, period) + current
  if cost <= limit and used + cost <= limit then
    current = current + cost
    local reset_after = sliding_reset(elapsed, lag, period, current, previous)
    return {
      allowed = true,
      limit = limit,
      remaining = limit - used - cost,
      reset_after = reset_after,
      retry_after = 0,
      next = format_int(index) .. ':' .. format_int(current) .. ':' .. format_int(previous),
      expires_at = now + reset_after,
    }
  end
  local retry_after
  if cost > limit then
    retry_after = NEVER
  elseif current + cost <= limit then
    -- The previous window's weight must fade enough within this window.
    local needed = sliding_elapsed_needed(previous, limit - current - cost, period)
    retry_after = time_until(elapsed, lag, period, 0, needed)
  else
    -- This window's own count must become the (fading) previous one.
    local needed = sliding_elapsed_needed(current, limit - cost, period)
    retry_after = time_until(elapsed, lag, period, 1, needed)
  end
  return {
    allowed = false,
    limit = limit,
    remaining = math.max(0, limit - used),
    reset_after = sliding_reset(elapsed, lag, period, current, previous),
    retry_after = retry_after,
  }
end

-- Takes `cost` off wherever the units written as `written` now sit.
local function sliding_refund(current, written, cost)
  local now_state, then_state = split_state(current), split_state(written)
  if now_state[1] == then_state[1] then
    now_state[2] = math.max(0, now_state[2] - cost)
  elseif now_state[1] == then_state[1] + 1 then
    now_state[3] = math.max(0, now_state[3] - cost)
  end
  return format_int(now_state[1]) .. ':' .. format_int(now_state[2]) .. ':' .. format_int(now_state[3])
end
