"""The operator guide's procedures (docs/operator-guide.md), walked end to end as an operator
would: the same config edits, the same commands, the same signals. A real Typesense, the app as
a separate stdlib-sqlite3 process, `cdc-daemon run` as a subprocess reloaded with SIGHUP, the CLI
as a subprocess.

Each test names the guide section it walks and first checks that the guide still says what the
test does (the commands it runs, the log lines it waits for): a change to either one fails here.
Each ends the same way: `verify --json` in sync (0 missing, extra and stale), `status` backlog 0,
no dead letters, and the daemon alive, then stopped with exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from security.helpers import Keys, bearer, claims, create_scoped_key, delete_key, sign_rs256
from support import (
    Env,
    app_exec,
    app_write,
    collection_documents,
    db_rows,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import free_port

GUIDE_PATH = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
GUIDE = GUIDE_PATH.read_text(encoding="utf-8")

ITEMS_DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT NOT NULL, n INTEGER NOT NULL)"
# The reload line lists config keys; a key file rewritten in place is not one of them.
UNLISTED_KEY_FILE = "a key file rewritten under the same name is read again but not listed"
SLOW = 120  # seconds: the machine is loaded, and a resync is a backfill plus a sweep


# -- the guide ---------------------------------------------------------------------------------


def _flat(text: str) -> str:
    """Whitespace collapsed: the guide wraps its sentences anywhere."""
    return " ".join(text.split())


def guide_section(heading: str, bullet: str | None = None) -> str:
    """The text under the guide's heading `heading` (up to the next heading of any level), or
    within it the bullet that starts with `- **bullet**` (up to the next bullet of that level)."""
    lines = GUIDE.splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(rf"#+ {re.escape(heading)}", line)]
    assert len(starts) == 1, f"operator-guide.md: no single section {heading!r}"
    body: list[str] = []
    for line in lines[starts[0] + 1:]:
        if line.startswith("#"):
            break
        body.append(line)
    if bullet is None:
        return "\n".join(body)
    marker = f"- **{bullet}**"
    first = [i for i, line in enumerate(body) if line.startswith(marker)]
    assert len(first) == 1, f"operator-guide.md, {heading!r}: no single bullet {marker!r}"
    part = [body[first[0]]]
    for line in body[first[0] + 1:]:
        if line.startswith("- ") or line.startswith("#"):
            break
        part.append(line)
    return "\n".join(part)


def guide_says(section: str, *phrases: str) -> None:
    """The guide's section still contains each phrase (whitespace-insensitive)."""
    flat = _flat(section)
    for phrase in phrases:
        assert _flat(phrase) in flat, f"operator-guide.md no longer says {phrase!r}:\n{section}"


# -- the operator's tools ----------------------------------------------------------------------


def events(env: Env, event: str, name: str = "daemon") -> list[dict[str, Any]]:
    """The daemon's JSON log lines with this event."""
    found = []
    for line in read_daemon_log(env, name).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


def logged(env: Env, text: str, name: str = "daemon") -> bool:
    return text in read_daemon_log(env, name)


def edit_config(env: Env, change: Callable[[dict[str, Any]], None]) -> None:
    """An operator's edit of the YAML file."""
    config = yaml.safe_load(env.config_path.read_text())
    change(config)
    env.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def reload(env: Env, daemon: subprocess.Popen[str]) -> dict[str, Any]:
    """`systemctl reload cdc-daemon`: SIGHUP; returns the `config reloaded` line it answered
    with (a refused reload fails the test)."""
    before = len(events(env, "config reloaded"))
    refused = len(events(env, "reload failed; keeping the previous config"))
    daemon.send_signal(signal.SIGHUP)

    def answered() -> bool:
        assert daemon.poll() is None, read_daemon_log(env)
        assert len(events(env, "reload failed; keeping the previous config")) == refused, (
            read_daemon_log(env)
        )
        return len(events(env, "config reloaded")) > before

    wait_for(answered, 60, message="config reloaded")
    return events(env, "config reloaded")[-1]


