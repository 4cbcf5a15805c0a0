-- GCRA, a line-by-line port of ratewarden-core's algorithm/gcra.rs, in microseconds.
-- State: the theoretical arrival time `tat` as a decimal integer.
-- Parameters: `interval` (one unit's refill time), `tolerance` (burst x interval),
-- `capacity` (burst).

local function gcra_deny(stored_tat, tat, now, interval, capacity, horizon, wait)
  local headroom = math.max(0, horizon - tat)
  return {
    allowed = false,
    limit = capacity,
    remaining = floor_div(headroom, interval),
    reset_after = math.max(0, stored_tat - now),
    retry_after = wait,
  }
end

local function gcra_decide(state, now, cost, interval, tolerance, capacity)
  local stored_tat = 0
  if state then
    stored_tat = tonumber(state) or 0
  end
  local tat = math.max(stored_tat, now)
  local horizon = now + tolerance
  if cost <= capacity then
    local new_tat = tat + cost * interval
    if new_tat <= horizon then
      return {
        allowed = true,
        limit = capacity,
        remaining = floor_div(horizon - new_tat, interval),
        reset_after = new_tat - now,
        retry_after = 0,
        next = format_int(new_tat),
        expires_at = new_tat,
      }
    end
    return gcra_deny(stored_tat, tat, now, interval, capacity, horizon, new_tat - horizon)
  end
  return gcra_deny(stored_tat, tat, now, interval, capacity, horizon, NEVER)
end

-- Gives back the part of a charge of `cost` (which wrote `written`) not yet drained.
local function gcra_refund(current, written, now, cost, interval)
  local charge = cost * interval
  local undrained = math.max(0, tonumber(written) - now)
  return format_int(math.max(0, tonumber(current) - math.min(charge, undrained)))
end
