"""A collection belongs to the database that made it (issue 13, item 1).

Two app databases in separate directories, each written by its own stdlib-sqlite3 process, with
a table of the same name and the same collection name, against one real Typesense; the daemons
and the CLI run as real subprocesses. The second database's daemon must never rebuild, write or
drop the first one's collection: `run` (and `backfill`) refuse with one line naming both
databases (exit 2), `check` prints that line (exit 1), and the first app's documents stay
untouched and searchable while its daemon keeps syncing. Sharing on purpose still works
(`id_prefix` + `manage_collection: false`); a collection an earlier version made (no registry
entry) is adopted; a kill -9 between registering a collection and creating it (and right after
creating it) recovers on restart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pytest
from faults.proxy import FaultProxy, Request, Verdict
from support import (
    Env,
    app_exec,
    app_write,
    launcher,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import LocalTypesense
from cdc_daemon.ownership import REGISTRY, registry_schema

BOOKS_A = "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER)"
# The other app's table of the same name: another schema (the first app's collection would be
# rebuilt to fit it, which is how the takeover happened).
BOOKS_B = "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, pages INTEGER NOT NULL)"
HOST = socket.gethostname()


def make_app(root: Path, typesense: LocalTypesense, prefix: str, name: str, ddl: str,
             rows: range, **table: Any) -> Env:
    """One app: its own directory, database (written by the app process) and config."""
    (root / name).mkdir()
    env = Env(root / name, typesense, prefix)
    app_exec(env.db, "PRAGMA journal_mode=WAL", ddl)
    env.write_config([{"table": "books", **table}])
    env.cli("install", check=True)
    insert_books(env, rows, pages=ddl == BOOKS_B)
    return env


def insert_books(env: Env, rows: range, pages: bool = False) -> None:
    column, value = ("pages", "100 + i") if pages else ("year", "1900 + i")
    app_write(env.db, [[(
        "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        f" INSERT INTO books (id, title, {column}) SELECT i, 'book ' || i, {value} FROM n",
        [rows.start, rows.stop - 1],
    )]])


def identity(env: Env) -> str:
    return f"{HOST}:{env.db}"


def alias_target(env: Env, alias: str) -> str | None:
    response = env.http.get(f"/aliases/{quote(alias, safe='')}")
    return response.json()["collection_name"] if response.status_code == 200 else None


def exists(env: Env, collection: str) -> bool:
    return env.http.get(f"/collections/{quote(collection, safe='')}").status_code == 200


def registry_entry(env: Env, physical: str) -> dict[str, Any] | None:
    response = env.http.get(f"/collections/{REGISTRY}/documents/{quote(physical, safe='')}")
    return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]


def searched(env: Env, alias: str) -> int:
    response = env.http.get(f"/collections/{alias}/documents/search",
                            params={"q": "book", "query_by": "title", "per_page": 1})
    response.raise_for_status()
    return int(response.json()["found"])


def refusal(owner: Env, other: Env, alias: str, version: int = 1) -> str:
    return (f"collection {alias!r} ({alias}__v{version}) belongs to {identity(owner)} (table"
            f" books); this daemon is {identity(other)}: it never rebuilds, writes or drops"
            " another database's collection. Give this one another name (tables[0].collection"
            " or typesense.collection_prefix), or share it with id_prefix and"
            " manage_collection: false")


def expected_a(rows: range) -> dict[str, dict[str, Any]]:
    return {str(i): {"id": str(i), "title": f"book {i}", "year": 1900 + i} for i in rows}


def exited(process: subprocess.Popen[str], env: Env, name: str, timeout: float = 90) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process(process)
        raise AssertionError(f"{name} still running after {timeout}s:\n"
                             + read_daemon_log(env, name)[-3000:]) from None


@pytest.fixture
def apps(tmp_path: Path, typesense: LocalTypesense, request: pytest.FixtureRequest
         ) -> Iterator[tuple[Path, str]]:
    """The test's root directory and a collection-name prefix shared by both apps."""
    prefix = "own" + str(abs(hash(request.node.nodeid)) % 10**10)
    yield tmp_path, prefix


