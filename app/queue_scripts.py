"""The Lua scripts the queue (app/queue.py) runs in Redis: admission, and how long the
oldest request has waited."""

# Milliseconds the oldest entry no consumer of the group has taken has waited (0 if none),
# on Redis's clock and from entry ids, not counting the newest ``mine`` (the entries being
# admitted). The group's lag (Redis 7) says when none waits without reading one, so the
# oldest entry (whose pixels XRANGE would copy into Lua) is read only when one does.
OLDEST_WAITING = """
local function oldest_waiting(stream, group, mine)
  local after = '-'
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if ok then
    for _, info in ipairs(groups) do
      local fields = {}
      for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
      if fields['name'] == group then
        if fields['lag'] == mine then return 0 end
        after = '(' .. fields['last-delivered-id']
      end
    end
  end
  local head = redis.call('XRANGE', stream, after, '+', 'COUNT', 1)
  if #head == 0 then return 0 end
  local now = redis.call('TIME')
  return now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(string.match(head[1][1], '^(%d+)'))
end
"""
# Run in one MULTI right after the request's XADDs, so that the pixels never pass through
# Lua: copying them into a script costs Redis far more than a plain XADD.
# KEYS[1] stream, KEYS[2] (if given) the refusal list a wait blocks on beside the answers';
# ARGV: max_queue, max_wait_ms (-1: no limit), group, entries just added. Refused: the
# entries just added (the newest, as nothing runs between them and this) are deleted, and
# the verdict is pushed to the refusal list, which ends that wait at once.
ADMIT_SCRIPT = (
    OLDEST_WAITING
    + """
local count = tonumber(ARGV[4])
local length = redis.call('XLEN', KEYS[1]) - count
local max_wait = tonumber(ARGV[2])
local verdict, detail = 'ok', count
if length + count > tonumber(ARGV[1]) then
  verdict, detail = 'full', length
elseif length > 0 and max_wait >= 0 then
  local waited = oldest_waiting(KEYS[1], ARGV[3], count)
  if waited >= max_wait then verdict, detail = 'slow', waited end
end
if verdict ~= 'ok' then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', count)) do
    redis.call('XDEL', KEYS[1], entry[1])
  end
  if KEYS[2] then
    redis.call('LPUSH', KEYS[2], verdict)
    redis.call('EXPIRE', KEYS[2], 60)
  end
end
return {verdict, detail}
"""
)
WAITED_SCRIPT = OLDEST_WAITING + "return oldest_waiting(KEYS[1], ARGV[1], 0)"
