"""Keys at the edges, end to end (the app's stdlib sqlite3, the CLI, a real Typesense):

- TEXT keys that are not valid UTF-8 (`CAST(X'ff41' AS TEXT)`): backfill logs them and syncs
  every other row; verify's pages move past one that ends a page (before: an endless loop).
- A `COLLATE NOCASE` primary key: `INSERT OR REPLACE` of 'alice@…' over 'Alice@…' leaves one
  document, not two.
- REALs in a composite key that the app's SQLite (3.40) quote()s with 15 digits only it reads back
  as the value: each row is found and synced, updated and deleted.
"""

from __future__ import annotations

import json

from support import Env, app_exec, app_write

from cdc_daemon import backfill, verify

TABLE = "CREATE TABLE k (k TEXT PRIMARY KEY, v INTEGER)"
NOT_UTF8 = ("k\ufffd", "\ufffdA")  # as the dead letters show CAST(X'6bff'/X'ff41' AS TEXT)


def seed(env: Env, page_size: int) -> set[str]:
    """Rows such that the key X'6bff' ('k' + an invalid byte) ends the first page of `page_size`
    rows in key order, and X'ff41' is the very last; returns the valid keys."""
    valid = [f"key-{i:05d}" for i in range(1, page_size)] + [f"z-{i}" for i in range(9)]
    app_exec(env.db, "PRAGMA journal_mode=WAL", TABLE)
    app_write(env.db, [
        [("INSERT INTO k VALUES (?, ?)", [key, n]) for n, key in enumerate(valid)]
        + [("INSERT INTO k VALUES (CAST(X'6bff' AS TEXT), -1)", []),
           ("INSERT INTO k VALUES (CAST(X'ff41' AS TEXT), -2)", [])]
    ])
    env.write_config([{"table": "k"}], sync={"max_attempts": 1})
    env.cli("install", check=True)
    return set(valid)


def dead_letters(env: Env) -> dict[str, str]:
    lines = env.cli("dead-letters", "list", "--json", check=True).stdout.splitlines()
    return {letter["key"]: letter["error"] for letter in map(json.loads, lines)}


def test_backfill_with_keys_that_are_not_utf8(env: Env) -> None:
    valid = seed(env, backfill.PAGE_SIZE)
    result = env.cli("backfill", timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]  # the two keys' rejections are said
    assert "k: 2 documents rejected" in result.stderr and "UTF-8" in result.stderr
    assert f"k: backfilled {len(valid) + 2} rows" in result.stdout, result.stdout
    assert set(env.documents("k")) == valid  # every other row
    dead = dead_letters(env)
    assert set(dead) == set(NOT_UTF8), dead
    assert all("not valid UTF-8" in error for error in dead.values()), dead
    assert env.status()["backlog"] == 0


def test_verify_moves_past_a_key_that_is_not_utf8_ending_a_page(env: Env) -> None:
    valid = seed(env, verify.PAGE_SIZE)
    assert env.cli("backfill", timeout=120).returncode == 1  # the keys that are not UTF-8
    # Before, the page after X'6bff' began with X'6bff' again, forever: the timeout fails it.
    result = env.cli("verify", "--json", timeout=60)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)["tables"]["k"]
    assert report["documents"] == len(valid), report
    assert report["extra"] == 0 and report["stale"] == 0, report


def test_nocase_key_replaced_through_its_collation_leaves_one_document(env: Env) -> None:
    app_exec(
        env.db,
        "PRAGMA journal_mode=WAL",
        "CREATE TABLE u (email TEXT PRIMARY KEY COLLATE NOCASE, name TEXT)",
    )
    env.write_config([{"table": "u"}])
    env.cli("install", check=True)
    app_exec(
        env.db,
        "INSERT INTO u VALUES ('Alice@Example.com', 'alice')",
        "INSERT INTO u VALUES ('bob@x', 'bob')",
    )
    env.cli("run", "--once", check=True)
    assert set(env.documents("u")) == {"Alice@Example.com", "bob@x"}

    app_exec(env.db, "INSERT OR REPLACE INTO u VALUES ('alice@example.com', 'alice 2')")
    env.cli("run", "--once", check=True)
    docs = env.documents("u")
    assert set(docs) == {"alice@example.com", "bob@x"}  # before: the old 'Alice@…' stayed
    assert docs["alice@example.com"]["name"] == "alice 2"

    app_exec(env.db, "UPDATE OR REPLACE u SET email = 'ALICE@example.com' WHERE email = 'bob@x'")
    env.cli("run", "--once", check=True)
    assert set(env.documents("u")) == {"ALICE@example.com"}
    assert env.verify()["in_sync"] is True


def test_composite_keys_with_reals_the_apps_sqlite_quotes_inexactly(env: Env) -> None:
    # 3.40's quote(): 4.35680493355571e-308 and 4.73380916229069e-296, other values for Python
    # and the daemon's SQLite; before, the rows were not found and their documents never made.
    reals = [4.3568049335557104e-308, 4.7338091622906903e-296, -6.5028308113475796e-295, 0.1]
    app_exec(env.db, "PRAGMA journal_mode=WAL",
             "CREATE TABLE m (x REAL, n INTEGER, v TEXT, PRIMARY KEY (x, n))")
    env.write_config([{"table": "m"}])
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO m VALUES (?, 1, 'new')", [x]) for x in reals]])
    env.cli("run", "--once", check=True)
    docs = env.documents("m")
    assert set(docs) == {f"[{x!r},1]" for x in reals}, docs
    app_write(env.db, [[("UPDATE m SET v = 'changed' WHERE x = ?", [reals[0]]),
                        ("DELETE FROM m WHERE x = ?", [reals[1]])]])
    env.cli("run", "--once", check=True)
    docs = env.documents("m")
    assert set(docs) == {f"[{x!r},1]" for x in reals if x != reals[1]}, docs
    assert docs[f"[{reals[0]!r},1]"]["v"] == "changed"
    assert env.verify()["in_sync"] is True
