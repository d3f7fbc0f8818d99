"""Database.configure_sqlite: SQLite's process-wide settings, in a process of their own (they
last for the process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys, apsw
from cdc_daemon.database import Database
lookaside = sys.argv[2] == "on"
first = Database.configure_sqlite(lookaside=lookaside)
conn = apsw.Connection(sys.argv[1])
conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
conn.execute("INSERT INTO t VALUES (1)")
conn.execute("SELECT * FROM t").fetchall()
again = Database.configure_sqlite(lookaside=lookaside)  # a connection is open: not applied
print(json.dumps({
    "first": first,
    "again": again,
    "lookaside_slots": conn.status(apsw.SQLITE_DBSTATUS_LOOKASIDE_USED)[1],
    "memory_counted": apsw.memory_used(),
}))
"""


def probe(tmp_path: Path, lookaside: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / f"{lookaside}.db"), lookaside],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return dict(json.loads(out))


def test_a_fleet_opens_its_connections_without_lookaside_and_memory_statistics(
    tmp_path: Path,
) -> None:
    seen = probe(tmp_path, "off")
    assert seen == {"first": True, "again": False, "lookaside_slots": 0, "memory_counted": 0}


def test_one_database_keeps_its_lookaside(tmp_path: Path) -> None:
    seen = probe(tmp_path, "on")
    assert seen["first"] is True and seen["memory_counted"] == 0
    assert isinstance(seen["lookaside_slots"], int) and seen["lookaside_slots"] > 0
