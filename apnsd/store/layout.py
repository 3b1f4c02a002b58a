"""What apnsd keeps in Redis, without talking to it: key names, the Lua scripts, a batch's commit."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

_receipts = msgspec.msgpack.encode  # str items only: Lua's cmsgpack cannot read msgpack's bin type

# Move up to ARGV[1] jobs from the consuming (right) end of the queue into a list of their own (KEYS[2], this
# worker's in-flight list for the batch id ARGV[2], named in the worker's index set KEYS[3]), in one atomic step,
# so no job ever lives only in process memory. The jobs never pass through Lua: SORT BY nosort with LIMIT copies
# the range inside Redis and LTRIM drops it from the queue, where RPOP into a Lua table, msgpack-packing it into
# a hash field and returning the table cost Redis about four times as much per job. The script returns how many
# it moved; the caller reads them with LRANGE in the same round trip (newest first, as they stood in the queue).
# Taking into a batch id that already holds a list returns its length instead: redis-py resends a command whose
# answer was lost (timeout, dropped connection), and a second run must not take another batch into it.
TAKE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return redis.call('LLEN', KEYS[2]) end
local len = redis.call('LLEN', KEYS[1])
local n = math.min(tonumber(ARGV[1]), len)
if n <= 0 then return 0 end
redis.call('SORT', KEYS[1], 'BY', 'nosort', 'LIMIT', len - n, n, 'STORE', KEYS[2])
if n == len then redis.call('DEL', KEYS[1]) else redis.call('LTRIM', KEYS[1], 0, len - n - 1) end
redis.call('SADD', KEYS[3], ARGV[2])
return n
"""

# The jobs of a batch apnsd packed into a hash field (cmsgpack.pack of the jobs, oldest first); anything else (a
# field another program wrote) comes back as it is, one element, which the parser then dead-letters.
_HELD_BATCH = """
local function batch(blob)
  local ok, jobs = pcall(cmsgpack.unpack, blob)
  if not ok or type(jobs) ~= 'table' then return {blob} end
  for _, job in ipairs(jobs) do
    if type(job) ~= 'string' then return {blob} end
  end
  return jobs
end
"""

# A queue with lanes (or a throttle): take up to ARGV[1] jobs from ONE lane, in one atomic step, into a list of
# their own as TAKE_SCRIPT does (SORT BY nosort LIMIT … STORE, then LTRIM: the jobs never pass through Lua), named
# in that lane's index set, so a lane batch is held and read back by position like a plain one.
# KEYS: for each lane (highest first) four: the lane, its in-flight hash, its in-flight list for this batch id, its
# index set; then the queue's token bucket, then each lane's.
# ARGV: count from the first lane, batch id, the lane to look at first (1-based; the search goes down, then
# wraps to the higher ones), count from any lower lane, the queue's rate, then each lane's rate (notifications
# per second; 0 = unlimited).
# Returns {lane, jobs moved, wait_ms}: lane 0 when nothing was taken, and wait_ms > 0 when lanes hold work that the
# throttle holds back (the time until one token), 0 when every lane is empty. The caller reads the lane's list
# (LRANGE, newest first as they stood in the lane) in the same round trip.
# A bucket holds at most a tenth of a second's worth of tokens (at least one), so bursts stay bounded; it is
# a hash {tokens, at} refilled from Redis's own clock, so every worker on every host shares one budget.
# A batch id that already holds a batch (a resent command whose answer was lost) returns that batch as take does:
# its list, or a hash field an earlier apnsd version wrote, which is turned into the list here.
LANES_TAKE_SCRIPT = (
    _HELD_BATCH
    + """
local count, batch_id, first, lower = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local L = (#KEYS - 1) / 5
for i = 1, L do
  local list = KEYS[4 * i - 1]
  if redis.call('EXISTS', list) == 1 then return {i, redis.call('LLEN', list), 0} end
  local held = redis.call('HGET', KEYS[4 * i - 2], batch_id)
  if held then
    local jobs = batch(held)
    for j = 1, #jobs, 1000 do redis.call('LPUSH', list, unpack(jobs, j, math.min(j + 999, #jobs))) end
    redis.call('HDEL', KEYS[4 * i - 2], batch_id)
    if #jobs > 0 then redis.call('SADD', KEYS[4 * i], batch_id) end
    return {i, #jobs, 0}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function level(key, rate)
  if rate <= 0 then return math.huge end
  local b = redis.call('HMGET', key, 'tokens', 'at')
  local cap = math.max(1, rate / 10)
  local tokens, at = tonumber(b[1]), tonumber(b[2])
  if not tokens or not at then return cap end
  return math.min(cap, tokens + math.max(0, now - at) * rate)
end
local function spend(key, rate, have, used)
  if rate <= 0 then return end
  redis.call('HSET', key, 'tokens', tostring(have - used), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(1000 * math.max(1, rate / 10) / rate) + 1000)
end
local qkey, qrate = KEYS[4 * L + 1], tonumber(ARGV[5])
local qhave = level(qkey, qrate)
local wait = 0
for j = 0, L - 1 do
  local i = (first - 1 + j) % L + 1
  local lane = KEYS[4 * i - 3]
  local len = redis.call('LLEN', lane)
  if len > 0 then
    local lkey, lrate = KEYS[4 * L + 1 + i], tonumber(ARGV[5 + i])
    local lhave = level(lkey, lrate)
    local allow = math.min(i == 1 and count or lower, math.floor(math.min(qhave, lhave)))
    if allow >= 1 then
      local n = math.min(allow, len)
      redis.call('SORT', lane, 'BY', 'nosort', 'LIMIT', len - n, n, 'STORE', KEYS[4 * i - 1])
      if n == len then redis.call('DEL', lane) else redis.call('LTRIM', lane, 0, len - n - 1) end
      redis.call('SADD', KEYS[4 * i], batch_id)
      spend(qkey, qrate, qhave, n)
      spend(lkey, lrate, lhave, n)
      return {i, n, 0}
    end
    local need = 0
    if qhave < 1 then need = (1 - qhave) / qrate end
    if lhave < 1 then need = math.max(need, (1 - lhave) / lrate) end
    if wait == 0 or need < wait then wait = need end
  end
end
if wait > 0 then return {0, 0, math.max(1, math.ceil(wait * 1000))} end
return {0, 0, 0}
"""
)

