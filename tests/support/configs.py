"""Config files and config errors for the tests that check what apnsd accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from apnsd.config import load_config
from apnsd.errors import ConfigError


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