def test_second_database_never_takes_over_the_first_ones_collection(
    apps: tuple[Path, str], typesense: LocalTypesense
) -> None:
    root, prefix = apps
    first = make_app(root, typesense, prefix, "a", BOOKS_A, range(1, 21))
    alias = first.collection("books")
    daemon_a = start_daemon_logged(first, name="daemon")
    try:
        wait_for(lambda: first.documents("books") == expected_a(range(1, 21)), 90,
                 "the first app's documents")
        second = make_app(root, typesense, prefix, "b", BOOKS_B, range(1, 6))
        line = refusal(first, second, alias)

        # The second app's daemon (another schema: before the fix it rebuilt into __v2 with its
        # own rows, switched the alias and dropped __v1) refuses at once, in one line, exit 2.
        daemon_b = start_daemon_logged(second, name="daemon_b")
        assert exited(daemon_b, second, "daemon_b") == 2
        stderr = read_daemon_log(second, "daemon_b")
        assert stderr.count("belongs to") == 1, stderr
        assert stderr.strip().splitlines()[-1] == f"cdc-daemon: error: {line}"
        for command in (("run", "--once"), ("backfill",)):
            result = second.cli(*command)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert result.stderr.strip().splitlines()[-1] == f"cdc-daemon: error: {line}"
        check = second.cli("check")
        assert check.returncode == 1, check.stdout + check.stderr
        assert line in check.stdout.splitlines(), check.stdout
        # verify --repair from the second database would delete the first one's documents (no
        # row of its own produces them): refused, with the same line.
        repair = second.cli("verify", "--repair")
        assert repair.returncode == 2, repair.stdout + repair.stderr
        assert repair.stderr.strip().splitlines()[-1] == f"cdc-daemon: error: not repaired: {line}"

        # The first app's collection is untouched and searchable, its daemon keeps syncing.
        assert alias_target(first, alias) == f"{alias}__v1"
        assert not exists(first, f"{alias}__v2")
        assert first.documents("books") == expected_a(range(1, 21))
        assert searched(first, alias) == 20
        insert_books(first, range(21, 26))
        wait_for(lambda: first.documents("books") == expected_a(range(1, 26)), 90,
                 "the first app's later changes")
        assert daemon_a.poll() is None, read_daemon_log(first)
        assert first.cli("check").returncode == 0
        assert (registry_entry(first, f"{alias}__v1") or {}).get("owner") == identity(first)
    finally:
        assert stop_process(daemon_a) == 0, read_daemon_log(first)[-3000:]
    assert first.verify()["in_sync"] is True


def test_shared_collection_still_works_and_a_second_manager_is_refused(
    apps: tuple[Path, str], typesense: LocalTypesense
) -> None:
    root, prefix = apps
    first = make_app(root, typesense, prefix, "a", BOOKS_A, range(1, 11), id_prefix="a:")
    alias = first.collection("books")
    first.cli("run", "--once", check=True)
    second = make_app(root, typesense, prefix, "b", BOOKS_A, range(1, 8), id_prefix="b:")

    # Managing it too (the same schema, its own id_prefix): still another database's collection.
    result = second.cli("run", "--once")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"cdc-daemon: error: {refusal(first, second, alias)}")

    # Following it, as documented: writes its own documents, never creates/rebuilds/drops it.
    second.write_config([{"table": "books", "id_prefix": "b:", "manage_collection": False}])
    assert second.cli("check").returncode == 0
    daemon_b = start_daemon_logged(second, name="daemon_b")
    try:
        wait_for(lambda: sum(i.startswith("b:") for i in first.documents("books")) == 7, 90,
                 "the second app's documents in the shared collection")
        insert_books(first, range(11, 13))
        first.cli("run", "--once", check=True)
        insert_books(second, range(8, 10))
        wait_for(lambda: sum(i.startswith("b:") for i in first.documents("books")) == 9, 90,
                 "the second app's later changes")
    finally:
        assert stop_process(daemon_b) == 0, read_daemon_log(second, "daemon_b")[-3000:]
    docs = first.documents("books")
    assert {i for i in docs if i.startswith("a:")} == {f"a:{i}" for i in range(1, 13)}
    assert {i for i in docs if i.startswith("b:")} == {f"b:{i}" for i in range(1, 10)}
    assert alias_target(first, alias) == f"{alias}__v1"
    assert (registry_entry(first, f"{alias}__v1") or {}).get("owner") == identity(first)
    assert first.verify()["in_sync"] is True
    assert second.verify()["in_sync"] is True


