"""Property: whatever the app does (inserts, updates, deletes, INSERT OR REPLACE, key updates,
evictions through a UNIQUE index), after `run --once` the documents equal the rows."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import Env, app_exec, app_write, db_rows

from cdc_daemon.localserver import LocalTypesense

# A composite TEXT key (with a quote and a comma in the values) and a UNIQUE column.
DDL = """CREATE TABLE items (
  region TEXT NOT NULL,
  code TEXT NOT NULL,
  slug TEXT UNIQUE,
  qty INTEGER NOT NULL,
  note TEXT,
  PRIMARY KEY (region, code)
)"""
REGIONS = ["eu", "o'q"]
CODES = ["a", "b, c", "d"]
SLUGS = [None, "s1", "s2", "s3"]

regions = st.sampled_from(REGIONS)
codes = st.sampled_from(CODES)
slugs = st.sampled_from(SLUGS)
qtys = st.integers(min_value=-(2**40), max_value=2**40)
# Unicode line breaks inside values: a JSONL export must not split documents on them.
notes = st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["a\u2028b", "x\x85y", "\x1c"]))

Statement = tuple[str, list[Any]]

operations: st.SearchStrategy[Statement] = st.one_of(
    st.builds(lambda r, c, s, q, n: (
        "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?)", [r, c, s, q, n]),
        regions, codes, slugs, qtys, notes),
    st.builds(lambda r, c, s, q, n: (
        "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)", [r, c, s, q, n]),
        regions, codes, slugs, qtys, notes),
    st.builds(lambda r, c, q, n: (
        "UPDATE items SET qty = ?, note = ? WHERE region = ? AND code = ?", [q, n, r, c]),
        regions, codes, qtys, notes),
    st.builds(lambda r, c, s: (
        "UPDATE OR REPLACE items SET slug = ? WHERE region = ? AND code = ?", [s, r, c]),
        regions, codes, slugs),
    st.builds(lambda r, c: ("DELETE FROM items WHERE region = ? AND code = ?", [r, c]),
              regions, codes),
    st.builds(lambda r, c, r2, c2: (
        "UPDATE OR IGNORE items SET region = ?, code = ? WHERE region = ? AND code = ?",
        [r2, c2, r, c]), regions, codes, regions, codes),
    st.builds(lambda r, c, r2, c2: (
        "UPDATE OR REPLACE items SET region = ?, code = ? WHERE region = ? AND code = ?",
        [r2, c2, r, c]), regions, codes, regions, codes),
    st.builds(lambda q: ("UPDATE items SET qty = qty + ?", [q]), st.integers(-5, 5)),
)
transactions = st.lists(st.lists(operations, min_size=1, max_size=8), min_size=1, max_size=4)


def expected_documents(db: Path) -> dict[str, dict[str, Any]]:
    docs = {}
    for region, code, slug, qty, note in db_rows(
        db, "SELECT region, code, slug, qty, note FROM items"
    ):
        doc_id = json.dumps([region, code], ensure_ascii=False, separators=(",", ":"))
        doc = {"id": doc_id, "region": region, "code": code, "slug": slug, "qty": qty,
               "note": note}
        docs[doc_id] = {k: v for k, v in doc.items() if v is not None}
    return docs


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory,
                typesense: LocalTypesense) -> Path:
    """An installed database, copied for each example (install once, not 20 times)."""
    env = Env(tmp_path_factory.mktemp("property-template"), typesense, "template")
    app_exec(env.db, "PRAGMA journal_mode=WAL", DDL)
    env.write_config([{"table": "items"}])
    env.cli("install", check=True)
    env.http.close()
    assert not Path(str(env.db) + "-wal").exists()  # checkpointed: the file alone is complete
    return env.db


@settings(max_examples=18, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(first=transactions, second=transactions)
def test_documents_equal_rows_after_random_writes(
    template_db: Path, typesense: LocalTypesense, tmp_path_factory: pytest.TempPathFactory,
    first: list[list[Statement]], second: list[list[Statement]],
) -> None:
    tmp = tmp_path_factory.mktemp("example")
    env = Env(tmp, typesense, "prop_" + tmp.name)  # a fresh database and collection per example
    try:
        shutil.copy(template_db, env.db)
        env.write_config([{"table": "items"}])
        # Some changes synced, then more on top of the synced state (updates of existing docs).
        app_write(env.db, first)
        env.cli("run", "--once", check=True)
        app_write(env.db, second)
        env.cli("run", "--once", check=True)

        expected = expected_documents(env.db)
        assert env.documents("items") == expected
        report = env.verify()
        assert report["in_sync"] is True, report
        assert report["tables"]["items"]["rows"] == len(expected)
        with sqlite3.connect(env.db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM change_log").fetchone()[0] == 0
    finally:
        env.drop_collection("items")
        env.close()