def rows_as_documents(env: Env, table: str = "items") -> dict[str, dict[str, Any]]:
    return {
        str(i): {"id": str(i), "title": title, "n": n}
        for i, title, n in db_rows(env.db, f"SELECT id, title, n FROM {table}")
    }


def in_step(env: Env, collection: str, table: str = "items") -> bool:
    return collection_documents(env.http, collection) == rows_as_documents(env, table)


def insert(env: Env, ids: range, title: str = "v1", table: str = "items") -> None:
    app_write(env.db, [[(f"INSERT INTO {table} (id, title, n) VALUES (?, ?, ?)",
                         [i, f"{title} {i}", i]) for i in ids]])


def operator_config(env: Env, tables: list[dict[str, Any]], **overrides: Any) -> None:
    """The test config with the default `sync.max_attempts` (10: a change is dead-lettered about
    8.5 minutes after its first rejection), as an operator has it, not the tests' 3."""
    env.write_config(tables, **overrides)

    def default_attempts(config: dict[str, Any]) -> None:
        config["sync"].pop("max_attempts")

    edit_config(env, default_attempts)


def new_items_world(env: Env, rows: int = 200,
                    edit: Callable[[dict[str, Any]], None] | None = None, **config: Any) -> None:
    """The app's `items` table (WAL) with `rows` rows, configured (then `edit`ed) and
    installed."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ITEMS_DDL)
    operator_config(env, [{"table": "items"}], **config)
    if edit is not None:
        edit_config(env, edit)
    env.cli("install", check=True)
    insert(env, range(1, rows + 1))


def settled(env: Env) -> bool:
    """Nothing in the log and nothing owed (resync, rebuild, leftovers, triggers)."""
    status = env.status()
    busy = {"resync", "rebuilding_into", "leftovers", "trigger_problems", "backfill_logged_rows"}
    return status["backlog"] == 0 and not any(busy & set(t) for t in status["tables"].values())


def assert_done(env: Env, daemon: subprocess.Popen[str], name: str = "daemon") -> None:
    """How every procedure ends: in sync, backlog 0, no dead letters, the daemon alive; then
    stopped cleanly (exit 0) with no traceback in its log."""
    wait_for(lambda: settled(env), SLOW, message="backlog 0 and nothing owed", interval=0.5)
    report = env.verify()
    assert report["in_sync"] is True, report
    assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0), report
    status = env.status()
    assert status["backlog"] == 0 and status["dead_letters"] == 0, status
    dead = env.cli("dead-letters", "list", "--json", check=True)
    assert dead.stdout.strip() == "", dead.stdout
    assert daemon.poll() is None, read_daemon_log(env, name)
    assert stop_process(daemon, timeout=30) == 0, read_daemon_log(env, name)
    assert "Traceback" not in read_daemon_log(env, name)


@pytest.fixture
def daemons(env: Env) -> Iterator[list[subprocess.Popen[str]]]:
    """Daemons a test started; stopped at teardown if the test failed before it stopped them."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop_process(process)


def start(env: Env, daemons: list[subprocess.Popen[str]], name: str = "daemon"
          ) -> subprocess.Popen[str]:
    daemon = start_daemon_logged(env, name=name)
    daemons.append(daemon)
    return daemon


# -- Changing the config (reload) → Add a table ------------------------------------------------


