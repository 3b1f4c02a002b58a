"""`apnsd check --probe`: one real request per app with a dummy token, which proves authentication end to end."""

from __future__ import annotations

from typing import Protocol

from apnsd.config import Config
from apnsd.errors import ApnsdError

# 32 zero bytes: syntactically a device token, registered to no device. Apple judges the credentials
# first, so it answers 403 when they are wrong and 400 BadDeviceToken when they are right.
DUMMY_TOKEN = "00" * 32
PROBE_TIMEOUT = 15.0


class Report(Protocol):
    """What the probe writes to (check's report)."""

    def info(self, label: str, value: str) -> None:
        """One fact."""

    def ok(self, message: str) -> None:
        """A check that passed."""

    def error(self, message: str) -> None:
        """A check that failed."""


def probe_app(config: Config, name: str, report: Report) -> None:
    """Send the dummy notification with ``name``'s credentials and explain the gateway's verdict."""
    from apnsd.cli.send import ADVICE, notification_for
    from apnsd.gateway.apps import build_session, load_credentials
    from apnsd.gateway.oneshot import send_one

    app = config.apps[name]
    try:
        note = notification_for(config, name, {"token": DUMMY_TOKEN, "app": name, "payload": {"aps": {}}})
        result = send_one(build_session(name, app, load_credentials(name, app)), note, PROBE_TIMEOUT)
    except (ApnsdError, ValueError) as exc:
        report.error(f"probe not sent: {exc}")
        return
    o = result.outcome
    took = f"{result.round_trip * 1000:.0f} ms"
    if o is None:
        report.error(f"probe: no answer from the gateway: {result.error}")
        return
    report.info("probe", f"dummy token {DUMMY_TOKEN[:8]}…: {o.status} {o.reason or ''} ({took})".rstrip())
    auth = "provider token (.p8)" if app.auth == "token" else "certificate"
    if o.reason in ("BadDeviceToken", "InvalidToken"):
        report.ok(
            f"probe: the gateway accepted the {auth} and then refused the dummy token, as it should: "
            "authentication works end to end"
        )
    elif o.status == 200:
        report.ok(f"probe: the gateway accepted the {auth} and the request (a test gateway: Apple never would)")
    elif o.status == 403:
        report.error(f"probe: the gateway rejected the {auth}: {o.reason} — {ADVICE.get(o.reason, 'see the reason')}")
    else:
        advice = ADVICE.get(o.reason, "")
        report.error(f"probe: unexpected answer {o.status} {o.reason}" + (f" — {advice}" if advice else ""))
