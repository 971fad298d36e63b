"""The server-side script of the shared rate-limit store, and its arguments and reply.

One call decides a batch of *checks* (one per request; a check is the run of consecutive
``store: redis`` rules that applied to the request) atomically, on the Redis server's clock
(``TIME``, microseconds), so every proxy sees the same time. For each check it takes one
token from each of its buckets in rule order and stops at the first bucket holding less
than one token, as Spooky's rules do. A bucket is the hash ``{key_prefix}{rule}:{key}``
(``t`` tokens, ``ts`` last refill) that expires once it would be full again, or after the
rule's ``idle_ttl_secs`` without use, whichever comes first: Redis only holds buckets that
still matter, and a bucket idle for ``idle_ttl_secs`` starts full again (Spooky's pruning).

Wire format. KEYS: the buckets of every check, in order. ARGV: the number of checks, then
per check its number of buckets and, per bucket, rate (tokens/s), burst and idle ttl (ms).
Reply, per check: the number of buckets examined, then each one's balance in thousandths of
a token (tokens left after the take; negative: rejected, nothing taken).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
local k = 1
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local results = {}
  local rejected = false
  for _ = 1, n do
    if not rejected then
      local key = KEYS[k]
      local rate = tonumber(ARGV[a])
      local burst = tonumber(ARGV[a + 1])
      local idle_ms = tonumber(ARGV[a + 2])
      local state = redis.call('HMGET', key, 't', 'ts')
      local tokens = tonumber(state[1])
      local last = tonumber(state[2])
      if tokens == nil or last == nil then
        tokens = burst
      elseif now > last then
        tokens = math.min(burst, tokens + (now - last) * rate / 1000000)
      end
      local balance = tokens - 1
      if balance >= 0 then tokens = balance end
      local ttl = math.ceil((burst - tokens) * 1000 / rate)
      if ttl > idle_ms then ttl = idle_ms end
      if ttl < 1 then ttl = 1 end
      redis.call('HSET', key, 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
      redis.call('PEXPIRE', key, ttl)
      results[#results + 1] = math.floor(balance * 1000)
      if balance < 0 then rejected = true end
    end
    k = k + 1
    a = a + 3
  end
  out[#out + 1] = #results
  for _, r in ipairs(results) do out[#out + 1] = r end
end
return out
"""
#: what EVALSHA names the script by (Redis's identifier of a script, not a security measure)
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def script_arguments(checks: Sequence[tuple[Sequence[bytes], Sequence[float]]]) -> tuple[list[bytes], list[float]]:
    """KEYS and ARGV for ``checks``: (bucket keys, rate/burst/idle-ms per key) each."""
    keys: list[bytes] = []
    argv: list[float] = [len(checks)]
    for check_keys, args in checks:
        keys.extend(check_keys)
        argv.append(len(check_keys))
        argv.extend(args)
    return keys, argv


def split_reply(reply: object, checks: int) -> list[list[int]]:
    """The balances of each check from the script's reply; ValueError when it is not one."""
    if not isinstance(reply, list) or not all(isinstance(v, int) for v in reply):
        raise ValueError(f"unexpected script reply {reply!r:.80}")
    values = [int(v) for v in reply if isinstance(v, int)]
    out: list[list[int]] = []
    at = 0
    for _ in range(checks):
        n = values[at] if at < len(values) else -1
        if n < 0 or at + 1 + n > len(values):
            raise ValueError("the script's reply is shorter than the batch")
        out.append(values[at + 1:at + 1 + n])
        at += 1 + n
    return out
