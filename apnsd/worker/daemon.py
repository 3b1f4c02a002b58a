"""Process lifecycle: build the loops, heartbeat, recover, promote scheduled jobs, signals, reload, stop."""

from __future__ import annotations

import faulthandler
import gc
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from apnsd import logs, metrics
from apnsd.config import Config, load_config, redact_url, require_credentials, state_dir
from apnsd.core.suspension import SuspendState
from apnsd.errors import ApnsdError, ConfigError, GatewayError, KeyTypeError, QueueError
from apnsd.gateway.apps import (
    build_session,
    expiry_problem,
    load_credentials,
    make_parser,
    validity_problem,
    vet_session,
)
from apnsd.gateway.credentials import AppCredentials
from apnsd.gateway.feedback import poll_feedback, unregistered_entries
from apnsd.gateway.session import Session
from apnsd.store.queue import JobQueue, client_for
from apnsd.worker import probes
from apnsd.worker.delivery import DeliveryLoop
from apnsd.worker.gauges import RedisGauges, set_loop_gauges
from apnsd.worker.lanes import LanePlan
from apnsd.worker.progress import DrainProgress
from apnsd.worker.recorder import OutcomeRecorder
from apnsd.worker.state import ensure_private_dir, write_private_file

EXPIRY_CHECK_INTERVAL = 86_400.0
DRAIN_HORIZON = 300.0  # --drain waits for scheduled jobs due within this many seconds
# While a campaign keeps a delivery loop busy, a feeder thread whose take just came back from Redis waits
# for the GIL until the loop is forced to let go of it: the interpreter's default 5 ms was the largest
# single wait an urgent job saw there. The feeder asks rarely, so a shorter interval costs the loop little.
GIL_SWITCH_INTERVAL = 0.0005
# Tens of thousands of notifications wait in flight, each a container the cyclic collector walks: at the
# default threshold (700 allocations) a young collection ran every few hundred jobs. Nearly everything apnsd
# frees goes by reference counting, so collecting young objects less often costs little memory.
GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Leave start-up objects (modules, config, sessions) out of every later collection, and collect young
    objects less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def default_worker_id() -> str:
    """host:pid, unique among live workers."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Daemon:
    """One worker process: a delivery loop per queue, and the housekeeping around them."""

    def __init__(self, config: Config, *, drain: bool = False) -> None:
        self.config = config
        self.drain = drain
        self.worker_id = config.worker.id or default_worker_id()
        self.log = logs.get("daemon", worker=self.worker_id)
        self._stop = threading.Event()
        self._hurry = threading.Event()  # a second stop signal: end the grace period now
        self._reload = threading.Event()
        self._report = threading.Event()  # SIGUSR1: log a status line
        self.loops: list[DeliveryLoop] = []
        self._threads: list[threading.Thread] = []
        self.creds: dict[str, AppCredentials] = {}
        self._next_feedback: dict[str, float] = {}
        self._stop_metrics: Callable[[], None] | None = None
        self._wrong_type = logs.OnceLogger(self.log, "redis_key_wrong_type")
        self._wrong_recovery = logs.OnceLogger(self.log, "redis_key_wrong_type")  # a dead worker's in-flight key
        self._main_beat = time.monotonic()  # the main loop's last iteration (liveness)
        self.redis_error: str | None = "not checked yet"  # the last heartbeat's Redis problem (readiness)
        self._progress: DrainProgress | None = None
        self.health_path = (
            state_dir(config.worker) / f"worker-{self.worker_id.replace(':', '-').replace('/', '-')}.json"
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or until drained with --drain); returns the exit code."""
        cfg = self.config
        # First: SIGTERM or SIGHUP during start-up (loading credentials, waiting for Redis) is honoured once
        # the loops run, instead of killing the process (their default action). SIGINT interrupts start-up
        # at once (exit 130), so that Ctrl-C never waits for a slow step: nothing has been taken yet.
        # SIGQUIT is a stop like SIGTERM; SIGUSR1 and SIGUSR2 ask for a status line and a stack dump: none of
        # them may kill the process with jobs in flight (their default action).
        self._install_signals(signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
        require_credentials(cfg)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        ensure_private_dir(self.health_path.parent)
        self.creds = {name: load_credentials(name, app) for name, app in cfg.apps.items()}
        client = client_for(cfg.redis)
        self.jq = JobQueue(
            client, cfg.redis.prefix, self.worker_id, cfg.redis.results_maxlen if cfg.redis.results_stream else 0
        )
        self._claim_worker_id()
        self._build_loops()
        self.gauges = RedisGauges(self.jq, self._lanes())  # every list taken from: queues, or their lanes
        metrics.declare(sorted(cfg.apps), [lp.queue for lp in self.loops])
        if cfg.metrics.listen:
            try:
                self._stop_metrics = metrics.serve(
                    cfg.metrics.listen, {"/healthz": self.liveness, "/readyz": self.readiness}
                )
            except OSError as exc:
                self.log.error("metrics_unavailable", listen=cfg.metrics.listen, error=str(exc))
        self._install_signals(signal.SIGINT)
        self.log.info(
            "started",
            queues=[lp.queue for lp in self.loops],
            apps=sorted(cfg.apps),
            redis=redact_url(cfg.redis.url),
            drain=self.drain,
        )
        if self.drain:
            live = sys.stderr.isatty()
            self._progress = DrainProgress(sys.stderr, live, time.monotonic(), _outcome_totals())
            self._progress.draw(_outcome_totals(), self._remaining(), time.monotonic())  # the starting point
        self._heartbeat()
        self._recover()
        tune_gc()
        for lp in self.loops:
            t = threading.Thread(target=lp.run, args=(cfg.worker.grace_period,), name=f"loop:{lp.queue}", daemon=True)
            t.start()
            self._threads.append(t)
        self._main_loop()
        return self._shutdown()

    def request_stop(self) -> None:
        """Ask for a graceful stop (what SIGTERM does); asked again, stop now (what a second SIGTERM does)."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def request_reload(self) -> None:
        """Ask for a reload of config and credentials (what SIGHUP does)."""
        self._reload.set()

    def _build_loops(self) -> None:
        cfg = self.config
        parser = make_parser(cfg)
        recorder = OutcomeRecorder(dict(cfg.apps), cfg.redis.results_stream)
        for queue, app_names in cfg.queues().items():
            sessions: dict[str, Session] = {}
            for name in app_names:
                for i in range(cfg.apps[name].connections):
                    s = build_session(name, cfg.apps[name], self.creds[name])
                    if i:
                        s.hold = sessions[name].hold  # one suspension per app in a loop, whichever connection trips
                    vet_session(s, self.creds[name], time.monotonic())
                    sessions[name if i == 0 else f"{name}#{i + 1}"] = s
            plan = LanePlan.for_queue(cfg, queue)
            self.loops.append(DeliveryLoop(queue, sessions, self.jq, parser, cfg.worker, recorder, plan))

    def _install_signals(self, *signals: signal.Signals) -> None:
        """SIGHUP asks for a reload, SIGTERM, SIGQUIT and SIGINT for a graceful stop (a second one: stop now),
        SIGUSR1 for a status line, SIGUSR2 for every thread's stack on stderr: the handlers only set flags."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            if sig is signal.SIGUSR2:
                # Written by the interpreter's C handler: it works even while the main loop itself is stuck.
                faulthandler.register(sig, file=_stderr_fd(), all_threads=True, chain=False)
            elif sig is signal.SIGHUP:
                signal.signal(sig, lambda *_: self._reload.set())
            elif sig is signal.SIGUSR1:
                signal.signal(sig, lambda *_: self._report.set())
            else:
                signal.signal(sig, lambda *_: self.request_stop())

    def _main_loop(self) -> None:
        w = self.config.worker
        now = time.monotonic()
        next_beat, next_recover, next_expiry = (
            now + w.heartbeat_interval,
            now + w.recover_interval,
            now + EXPIRY_CHECK_INTERVAL,
        )
        while not self._stop.wait(0.25):
            now = self._main_beat = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
            if self._report.is_set():
                self._report.clear()
                self._log_status()
            if any(not t.is_alive() for t in self._threads):
                self.log.error("delivery_loop_died")
                break
            self._promote_scheduled()
            if now >= next_beat:
                next_beat = now + w.heartbeat_interval
                self._heartbeat()
            if now >= next_recover:
                next_recover = now + w.recover_interval
                self._recover()
            self._poll_feedback(now)
            if now >= next_expiry:
                next_expiry = now + EXPIRY_CHECK_INTERVAL
                self._check_expiry()
            if self.drain and self._drained():
                self.log.info("drained")
                break
            if self._progress is not None and self._progress.due(now):
                self._progress.draw(_outcome_totals(), self._remaining(), now)

    def _shutdown(self) -> int:
        self.log.info("stopping", grace_period=self.config.worker.grace_period)
        for lp in self.loops:
            lp.request_stop()
        limit = time.monotonic() + self.config.worker.stop_allowance
        hurried = False
        for t in self._threads:
            while t.is_alive() and time.monotonic() < limit:
                if self._hurry.is_set() and not hurried:
                    hurried = True
                    self.log.warning(
                        "stop_hurried", note="second stop signal: unanswered jobs go back to the queue now"
                    )
                    for lp in self.loops:
                        lp.hurry_stop()
                t.join(min(0.1, max(0.01, limit - time.monotonic())))
            t.join(0.1)  # past the limit each loop still gets a last moment, as before
        clean = not any(t.is_alive() or lp.status.crashed for t, lp in zip(self._threads, self.loops, strict=False))
        try:
            if clean:
                # Nothing is held any more: whatever is still in this worker's in-flight storage (a
                # commit that failed at the end, a batch a failover resurrected) goes back to the queue
                # before the worker leaves the registry, where no one would look for it.
                for lane in self._lanes():
                    self.jq.requeue_held(lane)
                self.jq.retire()
        except QueueError as exc:
            self.log.warning("retire_failed", error=str(exc))
        self.health_path.unlink(missing_ok=True)
        if self._stop_metrics is not None:  # an in-process daemon must not leave the port and stale numbers behind
            self._stop_metrics()
        if self._progress is not None:
            summary = self._progress.summary(_outcome_totals(), time.monotonic())
            self._progress.finish(summary)
            self.log.info("drain_summary", **summary)
        self.log.info("stopped", clean=clean)
        return 0 if clean else 1

    def _log_status(self) -> None:
        """SIGUSR1: one `status` line with what the heartbeat publishes (queues, in flight, outcomes)."""
        status = self._status()
        self.log.info(
            "status",
            queues=status["queues"],
            outcomes=status["outcomes"],
            redis_error=self.redis_error,
            stopping=self._stop.is_set(),
        )

    # --- what the metrics listener asks (on its own thread: published values only) -------------

    def _views(self) -> list[probes.LoopView]:
        started = len(self._threads) == len(self.loops)
        return [
            probes.LoopView(lp.queue, t.is_alive() and not lp.status.crashed, lp.feeder.is_alive(), lp.published)
            for lp, t in zip(self.loops, self._threads if started else [], strict=False)
        ]

    def liveness(self) -> probes.Verdict:
        """/healthz: the main loop and every delivery loop are running and iterating (APNs and Redis may be down)."""
        if len(self._threads) < len(self.loops):
            return True, "alive: starting"
        # A blackholed Redis makes each command wait out socket_timeout: only far longer is a stall.
        stall_limit = max(probes.STALL_LIMIT, 10 * self.config.redis.socket_timeout)
        return probes.liveness(self._views(), self._main_beat, time.monotonic(), stall_limit)

    def readiness(self) -> probes.Verdict:
        """/readyz: alive, Redis answering, and every app's connection up, idle or within its first retries."""
        if len(self._threads) < len(self.loops):
            return False, "not ready: starting"
        return probes.readiness(self._views(), self.redis_error, self._stop.is_set(), self.liveness())

    # --- housekeeping ------------------------------------------------------------------------

    def _claim_worker_id(self) -> None:
        """Refuse to run under a worker id whose heartbeat belongs to another live process.

        Two processes with one id would each see the other's batches in "their" in-flight storage as
        orphans and return them to the queue: everything in flight would be delivered twice.
        """
        try:
            holder = self.jq.claim_heartbeat(self.config.worker.heartbeat_ttl, self._status())
        except QueueError as exc:
            self.log.warning("worker_id_unchecked", error=str(exc), note="Redis unreachable at start")
            return
        if holder is None or not _alive_elsewhere(holder):
            return
        raise ConfigError(
            "worker.id",
            f"worker id {self.worker_id!r} is in use by a live process (pid {holder.get('pid')} on "
            f"{holder.get('host', 'an unknown host')}); give each process its own id, or wait "
            f"{self.config.worker.heartbeat_ttl:.0f} s after that process stopped",
        )

    def _status(self) -> dict[str, Any]:
        return {
            "worker": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.time(),
            "redis": True,
            "queues": {lp.queue: lp.status.heartbeat() for lp in self.loops},
            "outcomes": _app_totals(),
        }

    def _heartbeat(self) -> None:
        w = self.config.worker
        status = self._status()
        try:
            self.jq.heartbeat(w.heartbeat_ttl, status)
            self.gauges.update(time.time())
            self.redis_error = None
        except QueueError as exc:
            status["redis"] = False
            status["redis_error"] = self.redis_error = str(exc)
        for lp in self.loops:
            metrics.IN_FLIGHT.labels(lp.queue).set(lp.status.in_flight)
        set_loop_gauges({lp.queue: lp.published for lp in self.loops})
        self._write_health(status)

    def _write_health(self, status: dict[str, Any]) -> None:
        try:
            write_private_file(self.health_path, json.dumps(status).encode())
        except OSError as exc:
            self.log.warning("health_file_unwritable", path=str(self.health_path), error=str(exc))

    def _recover(self) -> None:
        wrong: list[str] = []
        try:
            moved = self.jq.requeue_from_dead_workers(self._lanes(), wrong)
            orphaned = {
                lane: self.jq.requeue_orphans(lane, lp.handoff.held.copy) for lp in self.loops for lane in lp.lanes
            }
        except QueueError:
            return
        if wrong:  # the other dead workers' jobs came back; these wait until an operator fixes the key
            self._wrong_recovery.failed(
                f"{len(wrong)} in-flight key(s) of a dead worker hold another type", key=wrong[0]
            )
        else:
            self._wrong_recovery.recovered()
        for worker, n in moved.items():
            self.log.warning("recovered_dead_worker", dead_worker=worker, jobs=n)
        for queue, n in orphaned.items():
            if n:
                self.log.warning("returned_orphaned_batches", queue=queue, jobs=n)

    def _promote_scheduled(self) -> None:
        try:
            for lane in self._lanes():
                while self.jq.promote_due(lane, time.time()) >= 1000:
                    pass
        except KeyTypeError as exc:  # scheduled jobs and retries wait until an operator fixes the key
            self._wrong_type.failed(str(exc), key=exc.key)
            return
        except QueueError:
            return
        self._wrong_type.recovered()

    def _lanes(self) -> list[str]:
        """Every list this worker takes from: each loop's lanes (just its queue when it has none)."""
        return [lane for lp in self.loops for lane in lp.lanes]

    def _poll_feedback(self, now: float) -> None:
        """Binary apps with feedback_interval: read the feedback service and record what it reports."""
        for name, app in self.config.apps.items():
            if app.protocol != "binary" or not app.feedback_interval or now < self._next_feedback.get(name, 0.0):
                continue
            self._next_feedback[name] = now + app.feedback_interval
            try:
                tuples = poll_feedback(app, self.creds[name])
                self.jq.record_unregistered(unregistered_entries(name, tuples, time.time()))
            except (GatewayError, QueueError) as exc:
                self.log.warning("feedback_poll_failed", app=name, error=str(exc))
                continue
            self.log.info("feedback_polled", app=name, unregistered=len(tuples))

    def _check_expiry(self) -> None:
        for name, app in self.config.apps.items():
            problem = expiry_problem(name, self.creds[name], logs.get("session", app=name, protocol=app.protocol))
            if problem:
                for lp in self.loops:
                    lp.post(partial(lp.disable_app, name, problem))

    def _remaining(self) -> int:
        """Notifications still to resolve for the progress line: waiting in the queues, and in flight."""
        try:
            waiting = sum(self.jq.depth(lp.queue) for lp in self.loops)
        except QueueError:
            waiting = 0
        return waiting + sum(lp.status.in_flight for lp in self.loops)

    def _drained(self) -> bool:
        try:
            for lp in self.loops:
                for lane in lp.lanes:
                    if self.jq.depth(lane) or self.jq.scheduled_count(lane, time.time() + DRAIN_HORIZON):
                        return False
                    if lp.status.in_flight == 0 and self.jq.inflight_batches(lane):
                        return False  # an orphaned batch (see requeue_orphans) is still to be delivered
        except QueueError:
            return False
        return all(lp.status.idle for lp in self.loops) and not self._others_in_flight()

    def _others_in_flight(self) -> bool:
        """Another registered worker holds jobs of our queues: alive, it will resolve them; dead (kill -9),
        they come back to the queue once its heartbeat lapses. Either way the drain is not finished."""
        try:
            others = [w for w, _ in self.jq.workers() if w != self.worker_id]
            return any(self.jq.inflight_count(lane, w) for w in others for lane in self._lanes())
        except QueueError:
            return True

    def _do_reload(self) -> None:
        """SIGHUP: re-read config and credentials; keep the old ones if the new ones are broken."""
        try:
            new = load_config(self.config.source or None)
            require_credentials(new)
            creds = {name: load_credentials(name, app) for name, app in new.apps.items()}
        except ApnsdError as exc:
            self.log.error("reload_rejected", error=str(exc), keeping="previous config")
            return
        if (
            set(new.apps) != set(self.config.apps)
            or new.queues() != self.config.queues()
            or new.redis != self.config.redis
            or any(LanePlan.for_queue(new, lp.queue) != lp.plan for lp in self.loops)
        ):
            self.log.warning(
                "reload_partial", note="apps, queues, lanes, throttles and redis settings change only on restart"
            )
        for lp in self.loops:
            holds: dict[str, SuspendState] = {}
            for key, name in lp.apps_by_key.items():
                if name not in new.apps:
                    continue
                # An expired certificate is a broken credential: keep what this app has (a disabled session
                # stays disabled) rather than connecting with it. Other apps still reload.
                problem = validity_problem(creds[name])
                if problem:
                    self.log.error("reload_rejected", app=name, error=problem, keeping="previous credentials")
                    continue
                session = build_session(name, new.apps[name], creds[name])
                session.hold = holds.setdefault(name, session.hold)
                vet_session(session, creds[name], time.monotonic())  # expiry metric and warning, fit to the config
                self.creds[name] = creds[name]
                lp.post(partial(lp.replace_session, key, session))
        self.log.info("reloaded", config=self.config.source or "(environment)")


def _stderr_fd() -> int:
    """The descriptor of stderr, or 2 when sys.stderr is not a file (an embedding application, a test capture)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both an OSError and a ValueError
        return 2


def _alive_elsewhere(status: dict[str, Any]) -> bool:
    """True when a heartbeat's process is another one that still runs (or runs where we cannot look)."""
    pid = status.get("pid")
    if status.get("host", socket.gethostname()) != socket.gethostname():
        return True
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # a predecessor killed before its heartbeat lapsed: take over
    except PermissionError:
        return True
    return True


def _app_totals() -> dict[str, dict[str, int]]:
    """Per app, this process's running totals by outcome plus retries (what `apnsd stats --watch` turns into rates)."""
    out = {
        app: {k: int(v) for k, v in per.items()}
        for app, per in metrics.totals(metrics.NOTIFICATIONS, "outcome").items()
    }
    for app, per in metrics.totals(metrics.RETRIED, "reason").items():
        out.setdefault(app, {})["retried"] = int(sum(per.values()))
    return out


def _outcome_totals() -> dict[str, float]:
    """This process's notifications so far by outcome, summed over apps."""
    out: dict[str, float] = {}
    for per_app in metrics.totals(metrics.NOTIFICATIONS, "outcome").values():
        for outcome, n in per_app.items():
            out[outcome] = out.get(outcome, 0.0) + n
    return out
