"""Per-table mapping options end to end (real Typesense, app writes via stdlib sqlite3), and
`init` output that works with no edits."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

from support import API_KEY, Env, app_exec, launcher

ITEMS_DDL = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,"
    " deleted INTEGER NOT NULL DEFAULT 0, secret TEXT, photo BLOB, price REAL)"
)


def test_where_soft_delete_include_rename(env: Env) -> None:
    app_exec(env.db, ITEMS_DDL)
    env.write_config([{
        "table": "items",
        "where": "status <> 'draft'",
        "soft_delete": "deleted",
        "exclude": ["secret"],
        "rename": {"name": "title"},
    }])
    env.cli("install", check=True)
    app_exec(
        env.db,
        "INSERT INTO items (id, name, status, secret) VALUES (1, 'one', 'live', 's1')",
        "INSERT INTO items (id, name, status, secret) VALUES (2, 'two', 'draft', 's2')",
        "INSERT INTO items (id, name, status, secret) VALUES (3, 'three', 'live', 's3')",
    )
    env.cli("run", "--once", check=True)
    docs = env.documents("items")
    assert set(docs) == {"1", "3"}  # the draft does not match `where`
    assert docs["1"] == {"id": "1", "title": "one", "status": "live", "deleted": 0}
    # a row that stops matching is deleted; a soft-deleted row is deleted; a row that starts
    # matching appears
    app_exec(env.db, "UPDATE items SET status = 'draft' WHERE id = 1",
             "UPDATE items SET deleted = 1 WHERE id = 3",
             "UPDATE items SET status = 'live' WHERE id = 2")
    env.cli("run", "--once", check=True)
    assert set(env.documents("items")) == {"2"}
    report = env.verify()
    assert report["in_sync"] is True and report["tables"]["items"]["rows"] == 1


def test_blob_left_out_unless_included(env: Env) -> None:
    app_exec(env.db, ITEMS_DDL)
    env.write_config([{"table": "items", "include": ["name", "photo"]}])
    env.cli("install", check=True)
    app_write_blob = (
        "INSERT INTO items (id, name, status, photo, price) VALUES (7, 'pic', 'live',"
        " X'00FF10', 2.5)"
    )
    app_exec(env.db, app_write_blob)
    env.cli("run", "--once", check=True)
    doc = env.documents("items")["7"]
    assert doc == {"id": "7", "name": "pic", "photo": base64.b64encode(b"\x00\xff\x10").decode()}
    assert env.verify()["in_sync"] is True


def test_several_tables_each_into_its_own_collection(env: Env) -> None:
    app_exec(env.db, ITEMS_DDL,
             "CREATE TABLE tags (item INTEGER, tag TEXT, PRIMARY KEY (item, tag)) WITHOUT ROWID")
    env.write_config([{"table": "items"}, {"table": "tags"}])
    env.cli("install", check=True)
    app_exec(env.db, "INSERT INTO items (id, name, status) VALUES (1, 'one', 'live')",
             "INSERT INTO tags VALUES (1, 'red'), (1, 'blue, \"navy\"')")
    env.cli("run", "--once", check=True)
    assert set(env.documents("items")) == {"1"}
    assert set(env.documents("tags")) == {'[1,"red"]', '[1,"blue, \\"navy\\""]'}
    app_exec(env.db, "DELETE FROM tags WHERE tag = 'red'")
    env.cli("run", "--once", check=True)
    assert set(env.documents("tags")) == {'[1,"blue, \\"navy\\""]'}
    assert env.verify()["in_sync"] is True


def test_init_output_installs_and_runs_without_edits(env: Env) -> None:
    app_exec(env.db, ITEMS_DDL, "CREATE TABLE no_key (a, b)",
             "CREATE VIEW live_items AS SELECT * FROM items WHERE status = 'live'",
             "INSERT INTO items (id, name, status) VALUES (1, 'one', 'live')")
    result = launcher.run("init", "--database", str(env.db), "--typesense-url",
                          env.typesense.url, "--api-key-env", "INIT_TEST_KEY", check=True)
    assert "# skipped 'no_key': no PRIMARY KEY" in result.stdout
    assert "# skipped 'live_items': a view has no triggers" in result.stdout  # before: unsaid
    env.config_path.write_text(result.stdout)
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return launcher.run(*args, config=env.config_path,
                            extra_env={"INIT_TEST_KEY": API_KEY})

    for args in (("check",), ("install",), ("backfill",), ("run", "--once")):
        done = cli(*args)
        # check fails before install (triggers missing); everything after must pass
        if args != ("check",):
            assert done.returncode == 0, (args, done.stdout, done.stderr)
    app_exec(env.db, "INSERT INTO items (id, name, status) VALUES (2, 'two', 'live')")
    assert cli("run", "--once").returncode == 0
    verify = cli("verify")
    assert verify.returncode == 0, verify.stdout
    assert "items: 2 rows, 2 documents" in verify.stdout
    env.http.delete("/collections/items__v1")
    env.http.delete("/aliases/items")


def test_a_missing_config_says_where_it_looked_and_how_to_name_one(tmp_path: Path) -> None:
    result = launcher.run("status", cwd=tmp_path, extra_env={"CDC_CONFIG": ""})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cdc-daemon: error: {tmp_path / 'cdc.yaml'}: config file not found (name one with"
        " --config PATH or $CDC_CONFIG; `cdc-daemon init` writes one)")
