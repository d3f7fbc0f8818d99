"""kill -9 at each step of a rebuild behind the alias, then a restart: the rebuild settles.

A rebuild (here: a field's facet changed in the config, then SIGHUP) creates `<alias>__v2`,
records it in the state table, backfills it through the log, records the collection it retires,
switches the alias and drops `<alias>__v1`. The daemon, talking to Typesense through the
FaultProxy, is killed at one of those steps (or in the middle of the backfill; see CASES for the
modes: before the request is sent, after Typesense applied it but before the answer, right after
the answer), while the app keeps writing; then it is started again. One case ("rebuild-recorded")
also writes the state rows the daemon writes right after creating `__v2` (the rebuild and its
backfill, in one transaction), for the crash after that local step, which the proxy can't reach.
Throughout, searches through the alias never lose the live collection (GET /collections/<alias>
never 404, never 0 documents); in the end the alias points to `__v2` with the new schema,
`verify` is in sync, `__v1` is gone and the state table holds no `rebuild:`/`retire:` rows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support import app_write, wait_for

from cdc_daemon.localserver import LocalTypesense

from .harness import API_KEY, LOG_TABLE, FaultWorld
from .proxy import FaultProxy, Request, Verdict

TABLE = "items"  # the workload's table with an INTEGER key; the one rebuilt here
ROWS = 3000
BATCH = 200  # ROWS / BATCH = 15 backfill batches into __v2
MID_BACKFILL_IMPORT = 7  # point (e): killed after the 7th import into __v2
WRITE_PAUSE = 0.05  # seconds between the app's transactions during the test


def _path(request: Request) -> str:
    return request.path.split("?", 1)[0]


def _is_import_into(request: Request, collection: str) -> bool:
    path = f"/collections/{collection}/documents/import"
    return request.method == "POST" and _path(request) == path


# kill point -> (does this request match, which matching request kills)
KILL_POINTS: dict[str, tuple[Callable[[Request, str], bool], int]] = {
    "create-v2": (lambda r, alias: r.method == "POST" and _path(r) == "/collections", 1),
    # killed at create-v2, then the state rows the daemon writes next (one transaction) are
    # written as it would: the crash after that local step, before any import
    "rebuild-recorded": (lambda r, alias: r.method == "POST" and _path(r) == "/collections", 1),
    "first-import-v2": (lambda r, alias: _is_import_into(r, f"{alias}__v2"), 1),
    "mid-backfill": (lambda r, alias: _is_import_into(r, f"{alias}__v2"), MID_BACKFILL_IMPORT),
    "alias-switch": (lambda r, alias: r.method == "PUT" and _path(r) == f"/aliases/{alias}", 1),
    "drop-v1": (lambda r, alias: r.method == "DELETE" and _path(r) == f"/collections/{alias}__v1",
                1),
}

# (kill point, mode) -> where Typesense stands right after the kill: (alias target, versions).
# Modes: "answered" (killed right after the answer was sent: the daemon may get one local step
# further), "unanswered" (Typesense applied it; killed before the answer was sent), "unsent"
# (killed before the request reached Typesense).
CASES: dict[tuple[str, str], tuple[str, list[str]]] = {
    ("create-v2", "answered"): ("v1", ["v1", "v2"]),
    ("create-v2", "unanswered"): ("v1", ["v1", "v2"]),
    ("rebuild-recorded", "unanswered"): ("v1", ["v1", "v2"]),
    ("first-import-v2", "answered"): ("v1", ["v1", "v2"]),
    ("first-import-v2", "unanswered"): ("v1", ["v1", "v2"]),
    ("mid-backfill", "answered"): ("v1", ["v1", "v2"]),
    ("mid-backfill", "unanswered"): ("v1", ["v1", "v2"]),
    ("alias-switch", "unsent"): ("v1", ["v1", "v2"]),
    ("alias-switch", "answered"): ("v2", ["v1", "v2"]),
    ("alias-switch", "unanswered"): ("v2", ["v1", "v2"]),
    ("drop-v1", "answered"): ("v2", ["v2"]),
    ("drop-v1", "unanswered"): ("v2", ["v2"]),
}


class KillAt:
    """Proxy hooks that SIGKILL the armed daemon at the n-th request matching its kill point:
    before it is forwarded (`unsent`), or once Typesense answered it 2xx, right after the answer
    was sent (`answered`) or instead of sending it (`unanswered`: the connection is dropped after
    the kill). Also counts the imports into __v2."""

    def __init__(self, point: str, alias: str, mode: str) -> None:
        self.matches, self.nth = KILL_POINTS[point]
        self.alias = alias
        self.mode = mode
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.seen = 0
        self.v2_imports = 0
        self.fired = threading.Event()

    def arm(self, pid: int) -> None:
        with self.lock:
            self.pid, self.seen = pid, 0

    def _claim(self, request: Request) -> int | None:
        """The armed pid when this request is the one to kill at (disarms), else None."""
        if self.pid is None or not self.matches(request, self.alias):
            return None
        self.seen += 1
        if self.seen < self.nth:
            return None
        pid, self.pid = self.pid, None
        return pid

    def before(self, request: Request) -> Verdict | None:
        if self.mode != "unsent":
            return None
        with self.lock:
            pid = self._claim(request)
        return None if pid is None else Verdict("drop", then=lambda: self._kill(pid))

    def after(self, request: Request, status: int) -> Verdict | None:
        with self.lock:
            if _is_import_into(request, f"{self.alias}__v2"):
                self.v2_imports += 1
            if self.mode == "unsent" or status // 100 != 2:
                return None
            pid = self._claim(request)
        if pid is None:
            return None
        return Verdict("forward" if self.mode == "answered" else "drop",
                       then=lambda: self._kill(pid))

    def _kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        self.fired.set()


class AliasWatch(threading.Thread):
    """GET /collections/<alias> (straight to Typesense) every 50 ms: every answer's status and
    the fewest documents the live collection ever had."""

    def __init__(self, url: str, alias: str) -> None:
        super().__init__(daemon=True)
        self.url, self.alias = url, alias
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.fewest: int | None = None
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers={"X-TYPESENSE-API-KEY": API_KEY},
                          timeout=30) as http:
            while not self.halt.wait(0.05):
                try:
                    response = http.get(f"/collections/{self.alias}")
                except httpx.HTTPError as exc:  # a failed look is a gap too
                    self.errors.append(repr(exc))
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    count = int(response.json()["num_documents"])
                    self.fewest = count if self.fewest is None else min(self.fewest, count)

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)


class AppWriter(threading.Thread):
    """The app: small transactions (an insert, an update, a delete of `items` rows) through
    conftest.app_write (its own stdlib sqlite3 process), every key noted in the set check's
    keys file before the write."""

    def __init__(self, world: FaultWorld, seed: int) -> None:
        super().__init__(daemon=True)
        self.world = world
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.next_id = ROWS + 1
        self.committed = 0
        self.deleted = 0
        self.failure: BaseException | None = None

    def write_one(self) -> None:
        new, self.next_id = self.next_id, self.next_id + 1
        updated, gone = self.rng.randrange(1, ROWS + 1), self.rng.randrange(1, ROWS + 1)
        with open(self.world.keys_path, "a") as keys:
            keys.write(json.dumps([[TABLE, new], [TABLE, updated], [TABLE, gone]]) + "\n")
        app_write(self.world.db, [[
            ("INSERT INTO items (id, name, qty, price, note) VALUES (?, ?, ?, ?, 'new')",
             [new, f"new {new}", new, 1.5]),
            ("UPDATE items SET name = name || ' +', qty = qty + 1 WHERE id = ?", [updated]),
            ("DELETE FROM items WHERE id = ?", [gone]),
        ]])
        with self.lock:
            self.committed += 1
            self.deleted += 1  # at most one row per transaction

    def run(self) -> None:
        try:
            while not self.halt.wait(WRITE_PAUSE):
                self.write_one()
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def count(self) -> int:
        with self.lock:
            return self.committed

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)
        assert self.failure is None, self.failure


def _seed_rows(world: FaultWorld) -> None:
    """ROWS items rows in one app transaction, their keys in the set check's keys file."""
    with open(world.keys_path, "a") as keys:
        keys.write(json.dumps([[TABLE, i] for i in range(1, ROWS + 1)]) + "\n")
    app_write(world.db, [[(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        " INSERT INTO items (id, name, qty, price, note) SELECT i, 'item ' || i, i, i * 0.5,"
        " NULL FROM n", [ROWS],
    )]])