def test_add_a_table(env: Env, daemons: list[Any]) -> None:
    """Operator guide, "Changing the config (reload)" → "Add a table": add it to the config,
    run `cdc-daemon install` (its triggers), reload. Its collection is created and every row
    sent. The app keeps writing to the new table throughout, also between install and reload."""
    section = guide_section("Changing the config (reload)", "Add a table")
    guide_says(section, "add it to the config, run `cdc-daemon install` (its triggers), reload",
               "Its collection is created and every row sent")
    guide_says(guide_section("Changing the config (reload)"), "config reloaded")

    new_items_world(env)
    daemon = start(env, daemons)
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="items synced")
    # The app already has the table the operator now wants searchable.
    app_exec(env.db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
                     " n INTEGER NOT NULL)")
    insert(env, range(1, 151), table="notes")

    # 1. Add it to the config.
    notes = env.collection("notes")
    edit_config(env, lambda c: c["tables"].append({"table": "notes", "collection": notes}))
    # 2. `cdc-daemon install`: its triggers. The app writes on.
    env.cli("install", check=True)
    app_exec(env.db, "UPDATE notes SET title = 'between install and reload' WHERE id <= 10",
             "DELETE FROM notes WHERE id > 140")
    # 3. Reload.
    reloaded = reload(env, daemon)
    assert any(key.startswith("tables") for key in reloaded["changed"]), reloaded
    insert(env, range(200, 211), title="after reload", table="notes")

    wait_for(lambda: in_step(env, notes, "notes"), SLOW, message="the new collection filled")
    assert collection_documents(env.http, notes)["5"]["title"] == "between install and reload"
    assert env.http.get(f"/aliases/{notes}").json()["collection_name"] == f"{notes}__v1"
    assert in_step(env, env.collection("items"))
    assert_done(env, daemon)


# -- Changing the config (reload) → Rename a collection ----------------------------------------


def test_rename_a_collection(env: Env, daemons: list[Any]) -> None:
    """Operator guide, "Changing the config (reload)" → "Rename a collection": change it in the
    config and reload; `<new>__v1` behind the alias `<new>` is created and filled with every
    row; then the old alias and its collection are dropped (`old documents cleared ...
    dropped`), as this database created them."""
    section = guide_section("Changing the config (reload)", "Rename a collection")
    guide_says(section, "change it in the config and reload",
               "the new collection (`<new>__v1` behind the alias `<new>`) is created and filled"
               " with every row",
               "the old alias and its collection are dropped (`old documents cleared ...")

    new_items_world(env)
    daemon = start(env, daemons)
    old = env.collection("items")
    wait_for(lambda: in_step(env, old), SLOW, message="items synced")
    old_physical = env.http.get(f"/aliases/{old}").json()["collection_name"]
    assert old_physical == f"{old}__v1"

    # 1. Change it in the config and reload.
    new = f"{old}_renamed"

    def rename(config: dict[str, Any]) -> None:
        config["tables"][0]["collection"] = new

    edit_config(env, rename)
    reloaded = reload(env, daemon)
    assert reloaded["changed"] == ["tables[0].collection"], reloaded
    app_exec(env.db, "UPDATE items SET title = 'after rename' WHERE id <= 5",
             "DELETE FROM items WHERE id > 190")
    insert(env, range(300, 311), title="after rename")

    # 2. The new collection, behind its alias, filled with every row.
    wait_for(lambda: in_step(env, new), SLOW, message="the new collection filled")
    assert env.http.get(f"/aliases/{new}").json()["collection_name"] == f"{new}__v1"
    # 3. The old alias and its collection dropped.
    wait_for(lambda: events(env, "old documents cleared"), SLOW, message="old documents cleared")
    cleared = events(env, "old documents cleared")[0]
    assert cleared["collection"] == old, cleared
    assert f"alias {old}" in cleared["dropped"] and old_physical in cleared["dropped"], cleared
    assert env.http.get(f"/aliases/{old}").status_code == 404
    assert env.http.get(f"/collections/{old_physical}").status_code == 404
    assert_done(env, daemon)


# -- Changing the config (reload) → Rotate the JWT key -----------------------------------------

ISSUER, AUDIENCE = "https://auth.example", "cdc-daemon"


