"""Jobs, Redis preloading, and running apnsd daemons as measured child processes."""

from __future__ import annotations

import compileall
import math
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

PAYLOAD = b'{"aps":{"alert":"Server down","badge":1,"sound":"default"},"server":{"serverId":1,"name":"web-1"}}'
QUEUE = "apnsd:queue"
STATS = "apnsd:stats"
RESULTS = "apnsd:results"
_MUL = 0x9E3779B97F4A7C15F39CC0605CEDC8341082276BF3A27251F86C6A11D0C18E95  # odd: i -> i*MUL is a bijection mod 2**256
_MASK = (1 << 256) - 1


def token_hex(i: int) -> str:
    """A unique, random-looking 32-byte device token for job number i."""
    return "%064x" % ((i * _MUL + 0x5EED) & _MASK)


BAD_PREFIX = "bad0bad0"  # tokens the error-answering sink rejects; 1 in 4·10⁹ random tokens starts with it


def job(i: int, prefix: str = "b", enqueued_at: float | None = None, bad: bool = False) -> bytes:
    """One ~210-byte job; ``bad`` gives it a token the error-answering sink rejects."""
    extra = f',"enqueued_at":{enqueued_at:.6f}' if enqueued_at is not None else ""
    token = token_hex(i)
    if bad:
        token = BAD_PREFIX + token[len(BAD_PREFIX) :]
    return b'{"token":"%s","id":"%s%d"%s,"payload":%s}' % (
        token.encode(),
        prefix.encode(),
        i,
        extra.encode(),
        PAYLOAD,
    )


