-- Globals read through locals: each global access costs a table look-up.
local KEYS, ARGV, tonumber = KEYS, ARGV, tonumber
local call, ceil, floor = redis.call, math.ceil, math.floor
local now = tonumber(ARGV[1])
local now_us = now * 1000
local consume = ARGV[2] == '1'
local nrev = tonumber(ARGV[3])
local ncut = tonumber(ARGV[4])
local iat = tonumber(ARGV[5])
local want = tonumber(ARGV[6])
local back = tonumber(ARGV[7])
local back_cal = tonumber(ARGV[8])
local first = nrev + ncut
local nwin = #KEYS - first
if back > 0 or back_cal > 0 then
  for w = 1, nwin do
    local key = KEYS[first + w]
    local base = 8 + (w - 1) * 3
    local kind = ARGV[base + 1]
    local limit = tonumber(ARGV[base + 2])
    if kind == 'g' and back > 0 and limit >= 1 then
      local tat = tonumber(call('GET', key) or '0')
      local interval = ceil(tonumber(ARGV[base + 3]) * 1000 / limit)
      tat = tat - back * interval
      if tat <= now_us then
        call('DEL', key)
      else
        call('SET', key, string.format('%.0f', tat), 'PX', ceil((tat - now_us) / 1000) + 1)
      end
    elseif kind == 'c' and back_cal > 0 and call('EXISTS', key) == 1 then
      if call('DECRBY', key, back_cal) < 0 then
        call('SET', key, '0', 'KEEPTTL')
      end
    end
  end
end
if want < 1 then
  return {0, 0, 0, 0, 0}
end
for i = 1, nrev do
  if call('EXISTS', KEYS[i]) == 1 then
    return {-1, 0, 0, 0, 0}
  end
end
for i = nrev + 1, nrev + ncut do
  local cut = call('GET', KEYS[i])
  if cut and iat <= tonumber(cut) then
    return {-1, 0, 0, 0, 0}
  end
end
-- One pass decides every window and finds the tightest as if one request were taken. A lease
-- of g takes g - 1 more from every window alike (a GCRA window's reset does not move once it
-- holds a request), so the same window stays the tightest with g - 1 fewer remaining.
local tats, intervals = {}, {}
local one = 0
if consume then one = 1 end
local room = want * 4
local tl, tr, tz = 0, -1, 0
for w = 1, nwin do
  local key = KEYS[first + w]
  local base = 8 + (w - 1) * 3
  local kind = ARGV[base + 1]
  local limit = tonumber(ARGV[base + 2])
  local span = tonumber(ARGV[base + 3])
  local rem, reset
  if kind == 'g' then
    if limit < 1 then
      return {w, limit, 0, span, 0}
    end
    local interval = ceil(span * 1000 / limit)
    local tat = tonumber(call('GET', key) or '0')
    if tat < now_us then tat = now_us end
    local backlog = tat - now_us + interval
    if backlog > interval * limit then
      return {w, limit, 0, ceil((backlog - interval * limit) / 1000), 0}
    end
    tats[w], intervals[w] = tat, interval
    if want > 1 then
      local fits = floor((interval * limit - (tat - now_us)) / interval)
      if fits < room then room = fits end
    end
    local held = tat - now_us + one * interval
    local n = ceil(held / interval)
    rem = limit - n
    if n == 0 then reset = 0 else reset = ceil((held - (n - 1) * interval) / 1000) end
  else
    local n = tonumber(call('GET', key) or '0')
    if n >= limit then
      return {w, limit, 0, span - now, 0}
    end
    if kind == 'c' and limit - n < room then room = limit - n end
    rem = limit - n - one
    reset = span - now
  end
  if kind ~= 'k' and (tr < 0 or rem < tr or (rem == tr and reset < tz)) then
    tl, tr, tz = limit, rem, reset
  end
end
local granted = 1
if consume and want > 1 then
  granted = math.max(1, math.min(want, floor(room / 4)))
  tr = tr - (granted - 1)
end
if consume then
  for w = 1, nwin do
    local key = KEYS[first + w]
    local base = 8 + (w - 1) * 3
    local kind = ARGV[base + 1]
    if kind == 'g' then
      local tat = tats[w] + granted * intervals[w]
      local ttl = ceil((tat - now_us) / 1000) + 1
      call('SET', key, string.format('%.0f', tat), 'PX', ttl)
    elseif kind == 'k' then
      -- check-only: debited by token usage, not by requests
    elseif (granted == 1 and call('INCR', key) or call('INCRBY', key, granted)) == granted then
      -- A calendar key is created here, once per window: its expiry is set once.
      call('PEXPIREAT', key, tonumber(ARGV[base + 3]) + 86400000)
    end
  end
end
if tr < 0 then tr = 0 end
return {0, tl, tr, tz, granted}
