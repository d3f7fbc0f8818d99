"""A backup restored while the daemon was stopped is noticed even when the file system gives
the restored file the inode the synced one had (ext4 reuses freed inodes): the lock file, which a
backup can't carry, keeps a token of the file last synced (found walking the operator guide)."""

from __future__ import annotations

import sqlite3

from cdc_daemon.database import ProcessorLock
from cdc_daemon.sweep import ResyncState

from .helpers import World


def test_a_restored_backup_with_the_same_inode_is_noticed(world: World) -> None:
    world.sql("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    world.install("t")
    db = world.open()
    lock = ProcessorLock(db.path)
    try:
        assert lock.acquire()
        state = ResyncState(db, world.names, lock)
        assert state.file_changed() is False  # the first look records this file
        backup = db.path.with_name("backup.db")
        with sqlite3.connect(db.path) as source, sqlite3.connect(backup) as copy:
            source.backup(copy)  # a backup carries the token recorded then
        state.rotate()  # the daemon started (or stopped) since: a new token, here and in the lock
        assert state.file_changed() is False
        # The backup written over the file in place: the same inode, the old token inside.
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        db.close()
        world.db = None
        world.app.close(db.path)  # the app process's connection too
        with open(db.path, "r+b") as target:
            target.write(backup.read_bytes())
            target.truncate()
        db = world.open()
        assert ResyncState(db, world.names, lock).file_changed() is True
        # Without the lock file's copy (a first start, or after uninstall) nothing is claimed.
        assert ResyncState(db, world.names).file_changed() is False
    finally:
        lock.release()
        db.close()
