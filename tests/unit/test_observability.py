"""Probe verdicts, the oldest-job age, drain progress, reason labels and the FATAL listener, without sockets."""

from __future__ import annotations

import io
import json
from typing import Any

from apnsd import logs, metrics
from apnsd.cli.fatal import listen
from apnsd.worker.delivery import ConnectionState, LoopSnapshot
from apnsd.worker.gauges import OldestJob, enqueued_at
from apnsd.worker.probes import LoopView, liveness, readiness
from apnsd.worker.progress import DrainProgress
from tests.support.jobs import LOG


def conn(up: bool = True, disabled: str | None = None, failures: int = 0, error: str | None = None) -> ConnectionState:
    """One published connection state."""
    return ConnectionState("app", up, disabled, error, failures, 0)


def view(at: float = 100.0, running: bool = True, feeder: bool = True, **conns: ConnectionState) -> LoopView:
    """A loop view published at ``at`` with the given connections."""
    return LoopView("q", running, feeder, LoopSnapshot(at, 0, dict(conns)))


def test_liveness_passes_for_running_loops_that_iterated_recently() -> None:
    """Running loops that published within the limit are alive, whatever their connections."""
    assert (True, "alive: 1 delivery loop(s) running") == liveness([view(app=conn(up=False, failures=9))], 100.0, 110.0)


def test_liveness_fails_for_a_stalled_or_stopped_loop_or_main_loop() -> None:
    """A silent loop, a stopped loop or feeder, or a silent main loop each fail liveness with their reason."""
    assert (False, "dead: the delivery loop of q has not iterated for 61 s") == liveness([view(at=49.0)], 110.0, 110.0)
    assert (False, "dead: the delivery loop of q has stopped") == liveness([view(running=False)], 110.0, 110.0)
    assert (False, "dead: the feeder of q has stopped") == liveness([view(feeder=False)], 110.0, 110.0)
    assert (False, "dead: the main loop has not iterated for 70 s") == liveness([view()], 40.0, 110.0)


def test_readiness_names_redis_stopping_disabled_and_failing_connections() -> None:
    """Readiness fails on a Redis error, a stop, a disabled app or repeated failed connects; passes otherwise."""
    alive = (True, "alive")
    assert (True, "ready") == readiness([view(a=conn(), b=conn(up=False, failures=2))], None, False, alive)
    assert (False, "not ready: Redis: down") == readiness([view()], "down", False, alive)
    assert (False, "not ready: stopping") == readiness([view()], None, True, alive)
    assert (False, "not ready: app a is disabled: expired") == readiness(
        [view(a=conn(disabled="expired"))], None, False, alive
    )
    assert (False, "not ready: app a: 3 connection attempts failed: refused") == readiness(
        [view(a=conn(up=False, failures=3, error="refused"))], None, False, alive
    )
    assert (False, "dead: x") == readiness([view()], None, False, (False, "dead: x"))


def test_enqueued_at_reads_only_a_finite_number() -> None:
    """enqueued_at comes from the job's field; absent, wrong type or broken JSON give None."""
    assert [1700000000.5, None, None, None, None, None] == [
        enqueued_at(raw)
        for raw in (
            b'{"token": "ab", "enqueued_at": 1700000000.5}',
            b'{"token": "ab"}',
            b'{"enqueued_at": "yesterday"}',
            b'{"enqueued_at": 1e999}',
            b"not json",
            b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # nested too deeply (the heartbeat reads the head job)
        )
    ]


def test_oldest_job_age_uses_enqueued_at_else_when_first_seen_at_the_head() -> None:
    """Stamped jobs have their own age; an unstamped head ages from when it was first seen; empty is 0."""
    oldest = OldestJob()
    assert 40.0 == oldest.age("q", b'{"enqueued_at": 60}', 100.0)
    assert 0.0 == oldest.age("q", b'{"token": "a"}', 100.0)
    assert 25.0 == oldest.age("q", b'{"token": "a"}', 125.0)
    assert 0.0 == oldest.age("q", b'{"token": "b"}', 130.0)
    assert 0.0 == oldest.age("q", None, 140.0)
    assert 0.0 == oldest.age("q", b'{"enqueued_at": 200}', 150.0)  # a clock ahead of ours is not a negative age


def test_drain_progress_line_and_summary_count_outcomes_since_the_start() -> None:
    """The line shows done/total, rate and ETA; the summary counts only what happened since the start."""
    out = io.StringIO()
    p = DrainProgress(out, True, 10.0, {"delivered": 5.0})
    totals = {"delivered": 105.0, "dead": 10.0, "retry": 2.0}

    assert "draining: 110/220 (50%)  11/s  ETA 10.0s" == p.line(totals, 110, 20.0)
    p.draw(totals, 110, 20.0)
    p.draw(totals, 100, 20.5)  # within a second of the last draw: not redrawn
    summary = p.summary(totals, 30.0)
    assert {
        "outcomes": {"dead": 10, "delivered": 100, "retry": 2},
        "notifications": 110,
        "duration_seconds": 20.0,
        "per_second": 5.5,
    } == summary
    p.finish(summary)
    assert (
        "\r\x1b[Kdraining: 110/220 (50%)  11/s  ETA 10.0s"
        "\r\x1b[Kdrained: 110 notifications in 20.0s (6/s): dead 10, delivered 100, retry 2\n"
    ) == out.getvalue()


