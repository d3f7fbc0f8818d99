"""depends_on end to end, against a real Typesense: whatever the app does to books, their
authors, the authors' countries (a chain of two hops) and the books' tags, after the daemon ran
every book's document is what the query over the current rows gives (computed here with the
app's own sqlite3, independently of the daemon's SQL), and `verify` says so. Also: kill -9 of the
daemon in the middle of a large fan-out."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    Env,
    app_exec,
    app_write,
    log_backlog,
    read_daemon_log,
    start_daemon_logged,
    wait_for,
)

from cdc_daemon.localserver import LocalTypesense

pytestmark = pytest.mark.typesense

SCHEMA = (
    "PRAGMA journal_mode=WAL",
    "CREATE TABLE countries (id INTEGER PRIMARY KEY, name TEXT)",
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT, country_id INTEGER)",
    "CREATE INDEX authors_country ON authors (country_id)",
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER)",
    "CREATE INDEX books_author ON books (author_id)",
    "CREATE TABLE book_tags (book_id INTEGER NOT NULL, tag TEXT NOT NULL,"
    " PRIMARY KEY (book_id, tag))",
)
# Where each random example starts from, synced: every book has an author in a country, and
# tags, so that each change of a dependency row has documents to re-send.
ROWS = (
    "INSERT INTO countries VALUES (1, 'France'), (2, 'Italia'), (3, 'Eire')",
    "INSERT INTO authors VALUES (1, 'Hugo', 1), (2, 'Eco', 2), (3, 'Joyce', 3), (4, 'Zola', 1)",
    "INSERT INTO books VALUES (1, 't1', 1), (2, 't2', 2), (3, 't3', 3), (4, 't4', 4)",
    "INSERT INTO book_tags VALUES (1, 'x'), (2, 'y'), (3, 'x'), (3, 'z')",
)
BOOKS: dict[str, Any] = {
    "table": "books",
    "fields": {
        "author_name": {"type": "string", "optional": True, "facet": True,
                        "sql": "SELECT name FROM authors WHERE authors.id = books.author_id"},
        "country": {"type": "string", "optional": True,
                    "sql": "SELECT c.name FROM authors a JOIN countries c ON c.id = a.country_id"
                           " WHERE a.id = books.author_id"},
        "tags": {"type": "string[]",
                 "sql": "SELECT json_group_array(tag) FROM (SELECT tag FROM book_tags"
                        " WHERE book_tags.book_id = books.id ORDER BY tag)"},
    },
    "depends_on": [
        {"table": "authors", "join": {"author_id": "id"},
         "depends_on": [{"table": "countries", "join": {"country_id": "id"}}]},
        {"table": "book_tags", "join": {"id": "book_id"}},
    ],
}


def expected_documents(db: Path) -> dict[str, dict[str, Any]]:
    """Each book's document as the app's sqlite3 sees the rows now (plain joins, not the
    daemon's expressions)."""
    conn = sqlite3.connect(db)
    try:
        tags: dict[int, list[str]] = {}
        for book_id, tag in conn.execute("SELECT book_id, tag FROM book_tags ORDER BY tag"):
            tags.setdefault(book_id, []).append(tag)
        rows = conn.execute(
            "SELECT b.id, b.title, b.author_id, a.name, c.name FROM books b"
            " LEFT JOIN authors a ON a.id = b.author_id"
            " LEFT JOIN countries c ON c.id = a.country_id"
        ).fetchall()
    finally:
        conn.close()
    docs = {}
    for book_id, title, author_id, author, country in rows:
        doc = {"id": str(book_id), "title": title, "author_id": author_id, "author_name": author,
               "country": country, "tags": tags.get(book_id, [])}
        docs[str(book_id)] = {k: v for k, v in doc.items() if v is not None}
    return docs


def _setup(env: Env, **config: Any) -> None:
    app_exec(env.db, *SCHEMA)
    env.write_config([BOOKS], **config)
    env.cli("install", check=True)


# -- random changes across the root, its dependencies and the chain --------------------------

small = st.integers(min_value=1, max_value=4)
names = st.one_of(st.none(), st.sampled_from(["Hugo", "Zola", "O'Neil", "Ünsal"]))
Statement = tuple[str, list[Any]]
operations: st.SearchStrategy[Statement] = st.one_of(
    st.builds(lambda i, a: ("INSERT OR REPLACE INTO books VALUES (?, ?, ?)", [i, f"t{i}", a]),
              small, st.one_of(st.none(), small)),
    st.builds(lambda i, a: ("UPDATE books SET author_id = ? WHERE id = ?", [a, i]), small, small),
    st.builds(lambda i: ("DELETE FROM books WHERE id = ?", [i]), small),
    st.builds(lambda i, n, c: ("INSERT OR REPLACE INTO authors VALUES (?, ?, ?)", [i, n, c]),
              small, names, st.one_of(st.none(), small)),
    st.builds(lambda i, n: ("UPDATE authors SET name = ? WHERE id = ?", [n, i]), small, names),
    st.builds(lambda i, c: ("UPDATE authors SET country_id = ? WHERE id = ?", [c, i]),
              small, small),
    st.builds(lambda i, j: ("UPDATE OR IGNORE authors SET id = ? WHERE id = ?", [j, i]),
              small, small),
    st.builds(lambda i: ("DELETE FROM authors WHERE id = ?", [i]), small),
    st.builds(lambda i, n: ("INSERT OR REPLACE INTO countries VALUES (?, ?)", [i, n]),
              small, names),
    st.builds(lambda i, j: ("UPDATE OR IGNORE countries SET id = ? WHERE id = ?", [j, i]),
              small, small),
    st.builds(lambda i: ("DELETE FROM countries WHERE id = ?", [i]), small),
    st.builds(lambda b, t: ("INSERT OR IGNORE INTO book_tags VALUES (?, ?)", [b, t]),
              small, st.sampled_from(["x", "y", "z"])),
    st.builds(lambda b, c: ("UPDATE OR IGNORE book_tags SET book_id = ? WHERE book_id = ?",
                            [c, b]), small, small),
    st.builds(lambda b: ("DELETE FROM book_tags WHERE book_id = ?", [b]), small),
)
transactions = st.lists(st.lists(operations, min_size=1, max_size=8), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory, typesense: LocalTypesense) -> Path:
    """An installed database, copied for each example."""
    env = Env(tmp_path_factory.mktemp("dependencies-template"), typesense, "deptemplate")
    _setup(env)
    app_exec(env.db, *ROWS)
    assert not Path(f"{env.db}-wal").exists()  # checkpointed: the file alone is complete
    return env.db


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(first=transactions, second=transactions)
def test_documents_equal_the_query_after_random_changes_anywhere(
    template_db: Path, typesense: LocalTypesense, tmp_path_factory: pytest.TempPathFactory,
    first: list[list[Statement]], second: list[list[Statement]],
) -> None:
    tmp = tmp_path_factory.mktemp("example")
    env = Env(tmp, typesense, "dep_" + tmp.name)
    try:
        shutil.copy(template_db, env.db)
        env.write_config([BOOKS])
        env.cli("run", "--once", check=True)  # the starting rows, synced
        app_write(env.db, first)
        env.cli("run", "--once", check=True)
        app_write(env.db, second)  # on top of synced documents: the re-sends matter now
        env.cli("run", "--once", check=True)
        assert env.documents("books") == expected_documents(env.db)
        report = env.verify()
        assert report["in_sync"] is True, report
        assert log_backlog(env.db) == 0
    finally:
        env.drop_collection("books")
        env.close()


# -- a large fan-out, killed in the middle ----------------------------------------------------


def _renamed(env: Env, name: str) -> int:
    response = env.http.get(
        f"/collections/{env.collection('books')}/documents/search",
        params={"q": "*", "filter_by": f"author_name:=`{name}`", "per_page": 0},
    )
    response.raise_for_status()
    return int(response.json()["found"])


def test_kill_9_in_the_middle_of_a_large_fan_out_loses_nothing(env: Env) -> None:
    books = 20_000
    _setup(env, sync={"batch_size": 100, "poll_interval": 0.2})
    app_write(env.db, [[
        ("INSERT INTO countries VALUES (1, 'France')", []),
        ("INSERT INTO authors VALUES (1, 'Hugo', 1), (2, 'Zola', 1)", []),
        ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
         " INSERT INTO books SELECT i, 'book ' || i, 1 + (i = 1) FROM n", [books]),
    ]])
    env.cli("run", "--once", check=True)
    assert _renamed(env, "Hugo") == books - 1

    # One entry in the app's transaction, whatever number of books read the row.
    app_exec(env.db, "UPDATE countries SET name = 'République française' WHERE id = 1",
             "UPDATE authors SET name = 'Victor Hugo' WHERE id = 1")
    assert log_backlog(env.db) == 2
    daemon = start_daemon_logged(env)
    wait_for(lambda: _renamed(env, "Victor Hugo") >= 2_000 or daemon.poll() is not None,
             timeout=120, interval=0.01, message="part of the fan-out searchable")
    assert daemon.poll() is None, read_daemon_log(env)
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait()
    assert _renamed(env, "Victor Hugo") < books - 1, "the kill came after the whole fan-out"

    env.cli("run", "--once", check=True)
    assert _renamed(env, "Victor Hugo") == books - 1
    assert env.documents("books")["2"]["country"] == "République française"
    report = env.verify()
    assert report["in_sync"] is True, report


def test_a_new_dependency_resends_the_documents_that_read_it(env: Env) -> None:
    _setup(env)
    app_exec(env.db, *ROWS)
    without = {**BOOKS, "depends_on": []}  # the fields read authors, but nothing says so
    env.write_config([without])
    env.cli("install", check=True)
    env.cli("run", "--once", check=True)
    app_exec(env.db, "UPDATE authors SET name = 'Umberto Eco' WHERE id = 2")
    env.cli("run", "--once", check=True)
    assert env.documents("books")["2"]["author_name"] == "Eco"  # not re-sent: no depends_on

    env.write_config([BOOKS])
    env.cli("install", check=True)
    env.cli("run", "--once", check=True)  # the new dependency re-sends every book
    assert env.documents("books") == expected_documents(env.db)
    assert env.verify()["in_sync"] is True
