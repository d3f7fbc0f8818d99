"""Stands in for the app: applies SQL with Python's stdlib sqlite3, in a process of its own.

In tests: `app_write(db, transactions)` / `app_exec(db, *statements)` run this file as a script.
As a script: python app_writer.py DB  < JSON list of transactions; each transaction is a list of
[sql, params] pairs, committed together. Prints one line per committed transaction.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import sys

if __name__ != "__main__":  # the tests' side; the app (this file as a script) needs none of it
    import atexit  # (~20 ms less for each app process the suite starts)
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path
    from typing import Any

# New databases made by the same transactions, by their JSON: most tests start from one of a few
# schemas, and a copy of the file the app made costs nothing where a new app process costs ~50 ms.
_made: dict[str, Path] = {}


def app_write(db: Path, transactions: list[list[tuple[str, list[Any]]]]) -> None:
    """Apply transactions through stdlib sqlite3 in a separate process (the app). A database
    that does not exist yet is a copy of the one the app made from the same transactions before
    in this test process, if any (byte for byte the file it would make again)."""
    script = json.dumps(transactions)
    fresh = not any(Path(f"{db}{suffix}").exists() for suffix in ("", "-wal", "-journal"))
    if fresh and script in _made:
        shutil.copyfile(_made[script], db)
        return
    _run_app(db, script)
    # Kept as a template only when the app's close moved everything into the file: a daemon
    # that had it open (a fleet finding a new file) leaves the -wal, and a copy of the file alone
    # would miss what is in it (a later test got a database without its table).
    whole = not any(Path(f"{db}{suffix}").exists() for suffix in ("-wal", "-journal"))
    if fresh and whole:
        _made[script] = _templates() / f"{len(_made)}.db"
        shutil.copyfile(db, _made[script])


@functools.cache
def _templates() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="app-writer-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _run_app(db: Path, script: str) -> None:
    # -I -S: the stdlib alone, as the app has (and no site-packages to scan: ~13 ms less a start).
    result = subprocess.run(
        [sys.executable, "-I", "-S", __file__, str(db)],
        input=script, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr


def app_exec(db: Path, *statements: str) -> None:
    """Each statement in its own transaction, through the app process."""
    app_write(db, [[(sql, [])] for sql in statements])


def main() -> None:
    db = sys.argv[1]
    transactions = json.load(sys.stdin)
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    for transaction in transactions:
        if len(transaction) == 1 and transaction[0][0].lstrip().upper().startswith("PRAGMA"):
            # Outside a transaction: inside one, `PRAGMA journal_mode=WAL` is silently ignored.
            conn.execute(*transaction[0]).fetchall()
            print("committed", flush=True)
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in transaction:
                conn.execute(sql, params)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        print("committed", flush=True)
    conn.close()


if __name__ == "__main__":
    main()
