"""The Lua scripts of the work log (streams/work.py), and the decoding of stream entries read undecoded. Every
script is given the keys of one partition (streams/keys.py): one Redis Cluster slot."""

from __future__ import annotations

from typing import Any

from redis.client import NEVER_DECODE

# Takes the due members, re-adds each to the stream and removes it from the ZSET, all in one atomic
# script: two retry workers never move the same member, and a crash mid-move leaves each member in
# exactly one of the two places.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
    local e = cjson.decode(member)
    redis.call('XADD', KEYS[2], '*', 'n', e.n, 'u', e.u, 'c', e.c)
    redis.call('ZREM', KEYS[1], member)
end
if #due > 0 then redis.call('INCRBY', KEYS[3], #due) end
return #due
"""

# Many XADDs in one call: ARGV[1] is the backlog units they add (KEYS[2]), then per entry its number of
# field/value arguments and those. One command out and one reply back: a pipeline of 2,000 XADDs cost the
# client 11.6 us per entry, most of it reading 2,000 replies through redis-py; here redis-py's Script packs
# the arguments (with hiredis when installed) and parses one reply.
XADD_MANY = """
redis.call('INCRBY', KEYS[2], ARGV[1])
local out = {}
local i = 2
local n = #ARGV
while i <= n do
    local k = tonumber(ARGV[i])
    out[#out + 1] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + k))
    i = i + k + 1
end
return out
"""

# XACK (group ARGV[1]) and XDEL of entries given as (id, units) pairs in the rest of ARGV; the units of each
# entry this call deleted come off the backlog (KEYS[2]), never below zero: an entry acknowledged twice (or
# deleted meanwhile) counts once.
ACK = """
local gone = 0
for i = 2, #ARGV, 2 do
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    if redis.call('XDEL', KEYS[1], ARGV[i]) == 1 then gone = gone + tonumber(ARGV[i + 1]) end
end
if gone > 0 and redis.call('DECRBY', KEYS[2], gone) < 0 then redis.call('SET', KEYS[2], 0) end
return gone
"""


# Stream entries are read undecoded and decoded here, entry by entry: one entry whose bytes are not UTF-8
# must not fail the whole read (it would fail every read, and kill the worker each time). Its text gets
# replacement characters, it fails parsing, and it is parked like any other malformed entry.
RAW: dict[str, Any] = {NEVER_DECODE: []}


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def fields(raw: Any) -> dict[str, str] | None:
    return None if raw is None else {text(k): text(v) for k, v in dict(raw).items()}
