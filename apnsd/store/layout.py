"""What apnsd keeps in Redis, without talking to it: key names, the Lua scripts, a batch's commit."""

from __future__ import annotations

from dataclasses import dataclass, field

# Move up to ARGV[1] jobs from the consuming (right) end of the queue into one batch_id of this worker's
# in-flight hash, in one atomic step, so no job ever lives only in process memory. Taking into a batch_id
# that already exists returns that batch instead: redis-py resends a command whose answer was lost
# (timeout, dropped connection), and a second run must not overwrite the batch the first one took.
TAKE_SCRIPT = """
local held = redis.call('HGET', KEYS[2], ARGV[2])
if held then return cmsgpack.unpack(held) end
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if not jobs then return {} end
redis.call('HSET', KEYS[2], ARGV[2], cmsgpack.pack(jobs))
return jobs
"""

# Return in-flight batches (KEYS[1]) to the consuming end of the queue (KEYS[2]), oldest first: the
# given batch_ids (ARGV), or all of them. With a heartbeat key (KEYS[3]) nothing moves while it exists:
# the check and the move are one atomic step, so two workers racing to recover the same dead worker
# move each job exactly once. (In cluster mode the heartbeat lives in another slot; see recover_dead.)
RECOVER_SCRIPT = """
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local batch_ids = ARGV
if #batch_ids == 0 then batch_ids = redis.call('HKEYS', KEYS[1]) end
table.sort(batch_ids, function(a, b) return tonumber(a) < tonumber(b) end)
local n = 0
for i = #batch_ids, 1, -1 do
  local blob = redis.call('HGET', KEYS[1], batch_ids[i])
  if blob then
    local jobs = cmsgpack.unpack(blob)
    for j = #jobs, 1, -1 do
      redis.call('RPUSH', KEYS[2], jobs[j])
      n = n + 1
    end
    redis.call('HDEL', KEYS[1], batch_ids[i])
  end
end
return n
"""

# The jobs of one in-flight batch, unpacked by Redis so that they come back as the bytes that were taken
# (msgpack str entries decoded in Python would be text, and not every job is valid UTF-8).
CLAIM_SCRIPT = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then return {} end
return cmsgpack.unpack(held)
"""

# Move due scheduled jobs (score <= now) to the consuming end of their queue, at most ARGV[2] at once.
# The latest-due is pushed first, so the earliest-due ends up rightmost and is taken first.
PROMOTE_SCRIPT = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(due))
for i = #due, 1, -1 do redis.call('RPUSH', KEYS[2], due[i]) end
return #due
"""


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
    scheduled: dict[bytes, float] = field(default_factory=dict)
    requeue: list[bytes] = field(default_factory=list)
    results: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sent: bool = False  # an attempt went out: if its answer was lost, it may have run
    outcomes_written: bool = False  # cluster mode: the prefix-slot half is done (a retry skips it)
    keep: list[bytes] | None = None


class Keys:
    """Every Redis key name apnsd uses, derived from the prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.dead = f"{prefix}:dead"
        self.unregistered = f"{prefix}:unregistered"
        self.results = f"{prefix}:results"
        self.workers = f"{prefix}:workers"
        self.stats = f"{prefix}:stats"
        self.default_queue = f"{prefix}:queue"

    def inflight(self, queue: str, worker: str) -> str:
        """The hash holding one worker's in-flight batches taken from one queue."""
        return f"{queue}:inflight:{worker}"

    def heartbeat(self, worker: str) -> str:
        """The worker's liveness key (expires unless refreshed)."""
        return f"{self.prefix}:worker:{worker}"

    def scheduled(self, queue: str) -> str:
        """The sorted set of jobs waiting for their send_at, for one queue."""
        return f"{self.prefix}:scheduled" if queue == self.default_queue else f"{queue}:scheduled"

    def written(self, worker: str, queue: str, batch_id: str) -> str:
        """Cluster mode: marks that a batch's outcomes are written while its in-flight half is pending."""
        return f"{self.prefix}:written:{worker}:{queue}:{batch_id}"
