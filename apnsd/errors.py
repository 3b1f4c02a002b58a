"""The one exception tree of apnsd, split by who is at fault."""

from __future__ import annotations


class ApnsdError(Exception):
    """Root of every error apnsd raises on purpose; ``retryable`` says if trying again may help."""

    retryable: bool = False


class ConfigError(ApnsdError):
    """The configuration is wrong; names the offending key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key {key!r}: {problem}")
        self.key = key
        self.problem = problem


class CredentialsError(ApnsdError):
    """A certificate, private key, PKCS#12 bundle or .p8 signing key cannot be used."""


class QueueError(ApnsdError):
    """Redis could not be reached or refused a command; usually passes once Redis is back."""

    retryable = True


class KeyTypeError(QueueError):
    """A shared Redis key holds another type than apnsd writes there; fixing the key is up to an operator."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class GatewayError(ApnsdError):
    """The push gateway could not be reached, refused the TLS handshake or dropped the connection."""

    retryable = True


class GatewayRejected(GatewayError):
    """The gateway refused us in a way that retrying the same way will not fix (bad certificate, no ALPN)."""

    retryable = False


class ProtocolError(GatewayError):
    """The gateway sent bytes that do not follow the protocol."""


class JobError(ApnsdError):
    """A job cannot be turned into a notification; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
