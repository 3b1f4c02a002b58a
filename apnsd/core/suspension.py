"""An app's "stopped sending" state: why (guard, credential breaker, certificate check) and how it may resume."""

from __future__ import annotations

from dataclasses import dataclass

from apnsd.core.outcomes import BAD_DEVICE_TOKEN

# The causes are a fixed set, so they are safe in logs, health and metric labels.
MISMATCH = "environment_mismatch"  # most answers BadDeviceToken: tokens of the other environment
CREDENTIALS = "credentials"  # the gateway refused the app's certificate or provider token
CERTIFICATE = "certificate"  # the certificate does not fit the config (environment, topic): found at start

# Answers that condemn the connection's credentials rather than one notification: sending on would turn the
# whole queue into dead letters (and Apple disconnects providers that pile up errors). ExpiredProviderToken is
# not one: a fresh token fixes it. Apple spells the environment-restricted key's reason BadEnvironmentKeyInToken;
# some documents write BadEnvironmentKeyIdInToken, so both count.
CREDENTIAL_REASONS = frozenset(
    {
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadCertificate",
        "BadCertificateEnvironment",
        "BadEnvironmentKeyInToken",
        "BadEnvironmentKeyIdInToken",
    }
)

_ADVICE = {
    "InvalidProviderToken": "the provider token does not verify: wrong key_id or team_id, a revoked key, or a .p8 "
    "key of another team",
    "MissingProviderToken": "the gateway got neither a client certificate nor a provider token: configure cert "
    "(or pkcs12) or token_key",
    "BadCertificate": "the gateway does not accept the client certificate: revoked, or not an APNs certificate",
    "BadCertificateEnvironment": "the certificate is for the other environment: fix `environment` or use the "
    "certificate made for this one",
    "BadEnvironmentKeyInToken": "the .p8 key is restricted to the other environment: fix `environment` or use a "
    "key allowed for this one",
}


@dataclass(frozen=True)
class Suspension:
    """Why an app stopped sending, and which gateway answers are parked (not recorded) while it is stopped."""

    cause: str
    message: str
    parks: frozenset[str] = frozenset()


def mismatch_suspension(message: str) -> Suspension:
    """The guard's suspension: later BadDeviceToken answers wait with the app's other jobs."""
    return Suspension(MISMATCH, message, frozenset({BAD_DEVICE_TOKEN}))


def credential_suspension(reason: str, status: int | None, environment: str, probe_interval: float) -> Suspension:
    """The breaker's suspension after a credential-class answer: the cause, the fix and how it resumes."""
    advice = _ADVICE.get(reason) or _ADVICE.get(reason.replace("KeyId", "Key"), "the gateway refused the credentials")
    resume = "reload with SIGHUP once the credentials are fixed"
    if probe_interval:
        resume += f" (or wait: one trial request every {probe_interval:g} s resumes the app when it is accepted)"
    return Suspension(
        CREDENTIALS,
        f"the {environment} gateway answered {status} {reason}: {advice}. No more notifications are sent; they wait "
        f"in the scheduled set, no attempt counted; {resume}",
        CREDENTIAL_REASONS,
    )


def certificate_suspension(problem: str) -> Suspension:
    """The start-up check's suspension: the certificate cannot work with this config, so nothing is sent."""
    return Suspension(
        CERTIFICATE,
        f"{problem}. Nothing is sent; jobs wait in the scheduled set; fix the config or certificate, then SIGHUP",
    )


class SuspendState:
    """An app's sending state: running, or suspended with a reason; time is passed in (monotonic seconds).

    A credential suspension may be probed: once ``probe_interval`` has passed, one notification goes out as a
    trial. Accepted (any answer that is not credential-class), the app resumes; refused, the next trial waits
    another interval. Other suspensions end only when the session is replaced (SIGHUP).
    """

    def __init__(self, probe_interval: float) -> None:
        self.probe_interval = probe_interval  # 0: no trials, SIGHUP only
        self.suspension: Suspension | None = None
        self.probe_at: float | None = None
        self.trial: object | None = None  # the notification out as a trial, if any

    def suspend(self, suspension: Suspension, now: float) -> bool:
        """Stop the app; True unless it was already stopped (the first reason stays)."""
        if self.suspension is not None:
            return False
        self.suspension = suspension
        self.probe_at = now + self.probe_interval if suspension.cause == CREDENTIALS and self.probe_interval else None
        return True

    def parks(self, reason: str) -> bool:
        """True when an answer with this reason is to be parked instead of recorded (the app is stopped)."""
        return self.suspension is not None and reason in self.suspension.parks

    def trial_due(self, now: float) -> bool:
        """True when a trial request may go out now."""
        return self.trial is None and self.probe_at is not None and now >= self.probe_at

    def start_trial(self, note: object) -> None:
        """``note`` goes out as the trial; no other notification is sent until it is answered."""
        self.trial = note

    def trial_answered(self, reason: str, now: float, from_gateway: bool = True) -> bool:
        """The trial got its outcome: True (resumed) when the gateway answered it with anything but a
        credential-class reason; a refusal, or an outcome the gateway did not give (a lost connection),
        waits another interval."""
        self.trial = None
        assert self.suspension is not None
        if reason in self.suspension.parks or not from_gateway:
            self.probe_at = now + self.probe_interval
            return False
        self.suspension, self.probe_at = None, None
        return True
