"""batching.BatchSize: batches grow while they come back full and shrink when caught up, within
MIN_BATCH and the configured upper bound, and never past one batch's time or memory budget;
and the sync reads with it (FakeSink for Typesense, the app's writes from its own process)."""

from __future__ import annotations

from pathlib import Path

from support import app_write
from support.fake_sink import FakeSink

from cdc_daemon.batching import FIRST_BATCH, MAX_BATCH_BYTES, MIN_BATCH, TARGET_SECONDS, BatchSize
from cdc_daemon.changelog import ChangeLog
from cdc_daemon.config import SyncConfig, TableConfig
from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.sync import Syncer
from cdc_daemon.triggers import install
from cdc_daemon.wiring import collection_manager, mapping_from_config

QUICK = TARGET_SECONDS / 10


def _batch(size: BatchSize, entries: int, seconds: float = QUICK, size_bytes: int = 1000) -> int:
    """One batch read with the current size and sent: the size it was read with."""
    limit = size.current
    size.read(min(entries, limit), limit)
    size.sent(seconds, size_bytes)
    return limit


def test_a_backlog_grows_the_batch_up_to_the_configured_bound() -> None:
    size = BatchSize(10_000)
    seen = [_batch(size, 10**6) for _ in range(6)]
    assert seen == [1000, 2000, 4000, 8000, 10_000, 10_000]


def test_caught_up_the_batch_shrinks_back() -> None:
    size = BatchSize(10_000)
    size.current = 6400
    _batch(size, 1000)  # a quarter full at most: caught up
    assert size.current == 3200
    _batch(size, 1000)  # not full, not nearly empty: stays
    assert size.current == 3200
    for _ in range(10):
        _batch(size, 1)
    assert size.current == MIN_BATCH


def test_a_slow_or_large_batch_halves_it_and_stops_the_growth() -> None:
    size = BatchSize(10_000)
    size.current = 6400
    _batch(size, 10**6, seconds=3 * TARGET_SECONDS)  # grown to 10,000 when read, then halved
    assert size.current == 5000
    _batch(size, 10**6, seconds=1.5 * TARGET_SECONDS)  # over budget: the next does not grow
    assert size.current == 5000
    _batch(size, 10**6)  # read after an over-budget batch: no growth; quick itself
    assert size.current == 5000
    _batch(size, 10**6)  # read after a quick one: grows
    assert size.current == 10_000
    _batch(size, 10**6, size_bytes=MAX_BATCH_BYTES + 1)
    assert size.current == 5000


def test_a_small_configured_bound_is_the_size() -> None:
    size = BatchSize(50)
    assert [_batch(size, n) for n in (50, 1, 50)] == [50, 50, 50]


def test_the_default_bound_is_five_thousand() -> None:
    assert SyncConfig().batch_size == 5000


def test_the_sync_reads_a_backlog_in_growing_batches(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    rows = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 7000)"
            " INSERT INTO items SELECT i, 'x' FROM n")
    app_write(path, [[("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)", [])],
                     [(rows, [])]])
    db = Database(path)
    try:
        names = LogTables("change_log")
        info = db.table_info("items")
        install(db, names, [info])
        app_write(path, [[("UPDATE items SET name = 'y'", [])]])  # 7,000 entries waiting
        mapping = mapping_from_config(info, TableConfig(table="items"), "tables[0]")
        sink = FakeSink()
        collections = collection_manager(sink, db, names, 10_000, {"items": "tables[0]"})
        syncer = Syncer(db, ChangeLog(db, names, 1), sink, {"items": mapping}, 10_000, collections)
        sizes = []
        while (report := syncer.sync_once()).entries:
            sizes.append(report.entries)
        assert sizes == [FIRST_BATCH, 2000, 4000]  # each twice the last
    finally:
        db.close()