def _facet_name(path: Path) -> None:
    """The config change that needs a rebuild: `items.name` becomes a facet."""
    config = yaml.safe_load(path.read_text())
    for table in config["tables"]:
        if table["table"] == TABLE:
            table["fields"] = {"name": {"facet": True}}
    path.write_text(yaml.safe_dump(config))


def _snapshot(world: FaultWorld, alias: str) -> dict[str, Any]:
    """Where the rebuild stands in Typesense and in the state table."""
    target = world.http.get(f"/aliases/{alias}")
    versions = sorted(c["name"] for c in world.http.get("/collections").json()
                      if c["name"].startswith(f"{alias}__v"))
    return {
        "alias_to": target.json()["collection_name"] if target.status_code == 200 else None,
        "versions": versions,
        "state": _rebuild_state(world),
    }


def _where(snapshot: dict[str, Any], alias: str) -> tuple[str, list[str]]:
    """A snapshot's alias target and collection versions, as "v1", "v2"."""
    def short(name: str | None) -> str:
        return str(name).removeprefix(f"{alias}__")

    return short(snapshot["alias_to"]), [short(v) for v in snapshot["versions"]]


def _rebuild_finished(world: FaultWorld, alias: str) -> bool:
    world.assert_daemon_alive()  # a restarted daemon that gave up fails here, with its log
    return _snapshot(world, alias)["alias_to"] == f"{alias}__v2" and not _rebuild_state(world)