def preload(
    r: redis.Redis,
    count: int,
    prefix: str = "b",
    per_command: int = 1000,
    per_pipeline: int = 20,
    queue: str = QUEUE,
    bad_every: int = 0,
) -> float:
    """LPUSH count jobs, 1,000 values per command, 20 commands per round trip; returns seconds taken.
    With ``bad_every`` = k, every k-th job (seeded positions) has a token the error-answering sink rejects."""
    bad = set(random.Random(count).sample(range(count), count // bad_every)) if bad_every else set()
    t0 = time.monotonic()
    p = r.pipeline(transaction=False)
    queued = 0
    for start in range(0, count, per_command):
        p.lpush(queue, *[job(i, prefix, bad=i in bad) for i in range(start, min(count, start + per_command))])
        queued += 1
        if queued == per_pipeline:
            p.execute()
            queued = 0
    if queued:
        p.execute()
    return time.monotonic() - t0


def outcomes(r: redis.Redis) -> dict[str, int]:
    """apnsd:stats: lifetime totals by outcome (delivered, dead, unregistered, returned)."""
    return {k.decode(): int(v) for k, v in r.hgetall(STATS).items()}


def resolved(stats: dict[str, int]) -> int:
    """Jobs that have their final outcome (a 'returned' job goes back to the queue: not final)."""
    return sum(v for k, v in stats.items() if k != "returned")


def clean_env() -> dict[str, str]:
    """The harness environment without any APNSD_* setting that could leak into the daemon."""
    return {k: v for k, v in os.environ.items() if not k.startswith("APNSD_")}


@dataclass
class DaemonSpec:
    """How to start one apnsd worker against a sink."""

    name: str
    env: dict[str, str]
    drain: bool = True


def daemon_env(
    redis_url: str,
    state_dir: str,
    *,
    protocol: str,
    port: int,
    ca_file: str,
    cert: str = "",
    token: tuple[str, str, str, str] | None = None,
    worker_id: str = "",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """APNSD_* overrides for one app 'default' against 127.0.0.1:port."""
    env = clean_env()
    env.update(
        {
            "APNSD_REDIS_URL": redis_url,
            "APNSD_APP_DEFAULT_HOST": "127.0.0.1",
            "APNSD_APP_DEFAULT_PORT": str(port),
            "APNSD_APP_DEFAULT_CA_FILE": ca_file,
            "APNSD_APP_DEFAULT_PROTOCOL": protocol,
            "APNSD_METRICS_LISTEN": "",
            "APNSD_LOG_LEVEL": "warning",
            "APNSD_WORKER_STATE_DIR": state_dir,
        }
    )
    if cert:
        env["APNSD_APP_DEFAULT_CERT"] = cert
    if token:
        key, key_id, team_id, topic = token
        env.update(
            {
                "APNSD_APP_DEFAULT_TOKEN_KEY": key,
                "APNSD_APP_DEFAULT_KEY_ID": key_id,
                "APNSD_APP_DEFAULT_TEAM_ID": team_id,
                "APNSD_APP_DEFAULT_TOPIC": topic,
            }
        )
    if worker_id:
        env["APNSD_WORKER_ID"] = worker_id
    env.update(extra or {})
    return env


@dataclass
class Child:
    """A running daemon: its Popen, and what wait4 told us when it exited."""

    spec: DaemonSpec
    proc: subprocess.Popen[bytes]
    log: str
    started: float
    exited: float | None = None
    status: int | None = None
    cpu_user: float = 0.0
    cpu_sys: float = 0.0
    maxrss_kb: int = 0
    hwm_kb: int = 0
    cpu_wait: float = 0.0  # seconds spent runnable but waiting for a CPU (/proc/<pid>/schedstat), last sample

    def reap(self, block: bool = False) -> bool:
        """wait4 this one PID (rusage of exactly this child); True once it has exited."""
        if self.exited is not None:
            return True
        pid, status, ru = os.wait4(self.proc.pid, 0 if block else os.WNOHANG)
        if pid == 0:
            return False
        self.exited = time.monotonic()
        self.status = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.status  # tell Popen: it must not wait for a reaped PID
        self.cpu_user, self.cpu_sys, self.maxrss_kb = ru.ru_utime, ru.ru_stime, ru.ru_maxrss
        return True

    def proc_status(self) -> dict[str, int]:
        """VmRSS / VmHWM (kB) while alive."""
        out: dict[str, int] = {}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
        except OSError:
            pass
        if "VmHWM" in out:
            self.hwm_kb = max(self.hwm_kb, out["VmHWM"])
        # On a shared machine, this says how much of the run the daemon was starved of CPU. Summed over its
        # threads: /proc/<pid>/schedstat is the main thread's alone, which only waits for the others.
        try:
            waits = [int(t.read_text().split()[1]) for t in Path(f"/proc/{self.proc.pid}/task").glob("*/schedstat")]
        except (OSError, IndexError, ValueError):
            waits = []
        if waits:  # threads that have exited take their share with them: keep the highest sum seen
            self.cpu_wait = max(self.cpu_wait, sum(waits) / 1e9)
        return out

    def stop(self, timeout: float = 40.0) -> None:
        """SIGTERM by PID (graceful stop), SIGKILL after timeout."""
        if self.reap():
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self.reap():
            if time.monotonic() > deadline:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.reap(block=True)
                return
            time.sleep(0.02)

    def stderr_tail(self) -> str:
        try:
            return "".join(Path(self.log).read_text(errors="replace").splitlines(True)[-15:])
        except OSError:
            return ""


def start_daemon(spec: DaemonSpec, python: str, repo: str, workdir: str) -> Child:
    """`python -m apnsd.cli run [--drain] --config <empty file>` with the spec's environment."""
    # As installed (pip compiles a package's modules): without this, a checkout run with
    # PYTHONDONTWRITEBYTECODE set compiles every apnsd module again on each daemon start.
    compileall.compile_dir(os.path.join(repo, "apnsd"), quiet=1)
    empty = os.path.join(workdir, "empty.toml")
    Path(empty).touch()
    log = os.path.join(workdir, f"daemon-{spec.name}.log")
    argv = [python, "-m", "apnsd.cli", "run", "--config", empty] + (["--drain"] if spec.drain else [])
    with open(log, "wb") as fh:
        started = time.monotonic()
        proc = subprocess.Popen(argv, cwd=repo, env=spec.env, stdout=fh, stderr=subprocess.STDOUT)
    return Child(spec, proc, log, started)


@dataclass
class DrainResult:
    """What one drain of a preloaded backlog measured."""

    jobs: int
    started: float
    first_outcome: float | None
    all_outcomes: float | None
    children: list[Child]
    stats: dict[str, int] = field(default_factory=dict)
    stalled: bool = False
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # (t, resolved, VmRSS, VmHWM) of child 0
    progress: list[tuple[float, int]] = field(default_factory=list)  # (t, resolved) at every poll
    invalid: int = 0  # jobs with tokens the sink rejects: they must end unregistered, the rest delivered

    @property
    def ok(self) -> bool:
        return (
            not self.stalled
            and self.all_outcomes is not None
            and self.stats.get("delivered", 0) == self.jobs - self.invalid
            and self.stats.get("unregistered", 0) == self.invalid
            and all(c.status == 0 for c in self.children)
        )

    @property
    def seconds(self) -> float:
        end = (
            self.all_outcomes
            if self.all_outcomes is not None
            else max(c.exited or time.monotonic() for c in self.children)
        )
        return end - self.started

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_rate(self) -> float | None:
        if self.first_outcome is None or self.all_outcomes is None or self.all_outcomes <= self.first_outcome:
            return None
        return self.jobs / (self.all_outcomes - self.first_outcome)

    def answer_rate(self) -> float | None:
        """Jobs resolved after the first outcome was seen, over the time from then to the last outcome: the
        steady state without process start, TLS handshake and the first round trip. Unbiased when answers
        come in waves (one per round trip), unlike jobs / (last - first)."""
        first = next(((t, done) for t, done in self.progress if done > 0), None)
        if first is None or self.all_outcomes is None or self.all_outcomes <= first[0]:
            return None
        return (self.jobs - first[1]) / (self.all_outcomes - first[0])

    def middle_rate(self, low: float = 0.25, high: float = 0.75) -> float | None:
        """Jobs resolved between the first polls that saw ``low`` and ``high`` of them resolved, over the time
        between those polls: the start (connections opening one after another) and the tail stay out, and
        both ends are taken just after a wave of answers landed, so waves (one per round trip) do not bias it."""
        a = next(((t, done) for t, done in self.progress if done >= low * self.jobs), None)
        b = next(((t, done) for t, done in self.progress if done >= high * self.jobs), None)
        if a is None or b is None or b[0] <= a[0]:
            return None
        return (b[1] - a[1]) / (b[0] - a[0])

    @property
    def cpu(self) -> float:
        return sum(c.cpu_user + c.cpu_sys for c in self.children)

    @property
    def exit_seconds(self) -> float:
        return max((c.exited or 0.0) for c in self.children) - self.started


def drain(
    r: redis.Redis,
    jobs: int,
    specs: list[DaemonSpec],
    python: str,
    repo: str,
    workdir: str,
    *,
    stall_timeout: float = 60.0,
    poll: float = 0.02,
    on_sample: Callable[[DrainResult], None] | None = None,
    sample_memory: bool = False,
    invalid: int = 0,
) -> DrainResult:
    """Start the daemons on a preloaded queue; time until every job has its outcome; reap them at exit."""
    children = [start_daemon(s, python, repo, workdir) for s in specs]
    res = DrainResult(jobs, children[0].started, None, None, children, invalid=invalid)
    last_progress, last_count = time.monotonic(), -1
    try:
        while True:
            now = time.monotonic()
            stats = outcomes(r)
            done = resolved(stats)
            res.progress.append((now, done))
            # VmHWM, sampled while alive, is the peak RSS. wait4's ru_maxrss is not usable: Linux carries the
            # high-water mark of the pre-exec (forked harness) image over exec.
            for k, c in enumerate(children):
                st = c.proc_status()
                if k == 0 and sample_memory and st:
                    res.samples.append((now, done, st.get("VmRSS", 0), st.get("VmHWM", 0)))
            if done and res.first_outcome is None:
                res.first_outcome = now
            if done >= jobs and res.all_outcomes is None:
                res.all_outcomes = now
            if done != last_count:
                last_count, last_progress = done, now
            exited = [c.reap() for c in children]
            if all(exited):
                break
            if now - last_progress > stall_timeout:
                res.stalled = True
                break
            time.sleep(poll)
    finally:
        for c in children:
            c.stop()
    res.stats = outcomes(r)
    if res.all_outcomes is None and resolved(res.stats) >= jobs:
        res.all_outcomes = max(c.exited or time.monotonic() for c in children)
    return res


def iter_results(r: redis.Redis, batch: int = 10_000) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of the apnsd:results stream, oldest first."""
    last = b"-"
    while True:
        entries = r.xrange(RESULTS, min=last, max="+", count=batch)
        if last != b"-" and entries and entries[0][0] == last:
            entries = entries[1:]
        if not entries:
            return
        yield from entries
        last = entries[-1][0]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))]


def load_generator(
    r: redis.Redis, rate: float, seconds: float, prefix: str = "L", seed: int = 1, queue: str = QUEUE
) -> dict[str, float]:
    """Offer `rate` jobs/s for `seconds`, one LPUSH per job at t0 + k/rate + uniform jitter within its slot,
    each job carrying enqueued_at = time.time() just before its LPUSH. The jitter keeps arrivals from locking
    onto a phase of the millisecond, which the receipts' 1 ms time resolution would turn into a bias.
    Returns id -> enqueued_at."""
    rng = random.Random(seed)
    total = int(rate * seconds)
    t0 = time.monotonic()
    due = [t0 + (k + rng.random()) / rate for k in range(total)]
    sent: dict[str, float] = {}
    lpush = r.lpush
    k = 0
    while k < total:
        delay = due[k] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        while k < total and due[k] <= time.monotonic():  # behind schedule: catch up, one job per command
            now = time.time()
            lpush(queue, job(k, prefix, now))
            sent[f"{prefix}{k}"] = now
            k += 1
    return sent


class ResultsWatcher(threading.Thread):
    """XREAD BLOCK on apnsd:results: when each receipt became visible to an application (µs resolution)."""

    def __init__(self, url: str, start_id: bytes | str = "$") -> None:
        super().__init__(daemon=True, name="results-watcher")
        self.r = redis.Redis.from_url(url)
        self.last = start_id
        self.seen: dict[str, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            res = self.r.xread({RESULTS: self.last}, block=100, count=10_000)
            now = time.time()
            for _stream, entries in res or []:
                for eid, fields in entries:
                    self.seen.setdefault(fields.get(b"id", b"").decode(), now)
                    self.last = eid

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=5)


def wait_resolved(
    r: redis.Redis, target: int, stall_timeout: float = 60.0, alive: Callable[[], bool] | None = None
) -> bool:
    """Poll apnsd:stats until `target` jobs are resolved; False on stall or if the daemon died."""
    last, last_t = -1, time.monotonic()
    while True:
        done = resolved(outcomes(r))
        if done >= target:
            return True
        now = time.monotonic()
        if done != last:
            last, last_t = done, now
        if now - last_t > stall_timeout or (alive is not None and not alive()):
            return False
        time.sleep(0.02)
