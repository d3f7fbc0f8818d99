"""Sync, verify and evolution against FakeSink (tests/support/fake_sink.py): the core's logic
where a real Typesense adds nothing. The app writes its SQLite file from its own process; the
same paths run against the real server in tests/integration and tests/evolution."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import app_write
from support.fake_sink import FakeSink

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.config import TableConfig
from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.schema import TableMapping
from cdc_daemon.sink import DocResult, DocumentBatch, EncodedLines, Sink, ascii_json_body
from cdc_daemon.sync import BatchReport, Syncer
from cdc_daemon.triggers import install
from cdc_daemon.verify import Verifier
from cdc_daemon.wiring import collection_manager, mapping_from_config

_TYPE_CHECK: Sink = FakeSink()  # mypy: the fake satisfies the protocol the core depends on


@dataclass
class World:
    path: Path
    db: Database
    names: LogTables
    mapping: TableMapping
    changelog: ChangeLog
    sink: FakeSink
    syncer: Syncer

    def app(self, *statements: str) -> None:
        app_write(self.path, [[(sql, [])] for sql in statements])

    def sync(self) -> list[BatchReport]:
        """sync_once until the log is drained (a batch's acknowledgement lands with the next)."""
        reports = []
        for _ in range(10):
            reports.append(self.syncer.sync_once())
            if not reports[-1].entries:
                return reports
        raise AssertionError("the log did not drain")

    def documents(self) -> dict[str, dict[str, object]]:
        return {d["id"]: d for d in self.sink.export("items")}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "app.db"
    app_write(path, [[("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)", [])]])
    db = Database(path)
    names = LogTables("change_log")
    info = db.table_info("items")
    install(db, names, [info])
    mapping = mapping_from_config(info, TableConfig(table="items"), "tables[0]")
    changelog = ChangeLog(db, names, max_attempts=1)
    sink = FakeSink()
    collections = collection_manager(sink, db, names, 100, {"items": "tables[0]"})
    syncer = Syncer(db, changelog, sink, {"items": mapping}, 100, collections)
    yield World(path, db, names, mapping, changelog, sink, syncer)
    db.close()


def test_changes_reach_the_sink_through_the_alias(world: World) -> None:
    world.app("INSERT INTO items VALUES (1, 'one')", "INSERT INTO items VALUES (2, 'two')",
              "INSERT INTO items VALUES (3, 'three')")
    world.sync()
    assert {k: d["name"] for k, d in world.documents().items()} == {
        "1": "one", "2": "two", "3": "three"}
    physical = world.sink.get_alias("items")
    assert physical is not None and physical != "items"  # written to the collection, not alias
    assert set(world.sink.documents[physical]) == {"1", "2", "3"}

    world.app("UPDATE items SET name = 'uno' WHERE id = 1", "DELETE FROM items WHERE id = 2")
    world.sync()
    assert {k: d["name"] for k, d in world.documents().items()} == {"1": "uno", "3": "three"}


def test_a_document_the_sink_refuses_is_dead_lettered_and_the_rest_go_on(world: World) -> None:
    world.sink.rejected["2"] = "Field `name` must be an int32."
    world.app("INSERT INTO items VALUES (1, 'one')", "INSERT INTO items VALUES (2, 'two')")
    reports = world.sync()  # drained: the refused change is not retried
    assert set(world.documents()) == {"1"}
    assert sum(r.dead_by_table.get("items", 0) for r in reports) == 1


def test_verify_finds_a_lost_document_and_the_repair_brings_it_back(world: World) -> None:
    world.app("INSERT INTO items VALUES (1, 'one')", "INSERT INTO items VALUES (2, 'two')")
    world.sync()
    verifier = Verifier(world.db, world.changelog, world.sink, processor_running=False)
    assert verifier.compare(world.mapping).in_sync
    physical = world.sink.get_alias("items")
    assert physical is not None
    del world.sink.documents[physical]["2"]  # lost behind the daemon's back
    world.sink.documents[physical]["99"] = {"id": "99", "name": "stray"}  # no row has it
    diff = verifier.compare(world.mapping)
    assert not diff.in_sync
    assert sorted(d.doc_id for d in diff.differences) == ["2", "99"]
    verifier.repair(world.mapping, diff)
    world.sync()
    assert set(world.documents()) == {"1", "2"}
    assert verifier.compare(world.mapping).in_sync


def test_a_new_column_is_added_in_place(world: World) -> None:
    world.app("INSERT INTO items VALUES (1, 'one')")
    world.sync()
    physical = world.sink.get_alias("items")
    world.app("ALTER TABLE items ADD COLUMN color TEXT")
    widened = mapping_from_config(world.db.table_info("items"), TableConfig(table="items"))
    collections = collection_manager(world.sink, world.db, world.names, 100, {"items": "tables[0]"})
    targets = collections.ensure({"items": widened})
    assert targets["items"].mirror is None  # no rebuild: the field was added in place
    assert world.sink.get_alias("items") == physical and len(world.sink.schemas) == 2  # + owners
    schema = world.sink.get_collection("items")
    assert schema is not None and "color" in {f["name"] for f in schema["fields"]}


def test_a_batch_says_whether_more_is_likely_waiting(world: World) -> None:
    """BatchReport.full: a fleet member reads its log again at once only after a full batch (a
    batch that emptied the log is not read a second time: fleet_member.py)."""
    world.app(*(f"INSERT INTO items (name) VALUES ('a{i}')" for i in range(3)))
    [first, *_] = world.sync()
    assert (first.entries, first.full) == (3, False)
    world.app(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)"
        " INSERT INTO items (name) SELECT 'b' || i FROM n"
    )
    reports = world.sync()
    assert reports[0].full and reports[0].entries < 500
    assert sum(r.entries for r in reports) == 500