def test_rotate_the_jwt_key(env: Env, daemons: list[Any]) -> None:
    """Operator guide, "Changing the config (reload)" → "Rotate the JWT key": put the new public
    key in place (the same `public_key_file`), then reload. A file that does not parse refuses
    the reload, naming the key; after `config reloaded` a token signed by the old key gets 401
    and the new key's tokens work. Real HTTP against the daemon's admin API."""
    section = guide_section("Changing the config (reload)", "Rotate the JWT key")
    guide_says(section, "put the new public key in place (the same `public_key_file`",
               "then reload",
               "a file that does not parse refuses the reload, naming the key",
               "after `config reloaded` a token signed by the old key gets 401 and the new key's"
               " tokens work")
    guide_says(guide_section("Changing the config (reload)"), UNLISTED_KEY_FILE)

    old, new = Keys(), Keys()
    key_file = env.tmp / "jwt.pub"
    key_file.write_bytes(old.public_pem)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    new_items_world(env, admin={
        "listen": f"127.0.0.1:{port}",
        "jwt": {"algorithms": ["RS256"], "public_key_file": "jwt.pub", "issuer": ISSUER,
                "audience": AUDIENCE},
    })
    daemon = start(env, daemons)
    http = httpx.Client(timeout=30)

    def token(keys: Keys, role: str) -> str:
        return sign_rs256(keys, claims([role], sub="ops", iss=ISSUER, aud=AUDIENCE))

    def call(method: str, path: str, keys: Keys, role: str = "operator") -> int:
        return http.request(method, url + path, headers=bearer(token(keys, role))).status_code

    def up() -> bool:
        assert daemon.poll() is None, read_daemon_log(env)
        try:
            return http.get(url + "/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 60, message="admin API up")
        wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="items synced")
        assert call("GET", "/v1/status", old, "viewer") == 200
        assert call("GET", "/v1/status", new, "viewer") == 401

        # A key file that does not parse: the reload is refused, naming the key; nothing changes.
        key_file.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: events(env, "reload failed; keeping the previous config"), 60,
                 message="the broken key refused")
        refused = events(env, "reload failed; keeping the previous config")[0]
        assert refused["error"].startswith("admin.jwt.public_key_file:"), refused
        assert call("GET", "/v1/status", old, "viewer") == 200

        # Put the new public key in place, then reload.
        key_file.write_bytes(new.public_pem)
        assert reload(env, daemon)["changed"] == []  # the file's name stayed (the guide says so)
        assert call("GET", "/v1/status", old, "viewer") == 401
        assert call("POST", "/v1/pause", old) == 401
        assert call("GET", "/v1/status", new, "viewer") == 200
        # The new key's operator pauses and resumes the loop; changes queue meanwhile.
        assert call("POST", "/v1/pause", new) == 200
        app_exec(env.db, "UPDATE items SET title = 'while paused' WHERE id <= 20")
        wait_for(lambda: env.status()["backlog"] == 20, 30, message="changes queued")
        assert call("POST", "/v1/resume", old) == 401
        assert call("POST", "/v1/resume", new) == 200
        wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="resumed")
    finally:
        http.close()
    assert_done(env, daemon)


# -- Changing the config (reload) → Rotate the Typesense key -----------------------------------


class AppWriter:
    """The app writing on a thread (one small transaction at a time) until stopped."""

    def __init__(self, env: Env, first_id: int) -> None:
        self.env = env
        self.next_id = first_id
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                i = self.next_id
                app_write(self.env.db, [[
                    ("INSERT INTO items (id, title, n) VALUES (?, ?, ?)", [i, f"w {i}", i]),
                    ("UPDATE items SET title = ?, n = n + 1 WHERE id = ?", [f"u {i}", i % 50 + 1]),
                ]])
                self.next_id = i + 1
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def start(self) -> AppWriter:
        self._thread.start()
        return self

    def wrote_since(self, first_id: int, count: int) -> Callable[[], bool]:
        return lambda: self.next_id >= first_id + count

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive() and not self.errors, self.errors


