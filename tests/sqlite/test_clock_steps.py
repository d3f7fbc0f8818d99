"""Backoff times are wall-clock times in the log: a clock stepped back must not hold retries
back by the size of the step (issue 12, "also seen")."""

from __future__ import annotations

import time

from cdc_daemon.changelog import MAX_DELAY, ChangeLog

from .helpers import World


def test_an_entry_scheduled_before_the_clock_went_back_is_due(world: World) -> None:
    world.sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    world.install("t")
    world.sql("INSERT INTO t VALUES (1, 'a')", "INSERT INTO t VALUES (2, 'b')",
              "INSERT INTO t VALUES (3, 'c')")
    now = time.time()
    # Key 1 backs off for a minute; key 2 was scheduled a minute ahead, and then the clock was
    # stepped back an hour: it looks due only in an hour and a minute. Key 3 is due.
    world.sql(
        ("UPDATE change_log SET next_attempt_at = ? WHERE pk = 1", [now + 60]),
        ("UPDATE change_log SET next_attempt_at = ? WHERE pk = 2", [now + 3600 + 60]),
    )
    db = world.open()
    try:
        with db.read() as conn:
            due = ChangeLog(db, world.names, max_attempts=3).read_batch(conn, 10, now)
    finally:
        db.close()
    assert sorted(e.log_key for e in due) == [2, 3]
    assert 60 < MAX_DELAY < 3600
