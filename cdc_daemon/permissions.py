"""Permission problems on the files cdc-daemon uses: one line naming the file and the fix."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def running_as() -> tuple[str, str]:
    """The user and group names this process acts as (numbers when they have no name)."""
    return _user_name(os.geteuid()), _group_name(os.getegid())


def described(path: Path) -> str:
    """`owner root:root, mode 0644` (or why that is unknown)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return exc.strerror or "cannot stat it"
    owner = f"{_user_name(st.st_uid)}:{_group_name(st.st_gid)}"
    return f"owner {owner}, mode {stat.S_IMODE(st.st_mode):04o}"


def _can(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def not_writable(path: Path, what: str) -> str:
    """`what` (the database file, the lock file...) exists but this process can't write it."""
    user, group = running_as()
    return (
        f"{path}: {what} is not writable by user {user} ({described(path)}):"
        f" run `chown {user}:{group} {path}`, or run cdc-daemon as the user that owns it"
    )


def folder_not_writable(folder: Path, database: Path, lacking: str = "writable") -> str:
    user, group = running_as()
    return (
        f"{folder}: the database's folder is not {lacking} by user {user} ({described(folder)});"
        f" SQLite creates {database.name}-wal, -shm and -journal there, cdc-daemon"
        f" {database.name}.cdc-lock: run `chown {user}:{group} {folder}` (or give a group"
        " both share write access), or run cdc-daemon as the user that owns it"
    )


def not_readable(path: Path, key: str) -> str:
    """A secret or key file (`key` is its config key) this process can't read."""
    return f"{key}: {cannot_read(path)}"


def cannot_read(path: Path) -> str:
    """not_readable without the key (for a ConfigError that carries its key apart)."""
    user, group = running_as()
    return (
        f"cannot read {path}: permission denied for user {user} ({described(path)}):"
        f" run `chgrp {group} {path} && chmod 0640 {path}` (owner root, readable by the"
        " service's group)"
    )


def database_access_problem(database: Path) -> str | None:
    """Why this process can't read and write `database` and the files SQLite keeps beside it,
    or None when it can (as far as permissions go)."""
    folder = database.parent
    for above in reversed(database.parents):  # from / down: the first folder we can't enter
        if not _can(above, os.X_OK):
            return folder_not_writable(above, database, "searchable")
    if not _can(database, os.R_OK | os.W_OK):
        return not_writable(database, "the database file")
    if not _can(folder, os.W_OK | os.X_OK):
        return folder_not_writable(folder, database)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = database.with_name(database.name + suffix)
        if companion.exists() and not _can(companion, os.R_OK | os.W_OK):
            return not_writable(companion, f"SQLite's {suffix} file")
    return None
