"""A database file replaced under the daemon: a backup restored with `mv` over app.db.

The daemon notices the new file (its inode), lets go of the old one, reopens, and brings the
collection to the new file's truth: every row sent again, every document without a row removed.
Against a real Typesense, the app as a separate stdlib-sqlite3 process, the daemon as `run`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import apsw
import httpx
import pytest
from support import (
    ELEMENTS_CONFIG,
    ELEMENTS_DDL,
    Env,
    app_exec,
    app_write,
    expected_elements,
    insert_elements,
    log_backlog,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.config import TableConfig
from cdc_daemon.database import Column, Database, TableInfo, opened_elsewhere
from cdc_daemon.localserver import free_port
from cdc_daemon.log_schema import LogTables
from cdc_daemon.row_keys import affinity
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import DocResult
from cdc_daemon.sweep import Sweep, SweepResult, candidate_keys
from cdc_daemon.triggers import install
from cdc_daemon.wiring import mapping_from_config

ELEMENTS = {k: v for k, v in ELEMENTS_CONFIG.items() if k != "collection"}
REPLACED = "database file replaced; reopening"
BACKUP = (  # how people copy a live SQLite file: the backup API, from a process of their own
    "import sqlite3, sys\n"
    "source, target = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])\n"
    "source.backup(target)\n"
    "target.close()\n"
    "source.close()\n"
)


JOURNAL = (  # outside a transaction: app_exec's BEGIN IMMEDIATE would leave the mode unchanged
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "print(conn.execute('PRAGMA journal_mode=' + sys.argv[2]).fetchone()[0])\n"
)


def set_journal_mode(db: Path, mode: str) -> None:
    result = subprocess.run([sys.executable, "-c", JOURNAL, str(db), mode], check=True,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == mode, result


def scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def backup(db: Path, target: Path) -> None:
    subprocess.run([sys.executable, "-c", BACKUP, str(db), str(target)], check=True, timeout=60)


def in_step(env: Env) -> bool:
    """Nothing left in the log and every document exactly what its row says (cheap to poll)."""
    return log_backlog(env.db) == 0 and env.documents("elements") == expected_elements(env.db)


def assert_in_sync(env: Env) -> None:
    report = env.verify()
    assert report["in_sync"] is True, report
    assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0), report
    assert env.documents("elements") == expected_elements(env.db)


def add_stray_documents(env: Env) -> None:
    """Documents no row of any file produces: `007` (an INTEGER key's id is `7`) and
    `manual-1` (text in an INTEGER key)."""
    for doc_id in ("007", "manual-1"):
        document = {"id": doc_id, "element_type": "stray", "element_id": 1,
                    "sequence_number": 1, "version_number": 1}
        path = f"/collections/{quote(env.collection('elements'), safe='')}/documents"
        env.http.post(path, json=document).raise_for_status()


def synced_world_with_a_backup(env: Env) -> Path:
    """With the daemon running: rows 1-60 synced, a backup of them, then writes the backup does
    not have (inserts 61-90, updates 1-20, deletes 21-30), synced too, and two stray documents.
    Returns the backup."""
    insert_elements(env.db, range(1, 61))
    wait_for(lambda: in_step(env), timeout=60, message="the first rows synced")
    copy = env.tmp / "backup.db"
    backup(env.db, copy)
    insert_elements(env.db, range(61, 91), comment="after backup")
    app_exec(env.db, "UPDATE elements SET comment = 'changed after backup' WHERE id <= 20",
             "DELETE FROM elements WHERE id BETWEEN 21 AND 30")
    wait_for(lambda: in_step(env), timeout=60, message="the writes after the backup synced")
    add_stray_documents(env)
    return copy


def write_after_restore(env: Env) -> None:
    insert_elements(env.db, range(100, 111), comment="after restore")
    app_write(env.db, [[("UPDATE elements SET comment = 'restored' WHERE id <= 5", [])],
                       [("DELETE FROM elements WHERE id BETWEEN 50 AND 55", [])]])


def assert_restored_truth(env: Env) -> None:
    """The collection is the backup's rows plus what was written after the restore."""
    docs = env.documents("elements")
    assert docs["1"]["comment"] == "restored"
    assert docs["10"]["comment"] == "hello 10"  # the backup's value, not the later change
    assert "25" in docs  # deleted after the backup: back with the restore
    assert "70" not in docs  # inserted after the backup: gone with the restore
    assert "52" not in docs and "105" in docs  # written after the restore
    assert "007" not in docs and "manual-1" not in docs  # ids no row produces


def setup(env: Env, journal_mode: str = "wal", **config: Any) -> None:
    app_exec(env.db, ELEMENTS_DDL)
    set_journal_mode(env.db, journal_mode)
    env.write_config([ELEMENTS], **config)
    env.cli("install", check=True)


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_backup_restored_with_mv_under_the_running_daemon(env: Env, journal_mode: str) -> None:
    port = free_port()  # the metrics' own connection must let go of the old file too
    setup(env, journal_mode, metrics={"listen": f"127.0.0.1:{port}"})
    daemon = start_daemon_logged(env)
    try:
        copy = synced_world_with_a_backup(env)
        assert "cdc_database_up 1.0" in scrape(port)
        os.replace(copy, env.db)
        # The documented procedure: the app starts again once the daemon has let go of the old
        # file (its -wal would otherwise be replayed into the restored one).
        wait_for(lambda: REPLACED in read_daemon_log(env), timeout=10,
                 message="the daemon noticing the replaced file")
        write_after_restore(env)
        wait_for(lambda: in_step(env), timeout=60, message="the restored file synced")
        assert_in_sync(env)
        assert_restored_truth(env)
        wait_for(lambda: "cdc_database_up 1.0" in scrape(port), timeout=10,
                 message="metrics read from the restored file")
        assert daemon.poll() is None
        assert stop_process(daemon) == 0
    finally:
        stop_process(daemon)
    text = read_daemon_log(env)
    assert text.count(REPLACED) == 1, text
    assert '"sweep finished"' in text, text


def test_kill_9_right_after_the_replacement_was_noticed(env: Env) -> None:
    setup(env)
    daemon = start_daemon_logged(env)
    try:
        copy = synced_world_with_a_backup(env)
        os.replace(copy, env.db)
        wait_for(lambda: REPLACED in read_daemon_log(env), timeout=10, interval=0.005,
                 message="the daemon noticing the replaced file")
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        write_after_restore(env)
        daemon = start_daemon_logged(env, name="restarted")
        wait_for(lambda: in_step(env), timeout=60, message="the restored file synced")
        assert_in_sync(env)
        assert_restored_truth(env)
        assert stop_process(daemon) == 0
    finally:
        stop_process(daemon)


def test_backup_restored_while_the_daemon_was_stopped(env: Env) -> None:
    setup(env)
    daemon = start_daemon_logged(env)
    try:
        copy = synced_world_with_a_backup(env)
        assert stop_process(daemon) == 0
        os.replace(copy, env.db)
        write_after_restore(env)
        daemon = start_daemon_logged(env, name="restarted")
        wait_for(lambda: in_step(env), timeout=60, message="the restored file synced")
        assert_in_sync(env)
        assert_restored_truth(env)
        assert stop_process(daemon) == 0
    finally:
        stop_process(daemon)
    assert "not the one last synced" in read_daemon_log(env, "restarted")


def test_restored_backup_from_before_install_waits_for_install(env: Env) -> None:
    app_exec(env.db, ELEMENTS_DDL)
    set_journal_mode(env.db, "wal")
    insert_elements(env.db, range(1, 41), comment="before install")
    copy = env.tmp / "backup.db"
    backup(env.db, copy)  # no log, no triggers in it
    env.write_config([ELEMENTS])
    env.cli("install", check=True)
    daemon = start_daemon_logged(env)
    try:
        insert_elements(env.db, range(41, 61))
        wait_for(lambda: len(env.documents("elements")) == 20, timeout=60,
                 message="the rows written after install synced")
        os.replace(copy, env.db)
        wait_for(lambda: "change log is not installed in" in read_daemon_log(env),
                 timeout=10, message="an error naming the missing log")
        app_exec(env.db, "UPDATE elements SET comment = 'not logged' WHERE id = 3")
        assert daemon.poll() is None, read_daemon_log(env)  # it waits, it does not exit
        env.cli("install", check=True)
        wait_for(lambda: in_step(env), timeout=60, message="the restored file synced")
        assert_in_sync(env)
        docs = env.documents("elements")
        assert len(docs) == 40 and docs["3"]["comment"] == "not logged"
        assert stop_process(daemon) == 0
    finally:
        stop_process(daemon)


def test_a_resync_cut_short_by_kill_9_is_finished_after_the_restart(env: Env) -> None:
    """The state a kill -9 leaves right after the daemon recorded the resync (sweep.py's
    ResyncState.begin): the restarted daemon backfills and sweeps, and `status` shows it."""
    setup(env)
    daemon = start_daemon_logged(env)
    try:
        insert_elements(env.db, range(1, 31))
        wait_for(lambda: in_step(env), timeout=60, message="the rows synced")
        assert stop_process(daemon) == 0
        alias = quote(env.collection("elements"), safe="")
        for doc_id in ("1", "2", "3"):  # the replaced file had no such rows
            env.http.delete(f"/collections/{alias}/documents/{doc_id}").raise_for_status()
        add_stray_documents(env)
        stray = {"id": "999", "element_type": "stray", "element_id": 1, "sequence_number": 1,
                 "version_number": 1}  # a key the table could have, without a row
        env.http.post(f"/collections/{alias}/documents", json=stray).raise_for_status()
        app_exec(env.db, "INSERT INTO change_log_state (name, value)"
                         " VALUES ('sweep:elements', 'backfill')")
        assert env.status()["tables"]["elements"]["resync"] == "backfill"
        daemon = start_daemon_logged(env, name="restarted")
        wait_for(lambda: in_step(env), timeout=60, message="the resync finished")
        assert_in_sync(env)
        assert "resync" not in env.status()["tables"]["elements"]
        assert stop_process(daemon) == 0
    finally:
        stop_process(daemon)
    assert '"sweep finished"' in read_daemon_log(env, "restarted")


# -- which documents the sweep may remove, and how (pure) ----------------------------------


def mapping_for(key_types: tuple[str, ...], id_prefix: str | None = None) -> TableMapping:
    keys = tuple(Column(f"k{i}", t, True, i + 1) for i, t in enumerate(key_types))
    info = TableInfo("t", (*keys, Column("v", "TEXT", False, 0)), tuple(c.name for c in keys), ())
    mapping = mapping_from_config(info, TableConfig(table="t", id_prefix=id_prefix))
    assert mapping.key_affinities == tuple(affinity(t) for t in key_types)
    return mapping


@pytest.mark.parametrize(("key_types", "doc_id", "expected"), [
    (("INTEGER",), "7", (7,)),
    (("INTEGER",), "007", None),  # parses as 7, whose id is "7": no row produces "007"
    (("INTEGER",), "7.0", None),  # a float 7.0 is stored as 7 in an INTEGER column
    (("REAL",), "7", None),  # ... and 7 as 7.0 in a REAL one
    (("REAL",), "7.5", (7.5,)),
    (("INTEGER",), "manual-1", ("manual-1",)),  # text in an INTEGER column: a row can hold it
    (("TEXT",), "007", ("007",)),
    (("INTEGER", "TEXT"), '[1,"eu"]', (1, "eu")),
    (("INTEGER", "TEXT"), "manual-1", None),  # not JSON
    (("INTEGER", "TEXT"), "[true,null]", None),  # no key column value
    (("INTEGER", "TEXT"), '[1, "eu"]', None),  # the id of (1, "eu") has no space
    (("INTEGER", "TEXT"), '[{"x":1},"eu"]', None),
])
def test_which_key_produces_a_document_id(
    key_types: tuple[str, ...], doc_id: str, expected: tuple[Any, ...] | None
) -> None:
    assert mapping_for(key_types).key_of(doc_id) == expected


def test_a_one_column_key_is_looked_up_as_every_value_that_prints_as_the_id() -> None:
    untyped = mapping_for(("",))  # no declared type: integers, text and blobs alike
    assert set(candidate_keys(untyped, "1234")) == {(1234,), ("1234",), (b"\x12\x34",)}
    assert set(candidate_keys(untyped, "abc")) == {("abc",)}


def test_another_hosts_documents_are_not_swept() -> None:
    mapping = mapping_for(("INTEGER",), id_prefix="a:")
    assert candidate_keys(mapping, "b:7") == [] and mapping.key_of("b:7") is None
    assert mapping.key_of("a:7") == (7,)


class FakeSink:
    """Stands in for TypesenseSink in the sweep's paging test: an export and a delete."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.deleted: list[str] = []

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        yield from ({"id": doc_id, "element_type": "x"} for doc_id in self.ids)

    def delete(self, collection: str, ids: list[str]) -> list[DocResult]:
        self.deleted.extend(ids)
        return [DocResult(ok=True)] * len(ids)


def test_the_sweep_pages_through_the_documents(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
                 " WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 2 FROM n WHERE i < 1000)"
                 " INSERT INTO t SELECT i, 'row' FROM n")  # the even keys 2..1000 have rows
    conn.close()
    db = Database(path)
    names = LogTables("change_log")
    install(db, names, [db.table_info("t")])
    mapping = mapping_from_config(db.table_info("t"), TableConfig(table="t", id_prefix="a:"))
    sink = FakeSink([*(f"a:{k}" for k in range(1, 1201)), "a:007", "b:1"])  # b: another host
    sweep = Sweep(db, ChangeLog(db, names, 3), sink, page_size=100)  # type: ignore[arg-type]
    beats: list[int] = []
    stop = threading.Event()
    result = sweep.run(mapping, "c", stop, beat=lambda: beats.append(1))
    assert result == SweepResult(documents=1201, queued=700, deleted=1)  # odd, and above 1000
    assert sink.deleted == ["a:007"] and len(beats) == 12
    logged = db.query("SELECT pk, op FROM change_log ORDER BY seq")
    assert logged == [(k, "V") for k in range(1, 1201) if k % 2 or k > 1000]
    stop.set()  # stopped between pages: not finished, so the resync stays owed
    assert sweep.run(mapping, "c", stop) is None
    db.close()


HOLD = (  # the app with the database open, idle after a read (WAL: it keeps its SHARED lock)
    "import sqlite3, sys\n"
    "conn = sqlite3.connect(sys.argv[1])\n"
    "conn.execute('SELECT count(*) FROM t').fetchall()\n"
    "print('open', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_another_process_having_the_file_open_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    app_exec(path, "CREATE TABLE t (id INTEGER PRIMARY KEY)")
    set_journal_mode(path, "wal")
    assert not opened_elsewhere(path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        assert opened_elsewhere(path)
    finally:
        holder.communicate(timeout=30)
    assert not opened_elsewhere(path)
