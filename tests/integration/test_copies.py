"""A copy of a database (a staging copy, `cp -a` of the app's folder) renamed out of the
original's way, as the ownership refusal suggests, never deletes or drops the original's
documents; a collection deleted by hand with its alias comes back with every row. Found by
attacking issue 13's fixes. Real Typesense, the app as a separate stdlib-sqlite3 process."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from support import Env, app_exec, app_write

from cdc_daemon.localserver import LocalTypesense

BOOKS = "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL)"


@pytest.fixture
def original(tmp_path: Path, typesense: LocalTypesense, env: Env) -> Env:
    """The app and its daemon's work: 30 books synced into `<prefix>_books`."""
    first = Env(tmp_path / "a", typesense, env.prefix)
    first.tmp.mkdir()
    app_exec(first.db, BOOKS)
    first.write_config([{"table": "books"}])
    first.cli("install", check=True)
    app_write(first.db, [[("INSERT INTO books VALUES (?, ?)", [i, f"book {i}"])
                          for i in range(1, 31)]])
    assert first.cli("run", "--once", timeout=180).returncode == 0
    assert len(first.documents("books")) == 30
    return first


def _copy(original: Env, name: str) -> Env:
    shutil.copytree(original.tmp, original.tmp.parent / name)
    return Env(original.tmp.parent / name, original.typesense, original.prefix)


def _run_once(env: Env) -> Any:
    result = env.cli("run", "--once", timeout=180)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def _original_intact(original: Env) -> None:
    assert len(original.documents("books")) == 30
    assert original.verify()["in_sync"] is True


def test_a_copy_given_another_collection_name_leaves_the_original_alone(original: Env) -> None:
    copy = _copy(original, "b")
    assert _run_once(copy).returncode == 2  # refused: the collection is the original's
    copy.write_config([{"table": "books", "collection": f"{copy.prefix}_books_staging"}])
    assert _run_once(copy).returncode == 0
    assert len(copy.http.get(f"/collections/{copy.prefix}_books_staging").json().get(
        "fields", [])) > 0
    _original_intact(original)  # before the fix: all 30 deleted as the copy's "old" documents


def test_a_copy_given_a_collection_prefix_leaves_the_original_alone(original: Env) -> None:
    copy = _copy(original, "c")
    copy.write_config([{"table": "books"}], typesense={"collection_prefix": "stg_"})
    assert _run_once(copy).returncode == 0
    _original_intact(original)  # before the fix: the original's alias and collection dropped


def test_a_copy_configured_with_the_originals_real_collection_name_is_refused(
    original: Env,
) -> None:
    copy = _copy(original, "d")
    copy.write_config([{"table": "books", "collection": f"{copy.prefix}_books__v1"}])
    result = _run_once(copy)
    assert result.returncode == 2 and "belongs to" in result.stderr, result.stderr[-2000:]
    check = copy.cli("check")
    assert check.returncode != 0 and "belongs to" in check.stdout, check.stdout
    _original_intact(original)


def test_a_collection_deleted_with_its_alias_comes_back_with_every_row(original: Env) -> None:
    alias = f"{original.prefix}_books"
    physical = original.http.get(f"/aliases/{alias}").json()["collection_name"]
    assert original.http.delete(f"/aliases/{alias}").status_code == 200
    assert original.http.delete(f"/collections/{physical}").status_code == 200
    assert _run_once(original).returncode == 0
    _original_intact(original)  # before the fix: recreated empty, backlog 0
