"""While full batches follow each other, a batch's acknowledgement is written during the next
import (not between the two); it is never lost: the next batch, a partial batch or closing the
runtime writes it. Real Typesense, the app writing through stdlib sqlite3, the syncer in-process.
"""

from __future__ import annotations

from support import Env, expected_elements, insert_many_elements, log_backlog

from cdc_daemon.config import load_config
from cdc_daemon.runtime import Runtime
from cdc_daemon.wiring import build_runtime


def backlog(runtime: Runtime) -> int:
    """The log's rows, read through the runtime's own SQLite: stdlib sqlite3 in this process
    (another SQLite library on the same file) would drop APSW's POSIX locks when it closes its
    file (a known SQLite trap), and in WAL mode the two then see different logs."""
    return int(runtime.db.scalar("SELECT COUNT(*) FROM change_log"))


def runtime_for(env: Env, batch_size: int) -> Runtime:
    env.write_config([{"table": "elements"}], sync={"batch_size": batch_size})
    runtime = build_runtime(load_config(env.config_path))
    runtime.syncer.ensure_collections()
    return runtime


def test_acknowledgements_follow_one_import_behind(elements_env: Env) -> None:
    insert_many_elements(elements_env.db, 25)
    runtime = runtime_for(elements_env, batch_size=10)
    try:
        first = runtime.syncer.sync_once()
        assert (first.entries, first.upserted) == (10, {"elements": 10})
        assert backlog(runtime) == 25  # batch 1 sent; its ack waits for batch 2
        runtime.syncer.sync_once()
        assert backlog(runtime) == 15  # batch 1 acked while batch 2 was imported
        last = runtime.syncer.sync_once()  # 5 entries: nothing follows, everything is written
        assert last.entries == 5
        assert backlog(runtime) == 0
        assert runtime.syncer.sync_once().entries == 0
    finally:
        runtime.close()
    assert elements_env.documents("elements") == expected_elements(elements_env.db)


def test_closing_the_runtime_writes_the_held_acknowledgement(elements_env: Env) -> None:
    insert_many_elements(elements_env.db, 25)
    runtime = runtime_for(elements_env, batch_size=10)
    try:
        runtime.syncer.sync_once()
        assert backlog(runtime) == 25
    finally:
        runtime.close()  # as on SIGTERM or a reload
    assert log_backlog(elements_env.db) == 15
    assert len(elements_env.documents("elements")) == 10