def test_rotate_the_typesense_key(env: Env, daemons: list[Any]) -> None:
    """Operator guide, "Changing the config (reload)" → "Rotate the Typesense key"
    (`api_key_file`): create key B in Typesense, write it to the file, reload, then delete key
    A. The app writes throughout: nothing is lost, nothing dead-lettered, and the daemon never
    sends the deleted key."""
    section = guide_section("Changing the config (reload)", "Rotate the Typesense key")
    guide_says(section, "(`api_key_file`)",
               "create key B in Typesense, write it to the file, reload, then delete key A",
               "delete A only after that line")
    guide_says(guide_section("Changing the config (reload)"), UNLISTED_KEY_FILE)

    key_a_id, key_a = create_scoped_key(env.typesense, "cdc-daemon: key A")
    key_file = env.tmp / "typesense.key"
    key_file.write_text(key_a + "\n")
    key_file.chmod(0o600)

    def use_key_file(config: dict[str, Any]) -> None:
        config["typesense"].pop("api_key")
        config["typesense"]["api_key_file"] = "typesense.key"

    new_items_world(env, rows=50, edit=use_key_file)
    daemon = start(env, daemons)
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="items synced")
    writer = AppWriter(env, first_id=1000).start()
    key_b_id = None
    try:
        wait_for(writer.wrote_since(1000, 3), 60, message="the app writing")
        # Create key B in Typesense; write it to the file; reload.
        key_b_id, key_b = create_scoped_key(env.typesense, "cdc-daemon: key B")
        key_file.write_text(key_b + "\n")
        assert reload(env, daemon)["changed"] == []  # the file's name stayed (the guide says so)
        # Then delete key A.
        delete_key(env.typesense, key_a_id)
        deleted_at = len(read_daemon_log(env))
        after = writer.next_id
        wait_for(writer.wrote_since(after, 5), 60, message="the app writing after the rotation")
    finally:
        writer.stop()
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="every write synced")
    # The deleted key was never used: no refused request after the rotation.
    later = read_daemon_log(env)[deleted_at:]
    assert "the API key was refused" not in later, later
    try:
        assert_done(env, daemon)
    finally:
        if key_b_id is not None:
            delete_key(env.typesense, key_b_id)


# -- Restoring a backup ------------------------------------------------------------------------


def guide_restore_command(section: str, folder: Path) -> str:
    """The guide's `cp backup.db /var/lib/app/app.db.new && mv ...` with the test's folder."""
    found = re.search(r"`(cp backup\.db \S+ && mv \S+ \S+)`", _flat(section))
    assert found, f"operator-guide.md: no `cp backup.db ... && mv ...` in:\n{section}"
    return found.group(1).replace("/var/lib/app/", f"{folder}/")


def app_writes_after_the_backup(env: Env) -> None:
    insert(env, range(201, 251), title="after backup")
    app_exec(env.db, "UPDATE items SET title = 'changed after backup' WHERE id <= 20",
             "DELETE FROM items WHERE id BETWEEN 21 AND 30")


def app_writes_after_the_restore(env: Env, first: int) -> None:
    """Inserts first..first+9, updates 1-5, deletes (first - 350)..(first - 345)."""
    insert(env, range(first, first + 10), title="after restore")
    app_exec(env.db, f"UPDATE items SET title = 'restored {first}' WHERE id <= 5",
             f"DELETE FROM items WHERE id BETWEEN {first - 350} AND {first - 345}")


