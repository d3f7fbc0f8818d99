"""Secrets kept in files (an API key, a KMS token): read, stripped, one-line errors."""

from __future__ import annotations

from pathlib import Path

from cdc_daemon.errors import CdcError
from cdc_daemon.permissions import not_readable


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
    return value