def test_drain_progress_draws_nothing_off_a_terminal() -> None:
    """Off a terminal (logs to a pipe or file) neither the progress line nor the summary line is written."""
    out = io.StringIO()
    p = DrainProgress(out, False, 0.0, {})
    p.draw({"delivered": 1.0}, 0, 5.0)
    p.finish(p.summary({"delivered": 1.0}, 5.0))
    assert "" == out.getvalue()


def test_reason_label_keeps_identifiers_and_bounds_the_rest() -> None:
    """Known-looking reasons pass, details after a colon are cut, odd values become other."""
    assert ["BadDeviceToken", "app_disabled", "other", "other"] == [
        metrics.reason_label(r)
        for r in ("BadDeviceToken", "app_disabled: certificate /x expired", "no spaces allowed", "x" * 49)
    ]


def test_cause_label_is_a_closed_set_whatever_the_gateway_or_its_address() -> None:
    """Causes carrying a peer address, GOAWAY debug data or a gateway's reason map to one label each."""
    causes = (
        "connection to 17.188.143.34:443 lost: reset by peer",
        "connection to [2620:149:a44::1]:443 is closed",
        "GOAWAY attacker-chosen-debug-data-1",
        "GOAWAY 11",
        "error response 8 (InvalidToken)",
        "HTTP/2 protocol error: frame too large",
        "shutdown",
        "a cause no table knows",
    )
    expected = ["connection_lost"] * 2 + ["goaway"] * 2 + ["error_response", "protocol_error", "shutdown", "other"]
    assert expected == [metrics.cause_label(c) for c in causes]


def strict_json(line: str) -> Any:
    """Decode one line as RFC 8259 JSON (NaN and infinities refused) holding only Unicode text."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    value = json.loads(line, parse_constant=refuse)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # an unpaired surrogate cannot be encoded
    return value


def test_a_log_line_is_strict_json_whatever_its_values_hold() -> None:
    """CR/LF, NUL, unpaired surrogates, NaN, infinities and huge text in fields still make one valid JSON line."""
    start = len(LOG.getvalue())

    logs.get("test", app="a\udcff").warning(
        "hostile",
        reason="line\r\nfake\x00 \ud800",
        wait=float("nan"),
        limits={"k\udce9": float("-inf"), "l": [float("inf"), "x" * 100_000]},
        big="y" * 100_000,
    )

    lines = LOG.getvalue()[start:].splitlines()
    event = strict_json(lines[0])
    cut = "…(+95904 characters)"
    assert 1 == len(lines)
    assert ("a\ufffd", "line\r\nfake\x00 \ufffd", "NaN") == (event["app"], event["reason"], event["wait"])
    assert {"k\ufffd": "-Infinity", "l": ["Infinity", "x" * logs.MAX_TEXT + cut]} == event["limits"]
    assert "y" * logs.MAX_TEXT + cut == event["big"]


def test_fatal_listener_stops_on_apnsd_fatal_and_acknowledges_every_event() -> None:
    """A FATAL of apnsd calls stop; a FATAL of another program does not; each event gets READY and a result."""

    def event(name: str, program: str) -> bytes:
        payload = f"processname:{program} groupname:{program} from_state:BACKOFF".encode()
        header = (
            f"ver:3.0 server:supervisor serial:1 pool:apnsd_fatal poolserial:1 eventname:{name} len:{len(payload)}\n"
        )
        return header.encode() + payload

    stdin = io.BytesIO(event("PROCESS_STATE_FATAL", "other") + event("PROCESS_STATE_FATAL", "apnsd"))
    stdout = io.BytesIO()
    stopped: list[str] = []

    assert 0 == listen(stdin, stdout, {"apnsd"}, stopped.append)

    assert ["apnsd"] == stopped
    assert b"READY\nRESULT 2\nOKREADY\nRESULT 2\nOKREADY\n" == stdout.getvalue()


def test_label_values_come_from_configuration_not_from_jobs() -> None:
    """A job naming an app that is not configured is counted under app "unknown", with a bounded reason."""
    from apnsd.config import AppConfig
    from apnsd.core.jobs import Rejected
    from apnsd.store.layout import Commit
    from apnsd.worker.recorder import Batch, OutcomeRecorder

    recorder = OutcomeRecorder({"default": AppConfig()}, False)
    batch = Batch(Commit("q", "1"), remaining=1)
    before = metrics.totals(metrics.NOTIFICATIONS, "outcome").get("unknown", {}).get("dead", 0.0)

    recorder.reject(batch, Rejected(b"{}", "unknown_app: no app 'x'", "", "attacker-chosen-name"), 0.0)

    assert before + 1 == metrics.totals(metrics.NOTIFICATIONS, "outcome")["unknown"]["dead"]
    assert 1 <= metrics.totals(metrics.FAILED, "reason")["unknown"]["unknown_app"]
    assert "attacker-chosen-name" not in metrics.totals(metrics.NOTIFICATIONS, "outcome")