# Return in-flight batches to the consuming end of the queue (KEYS[2]), oldest first: the given batch ids
# (ARGV[2]…), or all of them. A batch is a field of the worker's in-flight hash (KEYS[1]; what a partial commit
# keeps, and batches an earlier apnsd version took) or a list of its own, named ARGV[1] .. batch id, whose id is in
# the index set (KEYS[3]; a take, plain or from a lane). With a heartbeat key (KEYS[4]) nothing moves while it
# exists: the check and the move are one atomic step, so two workers racing to recover the same dead worker move
# each job exactly once. (In cluster mode the heartbeat lives in another slot; see requeue_from_dead_workers.)
# A field another program wrote there (not a msgpack list of jobs) is returned as one queue element, which the
# parser then dead-letters: it neither vanishes nor stops the recovery of the batches around it.
RECOVER_SCRIPT = (
    _HELD_BATCH
    + """
if KEYS[4] and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local batch_ids = {}
for i = 2, #ARGV do batch_ids[#batch_ids + 1] = ARGV[i] end
if #batch_ids == 0 then
  batch_ids = redis.call('HKEYS', KEYS[1])
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do batch_ids[#batch_ids + 1] = id end
end
local function order(id) return tonumber(id) or math.huge end  -- a field apnsd did not write sorts last
table.sort(batch_ids, function(a, b) return order(a) < order(b) end)
local n = 0
for i = #batch_ids, 1, -1 do
  local id = batch_ids[i]
  local blob = redis.call('HGET', KEYS[1], id)
  if blob then
    local jobs = batch(blob)
    for j = #jobs, 1, -1 do
      redis.call('RPUSH', KEYS[2], jobs[j])
      n = n + 1
    end
    redis.call('HDEL', KEYS[1], id)
  end
  local list = ARGV[1] .. id
  if redis.call('SREM', KEYS[3], id) == 1 or redis.call('EXISTS', list) == 1 then
    -- the list holds the batch as it stood in the queue (oldest rightmost): appended newest first, it ends there
    local jobs = redis.call('LRANGE', list, 0, -1)
    for j = 1, #jobs, 1000 do
      redis.call('RPUSH', KEYS[2], unpack(jobs, j, math.min(j + 999, #jobs)))
    end
    n = n + #jobs
    redis.call('DEL', list)
  end
end
return n
"""
)

