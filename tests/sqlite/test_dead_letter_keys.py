"""A dead letter clears when its key later succeeds, whichever SQLite wrote the key's text: the
app's 3.40 quote()s 0.1+0.2 as 3.00000000000000044408e-01, the daemon's 3.54 as
0.30000000000000004 (issue 12: one canonical key everywhere)."""

from __future__ import annotations

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.dead_letters import DeadLetters

from .helpers import World


def test_a_dead_letter_written_by_another_sqlite_clears(world: World) -> None:
    world.sql("CREATE TABLE t (r REAL, s TEXT, PRIMARY KEY (r, s))")
    world.install("t")
    world.sql(
        "INSERT INTO change_log_dead (tbl, pk, error, attempts, first_seen, last_seen)"
        " VALUES ('t', '3.00000000000000044408e-01,''a''', 'rejected', 10, 0, 0)",
        "INSERT INTO change_log_dead (tbl, pk, error, attempts, first_seen, last_seen)"
        " VALUES ('t', '1,''a''', 'rejected', 10, 0, 0)",  # an INTEGER 1: another key
        "INSERT INTO change_log_dead (tbl, pk, error, attempts, first_seen, last_seen)"
        " VALUES ('t', '2.5,''b''', 'rejected', 10, 0, 0)",
    )
    db = world.open()
    try:
        changelog = ChangeLog(db, world.names, max_attempts=10)
        changelog.commit([], [("t", "0.30000000000000004,'a'"), ("t", "1.0,'a'"),
                              ("t", "2.5,'b'")], [], 0)
        left = [(d["key"]) for d in DeadLetters(db, world.names).entries()]
    finally:
        db.close()
    assert left == ["1,'a'"]
