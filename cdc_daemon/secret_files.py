"""Secrets kept in files (an API key, a KMS token): read, stripped, one-line errors, and a warning
when others may read or change them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

from cdc_daemon.errors import CdcError
from cdc_daemon.permissions import not_readable

log = structlog.get_logger("cdc_daemon")

# docs/security.md: mode 0600, or 0640 with the service's group. Beyond that (the group may
# write, others may read or write) it is said, not refused: a key already deployed keeps working.
TOO_OPEN = stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


def read_secret_file(path: Path, key: str, error: type[CdcError]) -> str:
    """A secret kept in a file (stripped). `error` says what cannot be read or is empty, naming
    `key`, what the caller calls the file (its config key)."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except PermissionError:
        raise error(not_readable(path, key)) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise error(f"{key}: cannot read {path}: {reason}") from None
    if not value:
        raise error(f"{key}: {path} is empty")
    warn_if_open(path, key)
    return value


def warn_if_open(path: Path, key: str) -> None:
    """A warning naming the file and the fix when other users may read or change it."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & TOO_OPEN:
        log.warning(
            "secret file open to other users",
            key=key,
            path=str(path),
            mode=f"{mode:04o}",
            fix=f"chmod 0600 {path} (or 0640 with the service's group)",
        )