# `apnsd dead requeue`, one entry, when the dead list and the queue share a slot. KEYS: dead list, queue.
# ARGV: the dead entry, its job. The push comes first: a queue holding another type fails the script before
# the entry leaves the dead list (a MULTI would remove the entry and then fail the push: the job lost).
# Returns 0, with nothing changed, when another requeuer took the entry first.
REQUEUE_DEAD_SCRIPT = """
redis.call('LPUSH', KEYS[2], ARGV[2])
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then return 1 end
redis.call('LREM', KEYS[2], 1, ARGV[2])
return 0
"""

# The jobs of one in-flight batch in taking order (oldest first): its hash field (KEYS[1]), unpacked by Redis so
# that they come back as the bytes that were taken (msgpack str entries decoded in Python would be text, and not
# every job is valid UTF-8), or its list (KEYS[2]).
CLAIM_SCRIPT = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held then return cmsgpack.unpack(held) end
local jobs = redis.call('LRANGE', KEYS[2], 0, -1)
local out = {}
for j = #jobs, 1, -1 do out[#out + 1] = jobs[j] end
return out
"""

# Move due scheduled jobs (score <= now) to the consuming end of their queue, at most ARGV[2] at once.
# The latest-due is pushed first, so the earliest-due ends up rightmost and is taken first. The pushes come
# before the removal: a queue holding another type fails the script before any job leaves the scheduled set
# (a script is not rolled back, so removing first lost the due jobs).
PROMOTE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due == 0 then return 0 end
for i = #due, 1, -1 do redis.call('RPUSH', KEYS[2], due[i]) end
redis.call('ZREM', KEYS[1], unpack(due))
return #due
"""


# --- committing a batch ------------------------------------------------------------------------
# A batch's commit is a script, not a MULTI/EXEC: Redis does not roll a transaction back when one of its
# commands fails (a shared key holding the wrong type), so the in-flight HDEL would succeed while the
# outcome writes it stands for failed, and the outcomes would vanish. The script checks every key it is
# about to write first (and that the counts it will HINCRBY are integers: a script is not rolled back either,
# so a failed HINCRBY after the writes would have them repeated by the retry) and raises WRONGTYPE naming the
# key before it writes anything; the batch then stays
# in flight and is committed, once, after the key is fixed. Arguments come as counted runs (see
# commit_args); the outcome half (shared keys) and the queue half (queue slot) are separate pieces so that
# cluster mode can run them as two scripts, one per slot.
_COMMIT_LIB = """
local at = 0
local function nxt() at = at + 1; return ARGV[at] end
local function list(n) local t = {}; for j = 1, n do t[j] = nxt() end; return t end
local function check(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    error({err = 'WRONGTYPE ' .. key .. ' holds a ' .. t .. ', expected a ' .. want})
  end
end
local function chunked(cmd, key, items)
  for j = 1, #items, 1000 do redis.call(cmd, key, unpack(items, j, math.min(j + 999, #items))) end
end
"""
_OUTCOMES_READ = """
local dead = list(tonumber(nxt()))
local unreg = list(2 * tonumber(nxt()))
local gone = list(2 * tonumber(nxt()))
local nres = tonumber(nxt())
local maxlen = nxt()
local results = {}
if nres > 0 then results = cmsgpack.unpack(nxt()) end
local counts = list(2 * tonumber(nxt()))
if #dead > 0 then check(KEYS[1], 'list') end
if #unreg > 0 then check(KEYS[2], 'hash') end
if #gone > 0 then check(KEYS[5], 'hash') end
if nres > 0 then check(KEYS[3], 'stream') end
if #counts > 0 then
  check(KEYS[4], 'hash')
  local fields = {}
  for j = 1, #counts, 2 do fields[#fields + 1] = counts[j] end
  for _, v in ipairs(redis.call('HMGET', KEYS[4], unpack(fields))) do
    -- HINCRBY would fail after the writes above it: on text, and on a count it would take past 2^63 - 1
    if v and (not string.match(v, '^%-?%d+$') or #v > 18) then
      error({err = 'WRONGTYPE ' .. KEYS[4] .. ' holds a count that is not an integer below 10^18'})
    end
  end
end
"""
_OUTCOMES_WRITE = """
chunked('LPUSH', KEYS[1], dead)
chunked('HSET', KEYS[2], unreg)
chunked('HSET', KEYS[5], gone)
for j = 1, nres do redis.call('XADD', KEYS[3], '*', unpack(results[j])) end
if nres > 0 and maxlen ~= '0' then redis.call('XTRIM', KEYS[3], 'MAXLEN', '~', maxlen) end
for j = 1, #counts, 2 do redis.call('HINCRBY', KEYS[4], counts[j], counts[j + 1]) end
"""
# KEYS (after the outcome keys, from index Q): queue, scheduled set, in-flight hash, in-flight index set, the
# batch's in-flight list. A batch taken into a list leaves it here; what a partial commit keeps goes to the hash.
_QUEUE_READ = """
local requeue = list(tonumber(nxt()))
local sched = list(2 * tonumber(nxt()))
local batch_id = nxt()
local keep = nxt()  -- '' when the batch is done; else what stays in flight (a partial commit)
if #requeue > 0 then check(KEYS[Q], 'list') end
if #sched > 0 then check(KEYS[Q + 1], 'zset') end
check(KEYS[Q + 2], 'hash')
check(KEYS[Q + 3], 'set')
check(KEYS[Q + 4], 'list')
"""
_QUEUE_WRITE = """
chunked('RPUSH', KEYS[Q], requeue)
chunked('ZADD', KEYS[Q + 1], sched)
redis.call('DEL', KEYS[Q + 4])
redis.call('SREM', KEYS[Q + 3], batch_id)
if keep == '' then return redis.call('HDEL', KEYS[Q + 2], batch_id) end
redis.call('HSET', KEYS[Q + 2], batch_id, keep)
return 1
"""
# KEYS: dead, unregistered, results, stats, gone channels, queue, scheduled, in-flight hash, index set, batch list.
COMMIT_SCRIPT = "local Q = 6\n" + _COMMIT_LIB + _OUTCOMES_READ + _QUEUE_READ + _OUTCOMES_WRITE + _QUEUE_WRITE
# Cluster, shared slot. KEYS: dead, unregistered, results, stats, gone channels, the "written" marker, then
# finished markers to delete. The last ARGV is the marker's TTL.
COMMIT_OUTCOMES_SCRIPT = (
    _COMMIT_LIB
    + _OUTCOMES_READ
    + _OUTCOMES_WRITE
    + """
redis.call('SET', KEYS[6], '1', 'EX', nxt())
for j = 7, #KEYS do redis.call('DEL', KEYS[j]) end
return 1
"""
)
# Cluster, the queue's slot. KEYS: queue, scheduled set, in-flight hash, index set, batch list.
COMMIT_QUEUE_SCRIPT = "local Q = 1\n" + _COMMIT_LIB + _QUEUE_READ + _QUEUE_WRITE