def test_connections_keep_as_many_statements_as_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `databases:` daemon keeps fewer prepared statements per connection (wiring.serve_fleet)."""
    path = tmp_path / "app.db"
    app_write(path, [[("CREATE TABLE t (id INTEGER PRIMARY KEY)", [])]])
    monkeypatch.setattr(Database, "statement_cache", 7)
    db = Database(path)
    try:
        assert db.conn.cache_stats()["size"] == 7
    finally:
        db.close()


def test_a_batch_read_ahead_comes_with_its_import_body_built_by_the_read_ahead_thread(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body of a batch read ahead is built by the read-ahead thread, during the import
    before it, not by the loop's thread between two imports."""
    built: dict[int, tuple[EncodedLines, str]] = {}  # id → (the lines, the thread that built them)

    class RecordedLines(EncodedLines):
        def __init__(self, lines: list[str]) -> None:
            super().__init__(lines)
            built[id(self)] = (self, threading.current_thread().name)

    sent: list[DocumentBatch] = []
    upsert = world.sink.upsert

    def recording_upsert(collection: str, documents: DocumentBatch, dirty: str = "reject"
                         ) -> list[DocResult]:
        sent.append(documents)
        return upsert(collection, documents, dirty)

    monkeypatch.setattr("cdc_daemon.sync.EncodedLines", RecordedLines)
    monkeypatch.setattr(world.sink, "upsert", recording_upsert)
    world.app(  # 250 rows, batches of 100 (the world's batch_size): two full ones
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 250)"
        " INSERT INTO items (name) SELECT 'caf\u00e9 ' || i FROM n"
    )
    world.sync()
    assert [len(d) for d in sent] == [100, 100, 50]
    threads = []
    for documents in sent:
        assert isinstance(documents, EncodedLines) and built[id(documents)][0] is documents
        assert documents.body.isascii() and documents.body == ascii_json_body(documents)
        threads.append(built[id(documents)][1])
    assert threads[0] == threading.current_thread().name  # the first: nothing was imported yet
    assert threads[1:] == ["cdc-read-ahead", "cdc-read-ahead"]
