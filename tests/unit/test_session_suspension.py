"""How a session applies its suspension to answers: breaker trips, parked answers, trials; and the certificate fit."""

from __future__ import annotations

from typing import Any

from apnsd.config import AppConfig
from apnsd.core.jobs import Notification
from apnsd.core.outcomes import DELIVERED, http2_outcome
from apnsd.core.suspension import CERTIFICATE, CREDENTIALS, MISMATCH, certificate_suspension
from apnsd.gateway.certinfo import certificate_mismatch, judge_environment
from apnsd.gateway.credentials import load_identity
from apnsd.gateway.session import Resolved, Session
from apnsd.testing.devpki import DevPki


class _Log:
    """Keeps (event, fields) instead of writing log lines."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((event, kw))


class _Quiet(Session):
    """A session that never connects: only the answer handling is exercised."""

    def unanswered_count(self) -> int:
        return 0

    def take_unanswered(self) -> list[Notification]:
        return []


def _session(**cfg: Any) -> _Quiet:
    return _Quiet("app", AppConfig(mismatch_guard_answers=10, **cfg), lambda: None, _Log())  # type: ignore[arg-type,return-value]


def _note(i: int) -> Notification:
    return Notification(f"{i:064x}", b"", b"{}", "app", f"id{i}", None, None, None, None, None, None, 0, None, b"")


def _answers(*outcomes: tuple[int, str]) -> Resolved:
    return [(_note(i), DELIVERED if s == 200 else http2_outcome(s, r)) for i, (s, r) in enumerate(outcomes)]


def test_the_first_credential_answer_trips_the_breaker_and_parks_itself() -> None:
    """InvalidProviderToken among the answers: suspended for credentials; it and its kind are parked, others kept."""
    s = _session()
    out = _answers((200, ""), (403, "InvalidProviderToken"), (400, "BadDeviceToken"), (403, "InvalidProviderToken"))
    recorded = s._watch_answers(out, 100.0)
    assert [("", 200), ("BadDeviceToken", 400)] == [(o.reason, o.status) for _, o in recorded]
    assert [out[1][0], out[3][0]] == s.parked
    assert CREDENTIALS == (s.hold.suspension.cause if s.hold.suspension else None)
    assert "answered 403 InvalidProviderToken" in (s.suspended or "")


def test_parkable_returns_parked_answers_and_pending_but_keeps_the_trial() -> None:
    """While suspended, parkable() empties parked and pending except the trial notification."""
    s = _session(credential_probe_interval=5.0)
    s._watch_answers(_answers((403, "BadCertificate")), 100.0)
    waiting, trial = _note(7), _note(8)
    s.pending.append(waiting)
    s.start_trial(trial)
    parked = s.parkable()
    assert (2, [trial], []) == (len(parked), list(s.pending), s.parked)
    assert waiting in parked


def test_an_accepted_trial_resumes_and_is_recorded() -> None:
    """The trial's 200 ends the suspension; its outcome is recorded like any other."""
    s = _session(credential_probe_interval=5.0)
    s._watch_answers(_answers((403, "BadCertificate")), 100.0)
    trial = _note(9)
    s.start_trial(trial)
    recorded = s._watch_answers([(trial, DELIVERED)], 106.0)
    assert ([(trial, DELIVERED)], None) == (recorded, s.suspended)
    assert "app_resumed" in [e for e, _ in s.log.events]


def test_a_refused_trial_is_parked_and_the_app_stays_suspended() -> None:
    """The trial's credential answer is parked and the next trial waits another interval."""
    s = _session(credential_probe_interval=5.0)
    s._watch_answers(_answers((403, "BadCertificate")), 100.0)
    trial = _note(9)
    s.start_trial(trial)
    recorded = s._watch_answers([(trial, http2_outcome(403, "BadCertificate"))], 106.0)
    assert ([], True, False, True) == (recorded, trial in s.parked, s.hold.trial_due(110.9), s.hold.trial_due(111.0))


def test_the_guard_still_records_the_answers_that_trip_it_and_parks_later_ones() -> None:
    """Ten BadDeviceToken answers trip the guard and are dead-lettered; the next one is parked."""
    s = _session()
    tripping = s._watch_answers(_answers(*[(400, "BadDeviceToken")] * 10), 100.0)
    later = s._watch_answers(_answers((400, "BadDeviceToken")), 101.0)
    assert (10, [], MISMATCH) == (len(tripping), later, s.hold.suspension.cause if s.hold.suspension else None)


def test_certificate_mismatch_names_the_environment_and_the_topic(pki: DevPki) -> None:
    """A sandbox-only certificate on production, and a topic the certificate lacks, are both unfit."""
    sandbox = load_identity(cert=pki.sandbox_pem).info
    universal = load_identity(cert=pki.client_pem).info
    assert (
        "sandbox-only certificate used against production gateway h"
        == (certificate_mismatch(sandbox, "production", "h", "") or "").partition(";")[0]
    )
    assert "topic 'com.other.app' is not one of the certificate's topics" in (
        certificate_mismatch(universal, "production", "h", "com.other.app") or ""
    )
    assert (None, "ok") == (
        certificate_mismatch(universal, "sandbox", "h", "com.example.app.voip"),
        judge_environment(universal, "sandbox", "h").level,
    )


def test_a_start_up_suspension_is_never_probed() -> None:
    """A certificate suspension has no trial, even with a probe interval configured."""
    s = _session(credential_probe_interval=1.0)
    s.suspend(certificate_suspension("certificate x: unfit"), 0.0)
    assert (CERTIFICATE, False) == (s.hold.suspension.cause if s.hold.suspension else None, s.hold.trial_due(1e9))