def _rebuild_state(world: FaultWorld) -> dict[str, str]:
    """The state table's rows for this rebuild (both gone once it is over)."""
    found = world.scalar(
        f"SELECT json_group_object(name, value) FROM \"{LOG_TABLE}_state\""
        " WHERE name LIKE 'rebuild:%' OR name LIKE 'retire:%'")
    return dict(json.loads(found or "{}"))


def _record_rebuild(world: FaultWorld, collection: str) -> None:
    """Write the state rows the daemon writes right after creating the rebuild's collection, in
    one transaction as it does: the rebuild, and its backfill from the first key. (Written in
    two, a crash between them once left a rebuild without a backfill: the alias was switched to
    a collection holding 10 of 3,000 documents.)"""
    world.app_sql(f"INSERT OR REPLACE INTO \"{LOG_TABLE}_state\" (name, value)"
                  f" VALUES ('rebuild:{TABLE}', '{collection}'), ('backfill:{TABLE}', '0')")


def _live_documents(world: FaultWorld, alias: str) -> int:
    """Documents behind the alias; 0 when it answers 404 (its collection is gone)."""
    response = world.http.get(f"/collections/{alias}")
    return int(response.json()["num_documents"]) if response.status_code == 200 else 0


def _name_is_facet(world: FaultWorld, alias: str) -> bool:
    fields = {f["name"]: f for f in world.http.get(f"/collections/{alias}").json()["fields"]}
    return bool(fields["name"].get("facet"))


@pytest.fixture
def world(tmp_path: Path, typesense: LocalTypesense, request: pytest.FixtureRequest
          ) -> Iterator[FaultWorld]:
    params = request.node.callspec.params
    name = f"rebuild_crash_{params['point']}_{params['mode']}".replace("-", "_")
    world = FaultWorld(tmp_path, typesense.url, name)
    yield world
    world.close()