def test_restore_a_backup(env: Env, daemons: list[Any]) -> None:
    """Operator guide, "Restoring a backup": a backup made with `sqlite3 app.db ".backup
    backup.db"`; the app stopped; the guide's `cp ... && mv ...` under the running daemon; the
    app started after `database file replaced; reopening`; then `sweep finished` and in sync.
    Then the other way: cdc-daemon stopped before step 2 and started after (`database file is
    not the one last synced`)."""
    section = guide_section("Restoring a backup")
    backup_command = 'sqlite3 app.db ".backup backup.db"'
    guide_says(section, backup_command, "Stop the app", "cdc-daemon may keep running",
               "`database file replaced; reopening`. Start the app after that line.",
               "Or stop cdc-daemon before step 2 and start it after: at start it logs `database"
               " file is not the one last synced`",
               "(`sweep finished`, with counts)", "`verify` then says in sync")
    restore = guide_restore_command(section, env.tmp)

    new_items_world(env)
    daemon = start(env, daemons)
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="items synced")
    subprocess.run(backup_command, shell=True, cwd=env.tmp, check=True, timeout=60)
    backup = rows_as_documents(env)
    app_writes_after_the_backup(env)
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="later writes synced")

    # 1. The app is stopped (it is a process per write here). 2. The guide's command.
    subprocess.run(restore, shell=True, cwd=env.tmp, check=True, timeout=60)
    # 3. The daemon notices; the app (and this test: any reader) opens the file after that line.
    wait_for(lambda: logged(env, "database file replaced; reopening"), 60,
             message="database file replaced; reopening")
    assert rows_as_documents(env) == backup
    app_writes_after_the_restore(env, first=400)
    # 4. Every row again, then the documents no row produces removed.
    wait_for(lambda: events(env, "sweep finished"), SLOW, message="sweep finished")
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="the restored truth")
    docs = collection_documents(env.http, env.collection("items"))
    assert "225" not in docs and "25" in docs and "52" not in docs, sorted(docs)
    assert docs["15"]["title"] == "v1 15", docs["15"]
    assert docs["1"]["title"] == "restored 400"
    assert daemon.poll() is None

    # The other way: cdc-daemon stopped before step 2, started after. A new backup: restoring
    # the first one again would not be noticed (see the report on inode reuse).
    os.remove(env.tmp / "backup.db")
    subprocess.run(backup_command, shell=True, cwd=env.tmp, check=True, timeout=60)
    app_writes_after_the_backup(env)
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="later writes synced")
    assert stop_process(daemon, timeout=30) == 0
    subprocess.run(restore, shell=True, cwd=env.tmp, check=True, timeout=60)
    daemon = start(env, daemons, name="restarted")
    wait_for(lambda: logged(env, "database file is not the one last synced", "restarted"), 60,
             message="database file is not the one last synced")
    app_writes_after_the_restore(env, first=500)
    wait_for(lambda: events(env, "sweep finished", "restarted"), SLOW, message="sweep finished")
    wait_for(lambda: in_step(env, env.collection("items")), SLOW, message="the restored truth")
    docs = collection_documents(env.http, env.collection("items"))
    assert "225" not in docs and "25" in docs and "405" in docs and "155" not in docs
    assert docs["1"]["title"] == "restored 500" and docs["15"]["title"] == "v1 15"
    assert_done(env, daemon, "restarted")


# -- Schema changes → Migrating a table while the daemon runs ----------------------------------


# The 12-step ALTER (https://sqlite.org/lang_altertable.html#otheralter) that drops the column
# `legacy`: the table is rebuilt (its triggers go with it) and the collection's schema changes.
DROP_LEGACY = [
    "CREATE TABLE items_new (id INTEGER PRIMARY KEY, title TEXT NOT NULL, n INTEGER NOT NULL)",
    "INSERT INTO items_new (id, title, n) SELECT id, title, n FROM items",
    "DROP TABLE items",
    "ALTER TABLE items_new RENAME TO items",
]
# Another one, adding a CHECK constraint: the same columns, only the triggers go.
ADD_CHECK = [
    "CREATE TABLE items_new (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
    " n INTEGER NOT NULL CHECK (n >= 0))",
    "INSERT INTO items_new (id, title, n) SELECT id, title, n FROM items",
    "DROP TABLE items",
    "ALTER TABLE items_new RENAME TO items",
]
MISSING = "triggers missing or outdated: changes to these tables are not logged"


def triggers_metric(port: int) -> str:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    found = re.search(r'^cdc_triggers_installed\{table="items"\} (\S+)$', text, re.MULTILINE)
    assert found, text
    return found.group(1)