def test_two_managing_hosts_started_at_once_one_wins(
    apps: tuple[Path, str], typesense: LocalTypesense
) -> None:
    """Two databases that both manage one collection (by mistake), started at the same moment:
    registration is a compare-and-set, so exactly one owns it; the other is refused."""
    root, prefix = apps
    hosts = [make_app(root, typesense, prefix, name, BOOKS_A, range(1, 11), id_prefix=f"{name}:")
             for name in ("a", "b")]
    runs = [launcher.start("run", "--once", config=h.config_path, cwd=h.tmp) for h in hosts]
    outputs = [run.communicate(timeout=120) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], outputs
    winner, loser = (hosts[0], hosts[1]) if codes[0] == 0 else (hosts[1], hosts[0])
    alias = winner.collection("books")
    assert outputs[hosts.index(loser)][1].strip().splitlines()[-1] == (
        f"cdc-daemon: error: {refusal(winner, loser, alias)}")
    own = "a:" if winner is hosts[0] else "b:"
    assert set(winner.documents("books")) == {f"{own}{i}" for i in range(1, 11)}
    assert (registry_entry(winner, f"{alias}__v1") or {}).get("owner") == identity(winner)


def test_collection_without_registry_entry_is_adopted(
    apps: tuple[Path, str], typesense: LocalTypesense
) -> None:
    """An earlier version made `<alias>__v1` and registered nothing: the first daemon that meets
    it adopts it (and says so); after that it is that database's."""
    root, prefix = apps
    first = make_app(root, typesense, prefix, "a", BOOKS_A, range(1, 6))
    alias = first.collection("books")
    first.cli("run", "--once", check=True)
    physical = f"{alias}__v1"
    gone = first.http.delete(f"/collections/{REGISTRY}/documents/{quote(physical, safe='')}")
    assert gone.status_code == 200
    assert registry_entry(first, physical) is None

    insert_books(first, range(6, 8))
    result = first.cli("run", "--once")
    assert result.returncode == 0, result.stderr
    adopted = [json.loads(line) for line in result.stderr.splitlines()
               if '"collection adopted' in line]
    assert len(adopted) == 1 and adopted[0]["collection"] == physical, result.stderr
    assert adopted[0]["owner"] == identity(first)
    assert (registry_entry(first, physical) or {}).get("owner") == identity(first)
    assert first.documents("books") == expected_a(range(1, 8))

    second = make_app(root, typesense, prefix, "b", BOOKS_B, range(1, 3))
    result = second.cli("run", "--once")
    assert result.returncode == 2
    assert refusal(first, second, alias) in result.stderr
    assert first.documents("books") == expected_a(range(1, 8))


def test_registration_whose_collection_never_came(
    apps: tuple[Path, str], typesense: LocalTypesense
) -> None:
    """Another database's entry without its collection: young, it may be being created (check
    reports it, run would wait); old, it is taken over with a warning."""
    root, prefix = apps
    first = make_app(root, typesense, prefix, "a", BOOKS_A, range(1, 4))
    alias = first.collection("books")
    physical = f"{alias}__v1"
    first.http.post("/collections", json=registry_schema(REGISTRY))  # 409 when it exists: fine
    ghost = {"id": physical, "owner": "ghost-host:/gone/app.db", "alias": alias,
             "table": "books", "claimed_at": int(time.time())}
    written = first.http.post(f"/collections/{REGISTRY}/documents", json=ghost,
                              params={"action": "upsert"})
    assert written.status_code in (200, 201), written.text
    check = first.cli("check")
    assert check.returncode == 1
    assert (f"collection {alias!r} ({physical}) belongs to ghost-host:/gone/app.db (table books)"
            in check.stdout), check.stdout

    ghost["claimed_at"] = int(time.time()) - 3600
    first.http.post(f"/collections/{REGISTRY}/documents", json=ghost, params={"action": "upsert"})
    assert first.cli("check").returncode == 0
    result = first.cli("run", "--once")
    assert result.returncode == 0, result.stderr
    assert "stale registration taken over" in result.stderr
    assert (registry_entry(first, physical) or {}).get("owner") == identity(first)
    assert first.documents("books") == expected_a(range(1, 4))


class KillAfter:
    """A proxy `after` hook: SIGKILL the armed daemon right after Typesense answered (2xx) the
    first request that matches `point`, once the answer was sent."""

    def __init__(self, point: str, registry_path: str) -> None:
        self.point = point
        self.registry_path = registry_path
        self.pid: int | None = None
        self.lock = threading.Lock()
        self.fired = threading.Event()

    def matches(self, request: Request) -> bool:
        path = request.path.split("?", 1)[0]
        if self.point == "registered":
            return request.method == "POST" and path == self.registry_path
        return request.method == "POST" and path == "/collections"  # created

    def after(self, request: Request, status: int) -> Verdict | None:
        with self.lock:
            if self.pid is None or status // 100 != 2 or not self.matches(request):
                return None
            pid, self.pid = self.pid, None
        return Verdict("forward", then=lambda: self._kill(pid))

    def _kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.fired.set()


