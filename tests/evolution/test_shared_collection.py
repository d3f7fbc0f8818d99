"""Two tables in one collection (`books` with id_prefix `b:`, `authors` with `a:`) against a real
Typesense, the app writing through its own stdlib-sqlite3 process and the daemon running: each
member is verified, swept and repaired on its own; an added column is patched into the union
schema in place; a type change in one member rebuilds the whole collection, and a kill -9 in the
middle of that rebuild still ends in sync with both tables' documents behind the alias."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import pytest
import yaml
from support import (
    Env,
    app_exec,
    collection_documents,
    db_rows,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

pytestmark = pytest.mark.typesense

BOOKS = 3000  # enough for a rebuild to take many batches (a kill lands inside it)
AUTHORS = 200
DDL = (
    "PRAGMA journal_mode=WAL",
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, pages INTEGER NOT NULL)",
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
)


def _config(env: Env, pages_type: str | None = None) -> None:
    books: dict[str, Any] = {"table": "books", "collection": env.collection("search"),
                             "id_prefix": "b:"}
    if pages_type is not None:
        books["fields"] = {"pages": {"type": pages_type}}
    env.write_config([
        books,
        {"table": "authors", "collection": env.collection("search"), "id_prefix": "a:"},
    ], sync={"batch_size": 50})


def _documents(env: Env) -> dict[str, dict[str, Any]]:
    return collection_documents(env.http, env.collection("search"))


def _behind_alias(env: Env) -> str:
    return str(env.http.get(f"/aliases/{env.collection('search')}").json()["collection_name"])


def _fields(env: Env) -> dict[str, dict[str, Any]]:
    collection = env.http.get(f"/collections/{env.collection('search')}").json()
    return {f["name"]: f for f in collection["fields"]}


def _state(env: Env, like: str) -> dict[str, str]:
    return dict(db_rows(env.db, "SELECT name, value FROM change_log_state WHERE name LIKE ?",
                        (like,)))


def _counts(docs: dict[str, dict[str, Any]]) -> tuple[int, int]:
    return (sum(i.startswith("b:") for i in docs), sum(i.startswith("a:") for i in docs))


def _stop(daemon: subprocess.Popen[str], env: Env) -> None:
    assert stop_process(daemon, timeout=60) == 0, read_daemon_log(env)[-3000:]


@pytest.fixture
def shared(env: Env) -> Env:
    app_exec(env.db, *DDL)
    app_exec(
        env.db,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)"
        " INSERT INTO books (id, title, pages) SELECT i, 'book ' || i, i FROM n",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)"
        " INSERT INTO authors (id, name) SELECT i, 'author ' || i FROM n",
    )
    _config(env)
    env.cli("install", check=True)
    env.cli("backfill", check=True)
    return env


def test_each_member_verified_swept_and_repaired_on_its_own(shared: Env) -> None:
    env = shared
    docs = _documents(env)
    assert _counts(docs) == (BOOKS, AUTHORS)
    assert docs["b:7"] == {"id": "b:7", "title": "book 7", "pages": 7}
    assert docs["a:7"] == {"id": "a:7", "name": "author 7"}
    report = env.verify()
    assert report["in_sync"] is True, report
    assert report["tables"]["books"]["documents"] == BOOKS  # never the other member's
    assert report["tables"]["authors"]["documents"] == AUTHORS
    fields = _fields(env)
    assert fields["pages"]["optional"] is True and fields["name"]["optional"] is True
    assert not fields["title"].get("optional") or fields["title"]["optional"] is True

    # a row deleted from one member removes that member's document only
    app_exec(env.db, "DELETE FROM books WHERE id = 5", "DELETE FROM authors WHERE id = 6")
    env.cli("run", "--once", check=True)
    docs = _documents(env)
    assert "b:5" not in docs and "a:6" not in docs and "a:5" in docs and "b:6" in docs

    # a document edited by hand is found and repaired by its member, not the other
    alias = env.collection("search")
    env.http.patch(f"/collections/{alias}/documents/a:9", json={"name": "tampered"}
                   ).raise_for_status()
    env.http.post(f"/collections/{alias}/documents", json={"id": "a:stray", "name": "x"}
                  ).raise_for_status()
    rc, report = env.verify_report()
    assert rc == 1
    authors, books = report["tables"]["authors"], report["tables"]["books"]
    assert (authors["stale"], authors["extra"]) == (1, 1), authors
    assert books["in_sync"] is True and books["extra"] == 0, books
    rc, report = env.verify_report("--repair")
    assert rc == 0, report
    assert report["tables"]["authors"]["repaired"] == {
        "missing": [], "stale": ["a:9"], "extra": ["a:stray"]}, report
    assert "repaired" not in report["tables"]["books"]
    docs = _documents(env)
    assert docs["a:9"]["name"] == "author 9" and "a:stray" not in docs
    assert _counts(docs) == (BOOKS - 1, AUTHORS - 1)


def test_added_column_patched_then_type_change_rebuilds_all_through_a_kill(shared: Env) -> None:
    env = shared
    alias = env.collection("search")
    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: _behind_alias(env) == f"{alias}__v1", message="daemon started")
        # a new column in one member: added to the union in place, the same collection
        app_exec(env.db, "ALTER TABLE authors ADD COLUMN born INTEGER",
                 "UPDATE authors SET born = 1900 + id")
        wait_for(lambda: "born" in _fields(env), message="field added")
        assert _fields(env)["born"]["optional"] is True
        wait_for(lambda: _documents(env)["a:3"].get("born") == 1903, message="authors re-sent")
        assert _behind_alias(env) == f"{alias}__v1"  # patched, not rebuilt
        assert "fields added" in read_daemon_log(env)
        assert "rebuilding" not in read_daemon_log(env)

        # a type change in one member: the whole collection is rebuilt; kill -9 in the middle
        _config(env, pages_type="string")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: _state(env, "rebuild:%"), timeout=60, interval=0.01,
                 message="rebuild started")
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=30)
        rebuild = _state(env, "rebuild:%")
        assert rebuild == {"rebuild:books": f"{alias}__v2"}, rebuild  # the group's first member
        assert _behind_alias(env) == f"{alias}__v1", "the rebuild was over before the kill"
        app_exec(env.db, "INSERT INTO authors (id, name, born) VALUES (9001, 'late', 2000)",
                 "UPDATE books SET title = 'edited' WHERE id = 10")
    finally:
        stop_process(daemon)
    daemon = start_daemon_logged(env, name="restarted")
    try:
        wait_for(lambda: _behind_alias(env) == f"{alias}__v2" and not _state(env, "rebuild:%")
                 and not _state(env, "retire:%"), timeout=120, message="rebuild finished")
        docs = _documents(env)
        assert _counts(docs) == (BOOKS, AUTHORS + 1)
        assert docs["b:7"]["pages"] == "7" and docs["b:10"]["title"] == "edited"
        assert docs["a:9001"] == {"id": "a:9001", "name": "late", "born": 2000}
        assert _fields(env)["pages"]["type"] == "string"
        names = {c["name"] for c in env.http.get("/collections").json()}
        assert f"{alias}__v1" not in names  # the old collection dropped
        report = env.verify()
        assert report["in_sync"] is True, json.dumps(report)[:2000]
        assert report["tables"]["authors"]["rows"] == AUTHORS + 1
    finally:
        _stop(daemon, env)
    log = read_daemon_log(env, "restarted")
    assert "rebuild continues" in log
    assert yaml.safe_load(env.config_path.read_text())["tables"][0]["id_prefix"] == "b:"