@pytest.mark.parametrize(("point", "mode"), list(CASES), ids=[f"{p}-{m}" for p, m in CASES])
def test_kill_9_at_each_rebuild_step(world: FaultWorld, proxy: FaultProxy, seed: int,
                                     point: str, mode: str) -> None:
    world.setup(daemon_url=proxy.url, sync={"batch_size": BATCH})
    alias = world.collection(TABLE)

    def drop_versions() -> None:  # whatever a failed run left behind
        for name in _snapshot(world, alias)["versions"]:
            world.http.delete(f"/collections/{name}")

    world.on_close(drop_versions)
    _seed_rows(world)
    killer = KillAt(point, alias, mode)
    proxy.before, proxy.after = killer.before, killer.after
    daemon = world.start_daemon()
    wait_for(lambda: world.backlog() == 0 and len(world.documents(TABLE)) == ROWS, timeout=60,
             message="initial sync")
    assert _snapshot(world, alias)["alias_to"] == f"{alias}__v1"

    writer = AppWriter(world, seed)
    watch = AliasWatch(world.typesense_url, alias)
    watch.start()
    try:
        for _ in range(2):  # changes queued when the rebuild starts
            writer.write_one()
        _facet_name(world.daemon_config_path)
        _facet_name(world.config_path)  # the CLI's (verify) too
        killer.arm(daemon.pid)
        writer.start()
        daemon.send_signal(signal.SIGHUP)
        wait_for(lambda: daemon.poll() is not None, timeout=30,
                 message=f"the kill at {point} (the daemon still runs: the step never came)")
        killed_at = time.monotonic()
        assert daemon.returncode == -signal.SIGKILL and killer.fired.is_set(), (
            daemon.returncode, world.daemon_log()[-3000:])
        at_kill = _snapshot(world, alias)
        assert _where(at_kill, alias) == CASES[point, mode], at_kill  # the kill came at that step
        if point == "rebuild-recorded":  # the daemon's next step after creating __v2
            _record_rebuild(world, f"{alias}__v2")
        v2_imports_before_kill = killer.v2_imports
        writes_before_kill = writer.count()
        wait_for(lambda: writer.count() >= writes_before_kill + 2, timeout=30,
                 message="app writes while the daemon is down")
        world.start_daemon()
        restarted_at, restarted = time.monotonic(), writer.count()
        wait_for(lambda: writer.count() >= restarted + 3, timeout=30,
                 message="app writes after the restart")
        writer.stop()
        wait_for(lambda: _rebuild_finished(world, alias), timeout=30,
                 message="the rebuild to finish after the restart")
        live = _live_documents(world, alias)  # fail fast: a switch to a half-filled collection
        assert live >= ROWS - writer.deleted, (
            f"after the restart the alias has {live} documents (0: its collection is gone); the"
            f" table has about {ROWS} rows: {_snapshot(world, alias)}")
        convergence, check = world.wait_converged(timeout=60, since=killed_at)
        restart_to_converged = time.monotonic() - restarted_at
    finally:
        watch.stop()
        if writer.is_alive():
            writer.halt.set()
            writer.join(timeout=60)
    world.assert_daemon_alive()
    end = _snapshot(world, alias)
    rc, report = world.verify_report()
    assert world.stop_daemon() == 0
    world.workload_stats.append({"attempted": writer.committed, "committed": writer.committed,
                                 "failed": 0})
    world.record(
        f"kill -9 in a rebuild: {point}, {mode}", seed, check, convergence,
        kill_point=point, kill_mode=mode, table_rows=ROWS, batch_size=BATCH,
        v2_imports_before_kill=v2_imports_before_kill,
        app_writes_before_kill=writes_before_kill,
        app_writes_after_kill=writer.committed - writes_before_kill,
        restart_to_converged_s=round(restart_to_converged, 2), at_kill=at_kill, at_end=end,
        alias_polls=sum(watch.statuses.values()), alias_fewest_documents=watch.fewest,
    )
    # searches never lost the live collection
    assert not watch.errors and set(watch.statuses) == {200}, (watch.statuses, watch.errors[:3])
    assert watch.fewest is not None and watch.fewest >= ROWS - writer.deleted, watch.fewest
    # settled: the new schema behind the alias, nothing left over, in sync
    assert end == {"alias_to": f"{alias}__v2", "versions": [f"{alias}__v2"], "state": {}}, end
    assert _name_is_facet(world, alias)
    assert rc == 0 and report["in_sync"], report
    assert (report["missing"], report["extra"], report["stale"]) == (0, 0, 0), report
    assert check.clean, check.summary()