@pytest.mark.parametrize("point", ["registered", "created"])
def test_kill_9_between_registering_and_creating_recovers(
    apps: tuple[Path, str], typesense: LocalTypesense, point: str
) -> None:
    root, prefix = apps
    proxy = FaultProxy(typesense.url).start()
    try:
        first = make_app(root, typesense, prefix, "a", BOOKS_A, range(1, 31))
        first.write_config([{"table": "books"}], typesense={"nodes": [proxy.url]})
        alias = first.collection("books")
        physical = f"{alias}__v1"
        # The registry exists already (as it does after the first daemon ever ran): the only
        # POST /collections is then the one that creates __v1.
        first.http.post("/collections", json=registry_schema(REGISTRY))
        killer = KillAfter(point, f"/collections/{REGISTRY}/documents")
        proxy.after = killer.after
        daemon = start_daemon_logged(first, name="daemon")
        killer.pid = daemon.pid
        assert killer.fired.wait(90), read_daemon_log(first)
        assert daemon.wait(timeout=30) == -signal.SIGKILL

        entry = registry_entry(first, physical)
        assert entry is not None and entry["owner"] == identity(first)
        assert exists(first, physical) is (point == "created")
        assert alias_target(first, alias) is None
        if point == "registered":
            # Meanwhile, another database meeting that young registration is told whose it is.
            second = make_app(root, typesense, prefix, "b", BOOKS_B, range(1, 3))
            check = second.cli("check")
            assert check.returncode == 1
            assert refusal(first, second, alias) in check.stdout, check.stdout

        proxy.after = None
        restarted = start_daemon_logged(first, name="restarted")
        try:
            wait_for(lambda: first.documents("books") == expected_a(range(1, 31)), 90,
                     "every row after the restart")
        finally:
            assert stop_process(restarted) == 0, read_daemon_log(first, "restarted")[-3000:]
        assert alias_target(first, alias) == physical
        assert (registry_entry(first, physical) or {}).get("owner") == identity(first)
        assert first.cli("check").returncode == 0
        assert first.verify()["in_sync"] is True
    finally:
        proxy.stop()


def test_a_new_collection_is_written_without_looking_up_the_alias_it_just_set(
    apps: tuple[Path, str], typesense: LocalTypesense
) -> None:
    """A first start's first import uses the alias it has just set without looking it up again:
    a request fewer for each database of a fleet starting a hundred at once. The registry entry
    is still read before it is created: a create refused then (409) means another database won
    the race just now, and is refused at once (test_two_managing_hosts_started_at_once_one_wins),
    where an entry found before creating may be a stale one to take over."""
    root, prefix = apps
    proxy = FaultProxy(typesense.url).start()
    seen: list[tuple[str, str]] = []  # (method, decoded path): ids go fully percent-encoded
    proxy.before = lambda r: seen.append((r.method, unquote(r.path.split("?")[0])))
    try:
        app = make_app(root, typesense, prefix, "a", BOOKS_A, range(1, 31))
        app.write_config([{"table": "books"}], typesense={"nodes": [proxy.url]})
        alias = app.collection("books")
        physical = f"{alias}__v1"
        app.http.post("/collections", json=registry_schema(REGISTRY))  # there after a first run
        result = app.cli("run", "--once")
        assert result.returncode == 0, result.stderr
    finally:
        proxy.stop()
    entry = f"/collections/{REGISTRY}/documents/{physical}"
    alias_path = f"/aliases/{alias}"
    registered = seen.index(("POST", f"/collections/{REGISTRY}/documents"))
    assert seen.index(("GET", entry)) < registered, seen
    created = seen.index(("POST", "/collections"))
    switched = seen.index(("PUT", alias_path))
    assert registered < created < switched, seen
    assert seen.count(("GET", alias_path)) == 1 and seen.index(("GET", alias_path)) < switched
    imported = seen.index(("POST", f"/collections/{physical}/documents/import"))
    assert imported > switched, seen
    assert app.documents("books") == expected_a(range(1, 31))
    assert (registry_entry(app, physical) or {}).get("owner") == identity(app)