def test_migrate_a_table(env: Env, daemons: list[Any]) -> None:
    """Operator guide, "Schema changes" → "Migrating a table while the daemon runs": 1. the
    migration (a 12-step ALTER dropping a column: triggers gone, schema changed); the daemon
    logs the missing triggers, `status` shows them, `cdc_triggers_installed` is 0; 2.
    `cdc-daemon install` while the daemon runs; 3. `triggers back; resyncing the tables`, the
    app's writes between 1 and 2 reach Typesense, `sweep finished`, in sync. Then the other
    step 2: `sync.reinstall_triggers: true` set once (by reload), and the next migration is
    repaired by the daemon itself (`triggers reinstalled`)."""
    section = guide_section("Migrating a table while the daemon runs (12-step ALTER,"
                            " `sqlite-utils transform`)")
    guide_says(section, MISSING, "triggers missing or outdated, changes NOT LOGGED",
               "`trigger_problems` and `triggers_missing_since` in `--json`",
               "`cdc_triggers_installed{table}` is 0",
               "Run the migration", "Run `cdc-daemon install` right after it",
               "(the daemon may keep running)", "set `sync.reinstall_triggers: true` once",
               "(`triggers reinstalled`, with each trigger it created)",
               "`triggers back; resyncing the tables`", "(`sweep finished`)",
               "What the app wrote between steps 1 and 2 reaches Typesense this way",
               "`verify` is then in sync")

    port = free_port()
    app_exec(env.db, "PRAGMA journal_mode=WAL",
             "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
             " n INTEGER NOT NULL, legacy TEXT)")
    operator_config(env, [{"table": "items"}], metrics={"listen": f"127.0.0.1:{port}"})
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO items VALUES (?, ?, ?, ?)", [i, f"v1 {i}", i, "old"])
                        for i in range(1, 201)]])
    daemon = start(env, daemons)
    alias = env.collection("items")
    wait_for(lambda: len(collection_documents(env.http, alias)) == 200, SLOW,
             message="items synced")
    wait_for(lambda: triggers_metric(port) == "1.0", 30, message="triggers installed (metric)")

    # 1. The migration; the app writes on (none of it logged).
    app_write(env.db, [[(sql, []) for sql in DROP_LEGACY]])
    app_exec(env.db, "UPDATE items SET title = 'migrated ' || id WHERE id <= 20",
             "DELETE FROM items WHERE id > 190")
    insert(env, range(201, 211), title="between migration and install")
    wait_for(lambda: events(env, MISSING), 60, message=MISSING)
    problems = json.dumps(events(env, MISSING)[0]["problems"])
    for op in ("insert", "update", "delete"):
        assert f"change_log:items:{op}" in problems, problems
    entry = env.status()["tables"]["items"]
    assert entry["trigger_problems"] and entry["triggers_missing_since"] is not None, entry
    text = env.cli("status", check=True).stdout
    assert "triggers missing or outdated, changes NOT LOGGED" in text, text
    assert triggers_metric(port) == "0.0"
    # 2. `cdc-daemon install`, the daemon running.
    env.cli("install", check=True)
    # 3. The daemon resyncs the table: what the app wrote meanwhile reaches Typesense.
    wait_for(lambda: events(env, "triggers back; resyncing the tables"), 60,
             message="triggers back; resyncing the tables")
    wait_for(lambda: events(env, "sweep finished"), SLOW, message="sweep finished")
    wait_for(lambda: in_step(env, alias), SLOW, message="the migrated table's truth")
    assert env.http.get(f"/aliases/{alias}").json()["collection_name"] == f"{alias}__v2"
    wait_for(lambda: triggers_metric(port) == "1.0", 30, message="triggers installed (metric)")
    wait_for(lambda: settled(env), SLOW, message="the first migration settled", interval=0.5)
    assert env.verify()["in_sync"] is True

    # The other step 2: `sync.reinstall_triggers: true`, set once (here by a reload).
    def reinstall(config: dict[str, Any]) -> None:
        config["sync"]["reinstall_triggers"] = True

    edit_config(env, reinstall)
    assert "sync.reinstall_triggers" in reload(env, daemon)["changed"]
    sweeps = len(events(env, "sweep finished"))
    app_write(env.db, [[(sql, []) for sql in ADD_CHECK]
                       + [("UPDATE items SET title = 'in the migration' WHERE id <= 10", [])]])
    wait_for(lambda: events(env, "triggers reinstalled"), 60, message="triggers reinstalled")
    reinstalled = events(env, "triggers reinstalled")[0]
    assert any("change_log:items:insert" in c for c in reinstalled["changes"]), reinstalled
    wait_for(lambda: len(events(env, "sweep finished")) > sweeps, SLOW, message="sweep finished")
    app_exec(env.db, "UPDATE items SET title = 'after' WHERE id = 11")  # logged again
    wait_for(lambda: in_step(env, alias), SLOW, message="the second migration's truth")
    assert_done(env, daemon)


