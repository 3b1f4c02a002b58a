"""Builds each configured app's session: credentials, TLS context, transport factory, protocol."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

from apnsd import logs, metrics
from apnsd.config import AppConfig, Config, parser_limits
from apnsd.core.jobs import JobParser
from apnsd.core.suspension import certificate_suspension
from apnsd.errors import CredentialsError
from apnsd.gateway.certinfo import certificate_mismatch
from apnsd.gateway.credentials import (
    EXPIRY_WARN_DAYS,
    AppCredentials,
    TokenSigner,
    check_validity,
    client_context,
    load_identity,
    verify_hostname,
)
from apnsd.gateway.session import Session
from apnsd.gateway.transport import TlsSessions, TlsTransport


def load_credentials(name: str, app: AppConfig) -> AppCredentials:
    """Load an app's certificate or .p8 key; CredentialsError says which app and file."""
    try:
        identity = load_identity(app.cert, app.key, app.pkcs12, app.passphrase) if (app.cert or app.pkcs12) else None
        signer = (
            TokenSigner.from_p8(app.token_key, app.key_id, app.team_id, app.token_refresh) if app.token_key else None
        )
    except CredentialsError as exc:
        raise CredentialsError(f"app {name!r}: {exc}") from None
    return AppCredentials(identity, shared_signer(signer) if signer is not None else None)


_SIGNERS: dict[tuple[str, str, float, bytes], TokenSigner] = {}


def shared_signer(signer: TokenSigner) -> TokenSigner:
    """One signer per key for the whole process (apps sharing a .p8, reloads with the same key), so that a
    key mints a new token at most every token_refresh seconds, never per app or per reload."""
    return _SIGNERS.setdefault(signer.identity, signer)


def validity_problem(creds: AppCredentials, now: datetime | None = None) -> str | None:
    """Why the certificate cannot be used now (expired, not yet valid), or None; no log line, no metric."""
    if creds.identity is None:
        return None
    try:
        check_validity(creds.identity.info, now or datetime.now(UTC), creds.identity.source)
    except CredentialsError as exc:
        return str(exc)
    return None


def expiry_problem(name: str, creds: AppCredentials, log: logs.Logger, now: datetime | None = None) -> str | None:
    """Warn when the certificate expires within 30 days; return the reason when it has expired."""
    if creds.identity is None:
        return None
    info = creds.identity.info
    now = now or datetime.now(UTC)
    metrics.CERT_EXPIRY.labels(name).set(info.not_after.timestamp())
    problem = validity_problem(creds, now)
    if problem:
        return problem
    days = info.days_left(now)
    if days < EXPIRY_WARN_DAYS:
        log.warning("certificate_expires_soon", days_left=round(days, 1), not_after=info.not_after.isoformat())
    return None


def vet_session(session: Session, creds: AppCredentials, now: float) -> None:
    """Before any connect: an expired certificate disables the session (jobs dead-lettered, as before); one whose
    environment or topic does not fit the config suspends it (jobs kept) until a reload brings a fitting one."""
    app = session.cfg
    problem = expiry_problem(session.app, creds, session.log)
    if problem:
        session.disable(problem)
    elif creds.identity is not None:
        mismatch = certificate_mismatch(creds.identity.info, app.environment, app.gateway()[0], app.topic)
        if mismatch:
            session.suspend(certificate_suspension(f"certificate {creds.identity.source}: {mismatch}"), now)


def build_session(name: str, app: AppConfig, creds: AppCredentials) -> Session:
    """The session for one app, connecting lazily on its first notification."""
    http2 = app.protocol == "http2"
    alpn = b"h2" if http2 else None
    ctx = client_context(creds.identity, app.ca_file, [alpn] if alpn else None)
    host, port = app.gateway()
    sessions = TlsSessions()

    def make_transport() -> TlsTransport:
        return TlsTransport(
            host,
            port,
            ctx,
            alpn=alpn,
            timeout=app.connect_timeout,
            verify_host=verify_hostname,
            proxy=app.proxy,
            sessions=sessions,
            newer_context=None if http2 else partial(client_context, creds.identity, app.ca_file, tls13=True),
        )

    log = logs.get("session", app=name, protocol=app.protocol)
    metrics.SUSPENDED.labels(name).set(0)  # a new session (start, reload) starts unsuspended
    if http2:
        from apnsd.gateway.http2_session import Http2Session

        return Http2Session(
            name, app, make_transport, log, signer=creds.signer, default_topic=default_topic(app, creds)
        )
    from apnsd.gateway.binary_session import BinarySession

    return BinarySession(name, app, make_transport, log)


def default_topic(app: AppConfig, creds: AppCredentials) -> str | None:
    """The configured topic, else the certificate's bundle id (subject UID)."""
    if app.topic:
        return app.topic
    if creds.identity is not None:
        return creds.identity.info.bundle_id
    return None


def make_parser(config: Config) -> JobParser:
    """A job parser that knows every app's protocol and payload limits."""
    return JobParser(parser_limits(config.apps))
