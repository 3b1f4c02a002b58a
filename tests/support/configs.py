"""Config files and config errors for the tests that check what apnsd accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from apnsd.config import load_config
from apnsd.errors import ConfigError


def quick_worker_env(redis_url: str, state_dir: Path | str) -> dict[str, str]:
    """The APNSD_* worker settings every test daemon shares: its Redis and state directory, a short grace period,
    short blocking takes, and no metrics listener."""
    return {
        "APNSD_REDIS_URL": redis_url,
        "APNSD_WORKER_STATE_DIR": str(state_dir),
        "APNSD_WORKER_GRACE_PERIOD": "5",
        "APNSD_WORKER_BLOCK_TIMEOUT": "0.2",
        "APNSD_METRICS_LISTEN": "",
    }


def write(tmp_path: Path, text: str, name: str = "apnsd.toml") -> str:
    """Write a config file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def config_error(path: str | None = None, env: dict[str, str] | None = None) -> ConfigError:
    """The ConfigError that loading raises."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    return info.value