def batch_length(blob: bytes) -> int:
    """How many queue elements recovering an in-flight batch gives back (RECOVER_SCRIPT's rule): its jobs, or 1
    for a value another program wrote there (not a msgpack array of str)."""
    try:
        items = msgspec.msgpack.decode(blob, type=list[msgspec.Raw])
    except msgspec.MsgspecError:
        return 1
    if all(memoryview(item)[:1].tobytes() in _MSGPACK_STR_HEADS for item in items):
        return len(items)
    return 1


_MSGPACK_STR_HEADS = frozenset(bytes([b]) for b in (*range(0xA0, 0xC0), 0xD9, 0xDA, 0xDB))


def pack_jobs(raws: list[bytes]) -> bytes:
    """An in-flight batch as the scripts store it: a msgpack array of msgpack *str* items, as Lua's
    cmsgpack.pack writes them (cmsgpack cannot read msgpack's bin type; the bytes need not be UTF-8)."""
    n = len(raws)
    parts = [
        bytes([0x90 | n])
        if n < 16
        else (b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big"))
    ]
    for raw in raws:
        size = len(raw)
        if size < 32:
            parts.append(bytes([0xA0 | size]))
        elif size < 256:
            parts.append(b"\xd9" + bytes([size]))
        elif size < 65536:
            parts.append(b"\xda" + size.to_bytes(2, "big"))
        else:
            parts.append(b"\xdb" + size.to_bytes(4, "big"))
        parts.append(raw)
    return b"".join(parts)


@dataclass
class Commit:
    """Everything one batch resolves to, written to Redis in a single transaction. With ``keep`` it is
    a partial commit: the batch stays in flight holding just those jobs (the ones still unresolved)."""

    queue: str
    batch_id: str
    dead: list[bytes] = field(default_factory=list)
    unregistered: dict[str, bytes] = field(default_factory=dict)
    channels_gone: dict[str, bytes] = field(default_factory=dict)  # broadcast channel id → entry
    scheduled: dict[bytes, float] = field(default_factory=dict)
    requeue: list[bytes] = field(default_factory=list)
    results: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sent: bool = False  # an attempt went out: if its answer was lost, it may have run
    outcomes_written: bool = False  # cluster mode: the prefix-slot half is done (a retry skips it)
    keep: list[bytes] | None = None


def outcome_args(c: Commit, results_maxlen: int) -> list[bytes | str | int | float]:
    """The outcome half of a commit script's arguments: dead, unregistered, gone channels, results, counts
    (counted runs)."""
    args: list[bytes | str | int | float] = [len(c.dead), *c.dead, len(c.unregistered)]
    for token, entry in c.unregistered.items():
        args += (token, entry)
    args.append(len(c.channels_gone))
    for channel, entry in c.channels_gone.items():
        args += (channel, entry)
    args += (len(c.results), results_maxlen)
    if c.results:
        # One argument for every receipt: as name/value arguments a campaign's receipts were most of a commit's
        # cost, on the delivery loop's thread (encoding) and in Redis (the script walking them).
        args.append(_receipts([[part for item in r.items() for part in item] for r in c.results]))
    counts = [(name, n) for name, n in c.counts.items() if n]
    args.append(len(counts))
    for name, n in counts:
        args += (name, n)
    return args


def queue_args(c: Commit) -> list[bytes | str | int | float]:
    """The queue half: jobs returned to the queue (first-taken last, so it ends up rightmost), retries, the batch
    id, and what stays in flight after a partial commit ("" when the batch is done)."""
    args: list[bytes | str | int | float] = [len(c.requeue), *reversed(c.requeue), len(c.scheduled)]
    for job, at in c.scheduled.items():
        args += (at, job)
    args += (c.batch_id, pack_jobs(c.keep) if c.keep is not None else "")
    return args


class Keys:
    """Every Redis key name apnsd uses, derived from the prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dead = f"{prefix}:dead"
        self.unregistered = f"{prefix}:unregistered"
        self.channels_gone = f"{prefix}:channels:gone"
        self.results = f"{prefix}:results"
        self.workers = f"{prefix}:workers"
        # The same workers, in a set earlier versions never touch: one of them recovering a dead worker removes it
        # from ``workers`` after returning only the hash batches it knows, and the worker's batch lists would
        # then belong to nobody. Current workers recover every worker named in either set.
        self.list_workers = f"{prefix}:workers:lists"
        self.stats = f"{prefix}:stats"
        self.default_queue = f"{prefix}:queue"

    def inflight(self, queue: str, worker: str) -> str:
        """The hash holding what partial commits keep of one worker's batches taken from one queue, and batches
        an earlier apnsd version took: one msgpack field per batch (a take keeps its batch in a list of its own)."""
        return f"{queue}:inflight:{worker}"

    def inflight_batches(self, queue: str, worker: str) -> str:
        """The set of one worker's in-flight batch ids (taken from one queue) whose jobs sit in lists of their own."""
        return f"{queue}:inflight-batches:{worker}"

    def inflight_list_prefix(self, queue: str, worker: str) -> str:
        """The name of one worker's in-flight list for a batch taken from one queue, without the batch id."""
        return f"{queue}:inflight-batch:{worker}:"

    def inflight_list(self, queue: str, worker: str, batch_id: str) -> str:
        """The list holding the jobs of one in-flight batch (as they stood in the queue: oldest rightmost)."""
        return self.inflight_list_prefix(queue, worker) + batch_id

    def heartbeat(self, worker: str) -> str:
        """The worker's liveness key (expires unless refreshed)."""
        return f"{self.prefix}:worker:{worker}"

    def scheduled(self, queue: str) -> str:
        """The sorted set of jobs waiting for their send_at, for one queue."""
        return f"{self.prefix}:scheduled" if queue == self.default_queue else f"{queue}:scheduled"

    def throttle(self, queue: str) -> str:
        """The token bucket of a queue (all its lanes); in the queue's slot."""
        return f"{queue}:throttle"

    def lane_throttle(self, lane: str) -> str:
        """The token bucket of one lane; in the queue's slot."""
        return f"{lane}:throttle:lane"

    def written(self, worker: str, queue: str, batch_id: str) -> str:
        """Cluster mode: marks that a batch's outcomes are written while its in-flight half is pending."""
        return f"{self.prefix}:written:{worker}:{queue}:{batch_id}"
