"""The APNSD_* environment that points a daemon's default app at a local mock gateway and Redis."""

from __future__ import annotations

from apnsd.testing.devpki import DevPki
from apnsd.testing.mock import MockGateway


def mock_app_env(redis_url: str, mock: MockGateway, pki: DevPki, state_dir: str, **extra: str) -> dict[str, str]:
    """Variables for a daemon whose app "default" talks to ``mock`` with the dev PKI's client certificate."""
    return {
        "APNSD_REDIS_URL": redis_url,
        "APNSD_APP_DEFAULT_HOST": mock.host,
        "APNSD_APP_DEFAULT_PORT": str(mock.port),
        "APNSD_APP_DEFAULT_CA_FILE": pki.ca_cert,
        "APNSD_APP_DEFAULT_CERT": pki.client_pem,
        "APNSD_WORKER_STATE_DIR": state_dir,
        **extra,
    }
