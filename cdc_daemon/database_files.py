"""The files a `databases:` glob matches now, by name (config.database_name).

One listing of one folder (the glob has wildcards in the file name only): cheap enough to run on
every create, rename or delete in that folder. SQLite's own files beside a database (`-wal`,
`-shm`, `-journal`) and the daemon's lock files are never databases, whatever the glob.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from cdc_daemon.config import DatabasesConfig, database_name
from cdc_daemon.database import DATABASE_SIDE_FILES
from cdc_daemon.errors import ConfigError


def folder_of(databases: DatabasesConfig) -> Path:
    return Path(databases.glob).parent


def matches(databases: DatabasesConfig, filename: str) -> bool:
    """Whether a file of that name in the folder is one of the databases."""
    pattern = Path(databases.glob).name
    if filename.startswith(".") and not pattern.startswith("."):  # as a shell's glob
        return False
    return fnmatch.fnmatchcase(filename, pattern) and not filename.endswith(DATABASE_SIDE_FILES)


def database_files(databases: DatabasesConfig) -> tuple[dict[str, Path], list[str]]:
    """The databases by name, sorted, and one line per file left out (a name another file has
    too, a name that is not valid UTF-8). A folder that can't be listed is a ConfigError."""
    folder = folder_of(databases)
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise ConfigError(
            f"{folder}: cannot list the folder: {exc.strerror}", key="databases.glob"
        ) from None
    found: dict[str, Path] = {}
    files: dict[Path, Path] = {}  # real file → its path here (a symlink to one already found)
    left_out: list[str] = []
    for filename in names:
        if not matches(databases, filename):
            continue
        path = folder / filename
        if not path.is_file():
            continue
        try:
            filename.encode("utf-8")
        except UnicodeEncodeError:
            left_out.append(f"{os.fsencode(path)!r}: file name is not valid UTF-8; left out")
            continue
        real = path.resolve()
        if real in files:
            left_out.append(f"{path}: the same file as {files[real]}; left out")
            continue
        name = database_name(path)
        if name in found:
            left_out.append(
                f"{path}: same name {name!r} as {found[name]} (collections are named after it);"
                " left out"
            )
            continue
        found[name] = path
        files[real] = path
    return found, left_out


def choose(found: dict[str, Path], name: str | None) -> dict[str, Path]:
    """`--database NAME`: that database only (a ConfigError when there is none); all without."""
    if name is None:
        return found
    if name in found:
        return {name: found[name]}
    known = ", ".join(list(found)[:5]) or "none"
    raise ConfigError(f"--database {name!r}: no such database (found: {known})")
