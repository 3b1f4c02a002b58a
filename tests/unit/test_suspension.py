"""The suspended state the guard, the credential breaker and the certificate check share: trips, parks, trials."""

from __future__ import annotations

from apnsd.core.suspension import (
    CERTIFICATE,
    CREDENTIAL_REASONS,
    CREDENTIALS,
    MISMATCH,
    SuspendState,
    certificate_suspension,
    credential_suspension,
    mismatch_suspension,
)

TRIAL = object()


def _breaker(probe: float = 60.0) -> SuspendState:
    state = SuspendState(probe)
    state.suspend(credential_suspension("InvalidProviderToken", 403, "production", probe), 1000.0)
    return state


def _cause(state: SuspendState) -> str | None:
    return state.suspension.cause if state.suspension is not None else None


def test_credential_reasons_are_the_403s_that_condemn_the_connection() -> None:
    """Every credential-class reason of Apple's table is in the set; ExpiredProviderToken (re-sign) is not."""
    expected = {"InvalidProviderToken", "MissingProviderToken", "BadCertificate", "BadCertificateEnvironment"}
    assert (True, False) == (expected <= CREDENTIAL_REASONS, "ExpiredProviderToken" in CREDENTIAL_REASONS)


def test_a_running_app_parks_nothing() -> None:
    """Before any suspension no answer is parked and no trial is due."""
    state = SuspendState(60.0)
    assert (False, False) == (state.parks("InvalidProviderToken"), state.trial_due(10_000.0))


def test_a_credential_suspension_parks_credential_answers_only() -> None:
    """While the breaker holds the app, credential answers are parked; a BadDeviceToken is still recorded."""
    state = _breaker()
    assert (True, True, False) == (
        state.parks("InvalidProviderToken"),
        state.parks("BadCertificate"),
        state.parks("BadDeviceToken"),
    )


def test_the_first_reason_stays() -> None:
    """A second suspension neither replaces the first reason nor reports itself as new."""
    state = _breaker()
    assert (False, CREDENTIALS) == (state.suspend(mismatch_suspension("m"), 1001.0), _cause(state))


def test_a_trial_is_due_once_the_probe_interval_has_passed() -> None:
    """No trial before probe_interval seconds, one after, and none while one is out."""
    state = _breaker(60.0)
    before, due = state.trial_due(1059.9), state.trial_due(1060.0)
    state.start_trial(TRIAL)
    assert (False, True, False) == (before, due, state.trial_due(2000.0))


def test_a_refused_trial_waits_another_interval() -> None:
    """A credential answer to the trial keeps the app suspended and schedules the next trial an interval later."""
    state = _breaker(60.0)
    state.start_trial(TRIAL)
    resumed = state.trial_answered("BadCertificate", 1070.0)
    assert (False, CREDENTIALS, False, True) == (
        resumed,
        _cause(state),
        state.trial_due(1129.0),
        state.trial_due(1130.0),
    )


def test_a_trial_without_a_gateway_answer_proves_nothing() -> None:
    """A trial lost with its connection (no status from the gateway) keeps the app suspended for another interval."""
    state = _breaker(60.0)
    state.start_trial(TRIAL)
    resumed = state.trial_answered("connection_lost_repeatedly", 1070.0, from_gateway=False)
    assert (False, CREDENTIALS, True) == (resumed, _cause(state), state.trial_due(1130.0))


def test_an_accepted_trial_resumes_the_app() -> None:
    """Any answer that is not credential-class (here 200) ends the suspension."""
    state = _breaker(60.0)
    state.start_trial(TRIAL)
    assert (True, None, None) == (state.trial_answered("", 1070.0), state.suspension, state.trial)


def test_probe_interval_zero_means_sighup_only() -> None:
    """With probing off no trial ever becomes due."""
    state = _breaker(0.0)
    assert (None, False) == (state.probe_at, state.trial_due(10**9))


def test_guard_and_certificate_suspensions_are_never_probed() -> None:
    """Only the credential breaker probes; the guard and the start-up certificate check wait for SIGHUP."""
    for suspension, cause in ((mismatch_suspension("m"), MISMATCH), (certificate_suspension("p"), CERTIFICATE)):
        state = SuspendState(1.0)
        state.suspend(suspension, 0.0)
        assert (cause, False) == (_cause(state), state.trial_due(10**9))


def test_the_breakers_message_names_the_answer_the_fix_and_the_resume() -> None:
    """The operator reads the status, the reason, what it means and how the app resumes."""
    message = credential_suspension("BadCertificateEnvironment", 403, "sandbox", 300.0).message
    assert message.startswith("the sandbox gateway answered 403 BadCertificateEnvironment: the certificate is for")
    assert "SIGHUP" in message and "one trial request every 300 s" in message


def test_the_other_spelling_of_the_key_environment_reason_gets_the_same_advice() -> None:
    """BadEnvironmentKeyIdInToken is explained like Apple's BadEnvironmentKeyInToken."""
    message = credential_suspension("BadEnvironmentKeyIdInToken", 403, "production", 0).message
    assert "restricted to the other environment" in message and "trial" not in message
