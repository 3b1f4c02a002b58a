"""What one app authenticates with, loaded once and shared by its sessions and the feedback poller."""

from __future__ import annotations

from dataclasses import dataclass

from apnsd.gateway.credentials import ClientIdentity, TokenSigner


@dataclass
class AppCredentials:
    """A client certificate, a token signer, or neither (mock gateways without client auth)."""

    identity: ClientIdentity | None
    signer: TokenSigner | None
