"""depends_on without a server: the triggers a dependency table gets log one entry per row
change, whatever number of documents read it, and the sync re-sends exactly the documents
joined to the old or the new row (FakeSink stands in for Typesense; the app writes its SQLite
file from its own process). The same paths run against a real Typesense in
tests/integration/test_dependencies_e2e.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from support import app_write, cli_inprocess
from support.fake_sink import FakeSink

from cdc_daemon import wiring
from cdc_daemon.config import load_config
from cdc_daemon.database import Database
from cdc_daemon.dependencies import missing_indexes, roots_reading
from cdc_daemon.errors import ConfigError
from cdc_daemon.log_schema import Op
from cdc_daemon.metrics import Metrics
from cdc_daemon.runtime import Runtime
from cdc_daemon.status import sync_status
from cdc_daemon.triggers import install, trigger_problems, uninstall

SCHEMA = [
    "CREATE TABLE countries (id INTEGER PRIMARY KEY, name TEXT)",
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT, country_id INTEGER)",
    "CREATE INDEX authors_country ON authors (country_id)",
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT, author_id INTEGER)",
    "CREATE INDEX books_author ON books (author_id)",
    "CREATE TABLE book_tags (book_id INTEGER, tag TEXT, PRIMARY KEY (book_id, tag))",
    "INSERT INTO countries VALUES (1, 'France'), (2, 'Germany')",
    "INSERT INTO authors VALUES (10, 'Hugo', 1), (11, 'Goethe', 2), (12, 'Zola', 1)",
    "INSERT INTO books VALUES (100, 'Les Miserables', 10), (101, 'Faust', 11),"
    " (102, 'Germinal', 12), (103, 'Notre-Dame', 10), (104, 'Orphan', NULL)",
    "INSERT INTO book_tags VALUES (100, 'novel'), (101, 'drama')",
]
BOOKS = {
    "table": "books",
    "depends_on": [
        {"table": "authors", "join": {"author_id": "id"},
         "depends_on": [{"table": "countries", "join": {"country_id": "id"}}]},
        {"table": "book_tags", "join": {"id": "book_id"}},
    ],
}


@dataclass
class World:
    path: Path
    runtime: Runtime
    sink: FakeSink

    def app(self, *statements: str, one_transaction: bool = False) -> None:
        if one_transaction:
            app_write(self.path, [[(sql, []) for sql in statements]])
        else:
            app_write(self.path, [[(sql, [])] for sql in statements])

    def log(self) -> list[tuple[str, object, str]]:
        return self.runtime.db.query("SELECT tbl, pk, op FROM change_log ORDER BY seq")

    def sync(self) -> None:
        for _ in range(20):
            if not self.runtime.syncer.sync_once().entries and not self.log():
                return
        raise AssertionError(f"the log did not drain: {self.log()}")

    def resent(self, *statements: str, one_transaction: bool = False) -> set[str]:
        """The book ids sent again after the app's statements: each document is removed from
        the fake collection first, so the ones back are the ones sent."""
        stored = self.sink._collection("books")
        stored.clear()
        self.app(*statements, one_transaction=one_transaction)
        self.sync()
        return set(stored)


def _config(tmp_path: Path, tables: list[dict[str, object]]) -> Path:
    path = tmp_path / "cdc.yaml"
    path.write_text(yaml.safe_dump({
        "database": "app.db",
        "typesense": {"nodes": ["http://127.0.0.1:1"], "api_key": "k"},
        "tables": tables,
    }))
    return path


def _make_world(tmp_path: Path, schema: list[str], tables: list[dict[str, object]]) -> World:
    path = tmp_path / "app.db"
    app_write(path, [[(sql, [])] for sql in schema])
    config = load_config(_config(tmp_path, tables))
    sink = FakeSink()
    runtime = wiring.build_runtime(config, wiring.Services(_Keys(), sink))  # type: ignore[arg-type]
    install(runtime.db, runtime.names, runtime.tables, runtime.settings.joined)
    world = World(path, runtime, sink)
    world.sync()  # the collection exists
    return world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = _make_world(tmp_path, SCHEMA, [BOOKS])
    yield made
    made.runtime.close()


def test_a_join_compared_by_either_sides_collation_resends_every_match(tmp_path: Path) -> None:
    # books.author_code compares byte for byte, authors.code ignoring case: a computed field
    # `authors.code = books.author_code` matches 'abc' to 'ABC', so both must be re-sent.
    made = _make_world(tmp_path, [
        "CREATE TABLE authors (code TEXT COLLATE NOCASE PRIMARY KEY, name TEXT)",
        "CREATE TABLE books (id INTEGER PRIMARY KEY, author_code TEXT)",
        "INSERT INTO authors VALUES ('ABC', 'Hugo')",
        "INSERT INTO books VALUES (1, 'abc'), (2, 'ABC'), (3, 'x')",
    ], [{"table": "books", "depends_on": [{"table": "authors", "join": {"author_code": "code"}}]}])
    try:
        assert made.resent("UPDATE authors SET name = 'V. Hugo'") == {"1", "2"}
    finally:
        made.runtime.close()


class _Keys:
    def close(self) -> None:
        pass


def test_a_dependency_row_change_logs_one_entry_whatever_reads_it(world: World) -> None:
    world.app(*(f"INSERT INTO books VALUES ({200 + i}, 'b{i}', 10)" for i in range(300)))
    world.sync()
    world.app("UPDATE authors SET name = 'Victor Hugo' WHERE id = 10")
    assert world.log() == [("authors", "10,10", Op.JOINED)]  # one entry, not 302


def test_a_changed_author_resends_their_books(world: World) -> None:
    assert world.resent("UPDATE authors SET name = 'V. Hugo' WHERE id = 10") == {"100", "103"}


def test_a_deleted_author_resends_the_books_that_pointed_at_it(world: World) -> None:
    assert world.resent("DELETE FROM authors WHERE id = 12") == {"102"}


def test_a_changed_join_value_resends_the_books_of_the_old_and_the_new_value(world: World) -> None:
    # author 11 becomes 12: the books of 11 lose their author, those of 12 get one
    world.app("DELETE FROM authors WHERE id = 12")
    world.sync()
    assert world.resent("UPDATE authors SET id = 12 WHERE id = 11") == {"101", "102"}


def test_moving_a_tag_from_one_book_to_another_resends_both(world: World) -> None:
    assert world.resent("UPDATE book_tags SET book_id = 102 WHERE book_id = 100") == {"100", "102"}


def test_a_chain_resends_through_two_hops(world: World) -> None:
    assert world.resent("UPDATE countries SET name = 'République' WHERE id = 1") == {
        "100", "102", "103"}


def test_many_changes_of_one_row_in_one_transaction(world: World) -> None:
    names = [f"UPDATE authors SET name = 'n{i}' WHERE id = 11" for i in range(50)]
    assert world.resent(*names, one_transaction=True) == {"101"}


def test_an_insert_resends_the_books_it_joins(world: World) -> None:
    assert world.resent("INSERT INTO book_tags VALUES (103, 'classic')") == {"103"}


def test_install_check_and_uninstall_cover_dependency_tables(world: World) -> None:
    db, names, joined = world.runtime.db, world.runtime.names, world.runtime.settings.joined
    assert joined == {"authors": ("id",), "book_tags": ("book_id",), "countries": ("id",)}
    assert trigger_problems(db, names, world.runtime.tables, joined) == []
    world.app('DROP TRIGGER "change_log:countries:joined_update"')
    assert trigger_problems(db, names, world.runtime.tables, joined) == [
        "table 'countries': trigger 'change_log:countries:joined_update' is missing"]
    removed = uninstall(db, names, drop_log=False)
    assert "removed trigger 'change_log:authors:joined_delete'" in removed


def test_check_names_the_index_a_lookup_needs(world: World) -> None:
    db, paths = world.runtime.db, world.runtime.syncer.dependencies
    assert missing_indexes(db, paths) == []
    world.app("DROP INDEX books_author")
    db.close()  # the schema changed under it: a new connection sees it
    fresh = Database(world.path)
    try:
        assert missing_indexes(fresh, paths) == [
            "tables[0].depends_on[0]: no index on 'books' (author_id): each change in 'authors'"
            " reads all of 'books'; create one:"
            ' CREATE INDEX "books_author_id" ON "books" ("author_id")'
        ]
    finally:
        fresh.close()


def test_tables_whose_triggers_came_back_resync_the_tables_reading_them(world: World) -> None:
    paths = world.runtime.syncer.dependencies
    assert roots_reading(["countries"], paths, ["books"]) == ["books"]
    assert roots_reading(["books", "authors"], paths, ["books"]) == ["books"]
    assert roots_reading(["other"], paths, ["books"]) == []


@pytest.mark.parametrize(
    ("dependency", "message"),
    [
        ({"table": "nope", "join": {"author_id": "id"}},
         "tables[0].depends_on[0].table: table 'nope' does not exist (or is not a table)"),
        ({"table": "authors", "join": {"writer": "id"}},
         "tables[0].depends_on[0].join.writer: no column 'writer' in 'books' (a parent join"
         " column)"),
        ({"table": "authors", "join": {"author_id": "ident"}},
         "tables[0].depends_on[0].join.author_id: no column 'ident' in 'authors' (its join"
         " column)"),
        ({"table": "Authors", "join": {"author_id": "id"}},
         "tables[0].depends_on[0].table: table 'Authors' does not exist (or is not a table);"
         " it is spelled 'authors' (names are matched exactly)"),
        ({"table": "authors", "join": {"AUTHOR_ID": "id"}},
         "tables[0].depends_on[0].join.AUTHOR_ID: no column 'AUTHOR_ID' in 'books' (a parent"
         " join column); it is spelled 'author_id' (names are matched exactly)"),
    ],
)
def test_a_bad_dependency_is_named_by_its_key(
    tmp_path: Path, dependency: dict[str, object], message: str
) -> None:
    app_write(tmp_path / "app.db", [[(sql, [])] for sql in SCHEMA])
    config = load_config(_config(tmp_path, [{"table": "books", "depends_on": [dependency]}]))
    with pytest.raises(ConfigError) as raised:
        wiring.open_tables(config)
    assert str(raised.value) == message


def test_check_names_a_computed_field_reading_a_table_outside_depends_on(tmp_path: Path) -> None:
    app_write(tmp_path / "app.db", [[(sql, [])] for sql in SCHEMA])
    name = {"type": "string", "optional": True,
            "sql": "SELECT name FROM authors WHERE authors.id = books.author_id"}
    tags = {"type": "string[]",
            "sql": "SELECT json_group_array(tag) FROM book_tags WHERE book_id = books.id"}
    books = {"table": "books", "fields": {"author_name": name, "tags": tags},
             "depends_on": [{"table": "book_tags", "join": {"id": "book_id"}}]}
    config = _config(tmp_path, [books])
    assert cli_inprocess.run("install", config=config).returncode == 0
    result = cli_inprocess.run("check", config=config)
    lines = [line for line in result.stdout.splitlines() if "depends_on" in line]
    assert lines == [
        "tables[0].fields.author_name.sql reads 'authors', which is not in"
        " tables[0].depends_on: its changes will not re-send these documents"
    ]


def test_status_and_metrics_show_a_dependency_tables_triggers(world: World) -> None:
    runtime = world.runtime
    joined = runtime.settings.joined
    metrics = Metrics(runtime.db.path, runtime.names, lambda: runtime.tables, lambda: joined)
    world.app('DROP TRIGGER "change_log:authors:joined_delete"')
    scraped = generate_latest(metrics.registry).decode()
    assert 'cdc_triggers_installed{table="authors"} 0.0' in scraped
    assert 'cdc_triggers_installed{table="countries"} 1.0' in scraped
    assert 'cdc_triggers_installed{table="books"} 1.0' in scraped
    runtime.db.close()
    fresh = Database(world.path)
    try:
        status = sync_status(fresh, runtime.names, ["books"], joined)
    finally:
        fresh.close()
    assert status["tables"]["authors"]["trigger_problems"] == [
        "trigger 'change_log:authors:joined_delete' is missing"]


def test_init_suggests_depends_on_from_foreign_keys(tmp_path: Path) -> None:
    app_write(tmp_path / "app.db", [[(sql, [])] for sql in (
        "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT)",
        "CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER REFERENCES authors)",
    )])
    result = cli_inprocess.run("init", "--database", str(tmp_path / "app.db"),
                               "--typesense-url", "http://127.0.0.1:1", check=True)
    text = result.stdout
    books = text[text.index('- table: "books"'):]
    assert '    #   - {table: "authors", join: {"author_id": "id"}}' in books
    authors = text[text.index('- table: "authors"'):text.index('- table: "books"')]
    assert '    #   - {table: "books", join: {"id": "author_id"}}' in authors
    uncommented = "\n".join(  # the suggestion is valid YAML once uncommented
        line.replace("# ", "", 1) for line in books.splitlines() if "depends_on" in line
        or "{table:" in line)
    assert yaml.safe_load(uncommented) == {
        "depends_on": [{"table": "authors", "join": {"author_id": "id"}}]}


def test_a_dependency_change_waits_while_the_table_reading_it_is_skipped(world: World) -> None:
    syncer = world.runtime.syncer
    # As a runtime built while books could not be read: left out of the mappings, skipped.
    books = syncer.mappings.pop("books")
    syncer.skip_tables({"books": "its rows can't be read"})
    world.app("UPDATE authors SET name = 'V. Hugo' WHERE id = 10")
    syncer.sync_once()
    syncer.sync_once()
    assert world.log() == [("authors", "10,10", Op.JOINED)]  # waits, not dropped
    syncer.mappings["books"] = books  # readable again
    syncer.broken.clear()
    stored = world.sink._collection("books")
    stored.clear()
    world.sync()
    assert set(stored) == {"100", "103"}


@pytest.mark.parametrize("statement", [
    "INSERT OR REPLACE INTO authors (id, code, name) VALUES (5, 'FIVE', 'Hugo')",  # via name
    "UPDATE OR REPLACE authors SET name = 'Hugo' WHERE id = 2",  # evicts 1 via name
    "INSERT OR REPLACE INTO authors (id, code, name) VALUES (1, 'NEW', 'Victor')",  # via key
])
def test_a_row_a_replace_evicts_resends_the_documents_it_joined(
    tmp_path: Path, statement: str
) -> None:
    made = _make_world(tmp_path, [
        "CREATE TABLE authors (id INTEGER PRIMARY KEY, code TEXT UNIQUE, name TEXT UNIQUE)",
        "CREATE TABLE books (id INTEGER PRIMARY KEY, author_code TEXT)",
        "INSERT INTO authors VALUES (1, 'OLD', 'Hugo'), (2, 'NER', 'Neruda')",
        "INSERT INTO books VALUES (1, 'OLD'), (2, 'NER')",
    ], [{"table": "books", "depends_on": [{"table": "authors", "join": {"author_code": "code"}}]}])
    try:
        assert "1" in made.resent(statement)  # book 1's author 'OLD' is gone
    finally:
        made.runtime.close()


@pytest.mark.parametrize("declared", ["TEXT", ""])
def test_a_number_joined_to_its_text_resends_every_spelling(tmp_path: Path, declared: str) -> None:
    # `authors.id = books.author_ref` converts the text to a number first: '01', ' 1' and '1.0'
    # all read author 1, so all of them are re-sent when author 1 changes.
    made = _make_world(tmp_path, [
        "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT)",
        f"CREATE TABLE books (id INTEGER PRIMARY KEY, author_ref {declared})",
        "INSERT INTO authors VALUES (1, 'Hugo'), (2, 'Zola')",
        "INSERT INTO books VALUES (1, '1'), (2, '01'), (3, ' 1'), (4, '1.0'), (5, '2')",
    ], [{"table": "books", "depends_on": [{"table": "authors", "join": {"author_ref": "id"}}]}])
    try:
        assert made.resent("UPDATE authors SET name = 'V. Hugo' WHERE id = 1") == {
            "1", "2", "3", "4"}
    finally:
        made.runtime.close()
