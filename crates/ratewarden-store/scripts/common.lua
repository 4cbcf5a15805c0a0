-- Shared by every algorithm: exact integer arithmetic on Lua numbers.
--
-- Redis runs Lua 5.1, whose only number type is a double: integers are exact below
-- 2^53, and a plain division can round up to the next integer. Times are kept in whole
-- microseconds (about 2^51 today), so every quantity here stays exact as long as each
-- step is one of the helpers below. Integers go back to Redis through format_int:
-- tostring() would print 14 significant digits and lose the low ones.

-- Returned for a wait that never ends (a cost above the limit).
local NEVER = -1

local function format_int(n)
  return string.format('%d', n)
end

-- floor(a / b) for integers 0 <= a < 2^53, 0 < b < 2^53, corrected for rounding.
local function floor_div(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- floor(x * y / z) and its remainder, exact for 0 <= x < 2^32 and 0 <= y, z < 2^45
-- (z > 0), where x * y itself may be far above 2^53: long multiplication of y by the
-- base-128 digits of x, dividing as it goes, keeps every intermediate below 2^53.
local function mul_div(x, y, z)
  local digits = {}
  while x > 0 do
    local d = x % 128
    digits[#digits + 1] = d
    x = (x - d) / 128
  end
  local q, r = 0, 0
  for i = #digits, 1, -1 do
    local t = r * 128 + digits[i] * y
    local qi = floor_div(t, z)
    q = q * 128 + qi
    r = t - qi * z
  end
  return q, r
end

-- Where `now` falls in windows of `period`, relative to the stored window `stored`
-- (nil: nothing stored). Returns the window index, the time elapsed in it, how many
-- windows behind the stored one lies (huge when none) and the lag: when the clock went
-- backwards behind the stored window, the position is that window's start and the lag
-- is the time from `now` to it.
local function locate(now, period, stored)
  local index = floor_div(now, period)
  local elapsed = now - index * period
  if stored == nil then
    return index, elapsed, math.huge, 0
  end
  if stored <= index then
    return index, elapsed, index - stored, 0
  end
  return stored, 0, 0, stored * period - now
end

-- Time from `now` to `into` past the start of the window `windows` after the located one.
local function time_until(elapsed, lag, period, windows, into)
  return math.max(0, lag + period * windows + into - elapsed)
end

-- Splits "a:b:c" into numbers.
local function split_state(state)
  local parts = {}
  for field in string.gmatch(state, '[^:]+') do
    parts[#parts + 1] = tonumber(field)
  end
  return parts
end
