"""The worker's local state directory: private to the daemon's user, written without following symlinks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from apnsd.errors import ConfigError


def ensure_private_dir(path: Path, key: str = "worker.state_dir") -> bool:
    """Create ``path`` (0700) or accept it when it is a real directory owned by us; True if its mode was loose.

    A loose mode is tightened to 0700 (the caller decides whether to trust what is already inside). A
    directory another user owns, or a symlink planted in its place, is refused (ConfigError naming ``key``):
    whoever controls it could swap the files written there.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError(key, f"cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(key, f"{path} is not a directory (a symlink or a file is in its place)")
    if info.st_uid != os.geteuid():
        raise ConfigError(key, f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
        return True
    return False


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a fresh temporary name (O_EXCL, O_NOFOLLOW), then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
