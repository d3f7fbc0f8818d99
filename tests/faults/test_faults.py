"""Faults injected while a seeded random app workload writes: after each, the daemon converges
and the set check (every key ever written: final document == final row) finds nothing lost,
unexpected or stale. Each test records its figures (see conftest's terminal summary)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import wait_for as wait_until

from cdc_daemon.localserver import LocalTypesense, free_port

from .harness import API_KEY, HERE, LOG_TABLE, FaultWorld, kill9
from .proxy import FaultProxy, Gate, Request, Verdict

KILLS = 24


class Killer:
    """Arms the proxy to kill -9 one daemon at a chosen point of its HTTP traffic."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid: int | None = None
        self.mode = ""
        self.fired: Counter[str] = Counter()

    def arm(self, pid: int, mode: str) -> None:
        with self.lock:
            self.pid, self.mode = pid, mode

    def disarm(self) -> None:
        with self.lock:
            self.pid = None

    def _claim(self, mode: str) -> Callable[[], None]:
        pid, self.pid = self.pid, None
        assert pid is not None
        self.fired[mode] += 1
        return lambda: os.kill(pid, signal.SIGKILL)

    def after(self, request: Request, status: int) -> Verdict | None:
        with self.lock:
            if self.pid is None or status != 200:
                return None
            mode = self.mode
            if request.is_import and mode == "import-applied-no-answer":
                # Typesense applied the import; the daemon dies before it reads the answer.
                return Verdict("drop", then=self._claim(mode))
            if request.is_import and mode == "import-answered":
                # Dies right after the answer was sent: between import and ack.
                return Verdict(then=self._claim(mode))
            if request.method == "DELETE" and mode == "delete-applied-no-answer":
                return Verdict("drop", then=self._claim(mode))
        return None


def test_kill_9_at_random_points(make_world: Callable[..., FaultWorld], proxy: FaultProxy,
                                 seed: int) -> None:
    rng = random.Random(seed)
    world = make_world()
    world.setup(daemon_url=proxy.url, sync={"batch_size": 40})
    killer = Killer()
    proxy.after = killer.after
    world.start_workload(seed, rate=120)
    modes = ["import-applied-no-answer", "import-answered", "delete-applied-no-answer", "timer"]
    timer_kills = 0
    for round_number in range(KILLS):
        mode = modes[round_number % len(modes)] if round_number < len(modes) else rng.choice(modes)
        daemon = world.start_daemon()
        if mode == "timer":
            # A random point: start-up, a read, an import, an ack or idle.
            threading.Event().wait(rng.uniform(0.05, 1.5))
            kill9(daemon)
            timer_kills += 1
        else:
            killer.arm(daemon.pid, mode)
        try:
            wait_until(lambda d=daemon: d.poll() is not None, timeout=30,  # type: ignore[misc]
                       message=f"kill {round_number} ({mode})")
        finally:
            killer.disarm()
        assert daemon.returncode == -signal.SIGKILL, world.daemon_log()[-3000:]
    stats = world.finish_workload()
    started = time.monotonic()
    world.start_daemon()
    convergence, check = world.finish_converged(timeout=90, since=started)
    kills = sum(killer.fired.values()) + timer_kills
    figures = world.record(
        f"kill -9 (x{kills})", seed, check, convergence,
        kills=kills, kills_after_import_before_ack=killer.fired["import-applied-no-answer"]
        + killer.fired["import-answered"], kills_by_mode={**killer.fired, "timer": timer_kills},
        app_max_commit_ms=stats["max_commit_ms"],
    )
    assert kills >= 20 and figures["kills_after_import_before_ack"] >= 5, figures
    assert check.clean, check.summary()


def test_sigterm_mid_batch(make_world: Callable[..., FaultWorld], proxy: FaultProxy,
                           seed: int) -> None:
    """SIGTERM arrives while an import is in flight; the import then succeeds (slowly), fails
    with 503 or loses its connection. The daemon exits 0 each time, acknowledging only what
    Typesense accepted. Rollback-journal mode here (the other tests use WAL)."""
    rng = random.Random(seed)
    world = make_world(journal_mode="delete")
    world.setup(daemon_url=proxy.url, sync={"batch_size": 50}, timeout=3)
    outcomes = ["forward", "503", "drop", "slow"]
    lock = threading.Lock()
    armed: dict[str, object] = {}

    def before(request: Request) -> Verdict | None:
        with lock:
            pid = armed.pop("pid", None)
            outcome = str(armed.get("outcome"))
        if pid is None or not request.is_import:
            if pid is not None:
                with lock:
                    armed["pid"] = pid
            return None
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGTERM)  # the batch is in flight now
        if outcome == "forward":
            return Verdict(delay=0.2)
        if outcome == "slow":
            return Verdict(delay=2.0)
        return Verdict(outcome, delay=0.2)

    proxy.before = before
    world.start_workload(seed, rate=100)
    stop_seconds = []
    for round_number in range(8):
        outcome = outcomes[round_number % len(outcomes)]
        daemon = world.start_daemon()
        # Let it sync a little first, so the SIGTERM lands at a random batch.
        first = world.logged() - world.backlog()
        goal = first + rng.randrange(0, 100)
        wait_until(lambda g=goal, d=daemon: world.logged() - world.backlog() > g  # type: ignore[misc]
                   or d.poll() is not None,
                   timeout=30, message="some batches acknowledged")
        world.assert_daemon_alive()
        with lock:
            armed.update(pid=daemon.pid, outcome=outcome)
        signalled = time.monotonic()
        wait_until(lambda d=daemon: d.poll() is not None, timeout=30,  # type: ignore[misc]
                   message=f"exit after SIGTERM ({outcome})")
        stop_seconds.append(round(time.monotonic() - signalled, 2))
        assert "pid" not in armed, "SIGTERM was never sent during an import"
        assert daemon.returncode == 0, world.daemon_log()[-3000:]
    proxy.before = None
    world.finish_workload()
    started = time.monotonic()
    world.start_daemon()
    convergence, check = world.finish_converged(timeout=90, since=started)
    world.record("SIGTERM mid-batch (x8)", seed, check, convergence, sigterms=len(stop_seconds),
                 exit_codes="all 0", max_stop_s=max(stop_seconds), journal_mode="delete")
    assert max(stop_seconds) < 10, stop_seconds
    assert check.clean, check.summary()


def test_typesense_killed_and_restarted(make_world: Callable[..., FaultWorld],
                                        tmp_path: Path, seed: int) -> None:
    """A Typesense of its own, kill -9'd twice under writes and started again on the same port
    and data. The daemon keeps running, retries, and converges once the server is back."""
    server = LocalTypesense(tmp_path / "typesense", api_key=API_KEY)
    world = make_world(typesense_url=server.url)
    world.on_close(server.stop)
    server.start()
    world.setup(timeout=3)
    world.start_daemon()
    world.start_workload(seed, rate=100)
    outage_backlogs = []
    restarts = []
    for _ in range(2):
        acked = world.logged() - world.backlog()
        wait_until(lambda a=acked: world.logged() - world.backlog() > a + 200,  # type: ignore[misc]
                   timeout=60, message="syncing before the outage")
        failures = world.daemon_log().count('"sync failed"')
        server.kill()
        wait_until(lambda f=failures: world.daemon_log().count('"sync failed"')  # type: ignore[misc]
                   > f + 2, timeout=60, message="the daemon noticing the outage")
        before = world.backlog()
        wait_until(lambda b=before: world.backlog() > b + 100,  # type: ignore[misc]
                   timeout=60, message="changes piling up during the outage")
        world.assert_daemon_alive()
        outage_backlogs.append(world.backlog())
        began = time.monotonic()
        server.start()
        restarts.append(round(time.monotonic() - began, 2))
    world.finish_workload()
    started = time.monotonic()
    convergence, check = world.finish_converged(timeout=120, since=started)
    world.record("Typesense kill -9 + restart (x2)", seed, check, convergence,
                 backlog_during_outage=outage_backlogs, restart_s=restarts,
                 sync_failures=world.daemon_log().count('"sync failed"'))
    assert check.clean, check.summary()


def test_typesense_slow_503_and_dropped_connections(make_world: Callable[..., FaultWorld],
                                                    proxy: FaultProxy, seed: int) -> None:
    """Through the proxy: once a second, the next request fails in one of five ways, taken
    in turn: 503 before forwarding, connection dropped before forwarding, 503 after Typesense
    applied it, dropped after it applied, answered only after the daemon's 1 s timeout (and
    applied late). One request in twenty is slow (50-400 ms). The app writes until each failure
    happened three times; then the faults stop and the daemon must converge.

    (Faults are paced in time, not drawn per request: a batch takes many requests, and it is
    all or nothing, so at a per-request failure rate of 1 in 15 the daemon made no progress at
    all in 100 s. See docs/fault-suite.md.)"""
    rng = random.Random(seed)
    lock = threading.Lock()
    failures = ["503-before", "drop-before", "503-after", "drop-after", "timeout"]
    injected = dict.fromkeys(failures, 0)
    planned: dict[int, str] = {}
    turn = iter(range(10**9))
    next_failure = [time.monotonic() + 1.0]

    def before(request: Request) -> Verdict | None:
        with lock:
            failure = ""
            if time.monotonic() >= next_failure[0]:
                failure = failures[next(turn) % len(failures)]
                next_failure[0] = time.monotonic() + 1.0
                injected[failure] += 1
                planned[id(request)] = failure
            pause = rng.uniform(0.05, 0.4) if rng.random() < 0.05 else 0.0
        if failure == "503-before":
            return Verdict("503")
        if failure == "drop-before":
            return Verdict("drop")
        if failure == "timeout":
            return Verdict(delay=1.6)  # the client gives up at 1 s; the request still applies
        return Verdict(delay=pause)

    def after(request: Request, status: int) -> Verdict | None:
        with lock:
            failure = planned.pop(id(request), "")
        if failure == "503-after":
            return Verdict("503")  # applied, but the daemon is told it failed
        if failure == "drop-after":
            return Verdict("drop")  # applied, and the daemon never hears back
        return None

    world = make_world()
    world.setup(daemon_url=proxy.url, sync={"batch_size": 50}, timeout=1)
    world.start_daemon()
    proxy.before, proxy.after = before, after
    world.start_workload(seed, rate=100)
    wait_until(lambda: min(injected.values()) >= 3, timeout=120,
               message="every kind of failure injected three times")
    proxy.before = proxy.after = None
    world.finish_workload()
    world.assert_daemon_alive()
    with lock:
        requests, by_kind = proxy.counts.requests, dict(proxy.counts.by_kind)
    started = time.monotonic()
    convergence, check = world.finish_converged(timeout=90, since=started)
    world.record("Typesense slow / 503 / dropped", seed, check, convergence,
                 requests_during_faults=requests, injected=injected,
                 slow_requests=proxy.counts.delayed, requests_by_kind=by_kind,
                 sync_failures=world.daemon_log().count('"sync failed"'),
                 timeouts=world.daemon_log().count("timed out"))
    assert check.clean, check.summary()


def test_rejected_documents_are_dead_lettered_then_retried(
        make_world: Callable[..., FaultWorld], seed: int) -> None:
    """Some rows hold text in an INTEGER column: Typesense rejects those documents (400 per
    line). They are retried, then dead-lettered; every other change converges meanwhile.
    `dead-letters retry` while the rows are still bad sends them round again (and back to the
    dead letters: never dropped). After the app fixes the rows and `dead-letters retry`,
    everything converges and the dead letters are empty."""
    world = make_world()
    world.setup(sync={"batch_size": 50, "max_attempts": 3})
    world.start_daemon()
    world.start_workload(seed, rate=150, max_transactions=600, bad_fraction=0.08)
    stats = world.finish_workload(stop=False)

    def bad_rows() -> set[str]:
        conn = sqlite3.connect(world.db, timeout=30)
        try:
            ids = conn.execute("SELECT id FROM items WHERE typeof(qty) = 'text'").fetchall()
        finally:
            conn.close()
        return {f"items:{i}" for (i,) in ids}

    started = time.monotonic()
    convergence, check = world.wait_converged(
        timeout=90, since=started, excuse=lambda: world.dead_letters() & bad_rows())
    dead, bad = world.dead_letters(), bad_rows()
    assert bad and dead == bad, (sorted(dead ^ bad), world.daemon_log()[-3000:])
    letters = world.cli("dead-letters", "list", "--json", check=True).stdout.splitlines()
    assert len(letters) == len(dead)
    assert all("400" in json.loads(line)["error"] for line in letters), letters[:3]
    rejected = check

    again = world.cli("dead-letters", "retry", check=True).stdout.strip()
    assert again == f"retrying {len(dead)} dead letters", again
    assert world.backlog() >= len(dead)
    world.wait_converged(timeout=60, excuse=lambda: world.dead_letters() & bad_rows())
    assert world.dead_letters() == bad, "rejected again, they must be dead letters again"

    fixed = world.app_sql("UPDATE items SET qty = length(qty) WHERE typeof(qty) = 'text'")
    retried = world.cli("dead-letters", "retry", check=True).stdout.strip()
    started = time.monotonic()
    convergence_fixed, check = world.finish_converged(timeout=60, since=started)
    assert world.dead_letters() == set()
    world.record("rejected documents", seed, check, convergence_fixed,
                 rejected_keys=len(bad), dead_lettered_while_rejected=len(dead),
                 convergence_with_rejections_s=round(convergence, 2),
                 other_keys_clean_while_rejected=rejected.clean,
                 retry_while_bad=again, rows_fixed=fixed,
                 dead_letters_retry=retried, app_committed_total=stats["committed"])
    assert check.clean, check.summary()


def test_app_holds_its_lock_for_seconds(make_world: Callable[..., FaultWorld],
                                        proxy: FaultProxy, seed: int) -> None:
    """Just when the daemon wants to acknowledge a batch, the app keeps a write transaction
    open for 2.5 s, then 7 s (past the daemon's 5 s busy_timeout) while it goes on writing;
    then, with no other app writer, a read transaction for 7 s (rollback-journal mode: the
    daemon's COMMIT cannot get its exclusive lock and gives up with SQLITE_BUSY). The daemon
    waits or backs off and retries, never exits, loses nothing, never leaves the app locked out;
    and it never makes the app wait anywhere near the app's own 5 s busy timeout (a probe
    writer with sqlite3's default timeout=5 must not fail)."""
    world = make_world(journal_mode="delete")
    gate = Gate()
    proxy.before = gate.before
    world.setup(daemon_url=proxy.url, sync={"batch_size": 50})
    world.start_daemon()
    app = world.start_workload(seed, rate=100)
    lock_waits = []
    for mode, hold in (("write", 2.5), ("write", 7.0), ("read", 7.0)):
        acked = world.logged() - world.backlog()
        wait_until(lambda a=acked: world.logged() - world.backlog() > a + 100,  # type: ignore[misc]
                   timeout=60, message="syncing between holds")
        gate.close()  # the next batch stops between read and import...
        wait_until(lambda: gate.waiting >= 1, timeout=30, message="a batch in flight")
        if mode == "read":  # nobody else holds RESERVED: the daemon's COMMIT meets the reader
            app_stats = world.finish_workload(app)
        holder = subprocess.Popen([sys.executable, str(HERE / "lock_holder.py"), str(world.db),
                                   str(hold), mode], stdout=subprocess.PIPE, text=True)
        world.processes.append(holder)
        assert holder.stdout is not None
        line = holder.stdout.readline()  # ...while the app takes the lock
        assert line, f"the lock holder failed (exit {holder.wait()})"
        locked = json.loads(line)
        lock_waits.append(locked["wait_ms"])
        gate.open()  # the import is answered: the daemon's ack meets the app's lock
        assert holder.wait(timeout=hold + 30) == 0
        world.assert_daemon_alive()
    busy = world.daemon_log().count("DatabaseBusy")
    assert busy >= 2, "the 7 s holds never made the daemon's acknowledgement give up and retry"
    probe = world.start_workload(seed + 1, rate=150, max_transactions=300, busy_timeout=5,
                                 name="probe")
    probe_stats = world.finish_workload(probe, stop=False)
    world.assert_daemon_alive()
    started = time.monotonic()
    convergence, check = world.finish_converged(timeout=60, since=started)
    world.record("app holds its lock (write 2.5 s, 7 s; read 7 s)", seed, check, convergence,
                 daemon_busy_retries=busy, app_lock_wait_ms=lock_waits,
                 probe_failed=probe_stats["failed"],
                 probe_max_commit_ms=probe_stats["max_commit_ms"],
                 probe_p99_commit_ms=probe_stats["p99_commit_ms"],
                 app_max_commit_ms=app_stats["max_commit_ms"], journal_mode="delete")
    assert probe_stats["failed"] == 0 and probe_stats["max_commit_ms"] < 5000, probe_stats
    assert app_stats["failed"] == 0, app_stats
    assert max(lock_waits) < 5000, lock_waits
    assert check.clean, check.summary()


def _triggers_metric(port: int) -> dict[str, float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    values = {}
    for line in text.splitlines():
        if line.startswith("cdc_triggers_installed{"):
            table = line.split('table="', 1)[1].split('"', 1)[0]
            values[table] = float(line.rsplit(" ", 1)[1])
    return values


def test_triggers_dropped_by_an_app_migration(make_world: Callable[..., FaultWorld],
                                              seed: int) -> None:
    """The app rebuilds `users` the usual way (create new, copy, drop old, rename) while writing:
    the DROP takes the daemon's triggers with it, so later writes to users are not logged.
    `check` exits 1 naming the trigger, cdc_triggers_installed{table="users"} drops to 0, verify
    finds the differences; `install` + `verify --repair` converge."""
    port = free_port()
    world = make_world()
    world.setup(metrics=f"127.0.0.1:{port}")
    world.start_daemon()
    app = world.start_workload(seed, rate=100)
    every = {"items": 1.0, "stock": 1.0, "users": 1.0, "tags": 1.0}
    wait_until(lambda: _triggers_metric(port) == every,
               timeout=30, message="metrics with every trigger installed")
    wait_until(lambda: world.logged() - world.backlog() > 200, timeout=60, message="syncing")
    conn = sqlite3.connect(world.db, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE users_new (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE,"
                     " name TEXT, score INTEGER NOT NULL)")
        conn.execute("INSERT INTO users_new SELECT * FROM users")
        conn.execute("DROP TABLE users")
        conn.execute("ALTER TABLE users_new RENAME TO users")
        conn.execute("COMMIT")
    finally:
        conn.close()
    migrated = time.monotonic()
    metric = wait_until(lambda: (m := _triggers_metric(port)).get("users") == 0.0 and m,
                        timeout=30, message='cdc_triggers_installed{table="users"} 0')
    detected_s = time.monotonic() - migrated
    assert metric == {"items": 1.0, "stock": 1.0, "users": 0.0, "tags": 1.0}, metric
    check_run = world.cli("check")
    assert check_run.returncode == 1, check_run.stdout + check_run.stderr
    assert "'change_log:users:insert' is missing" in check_run.stdout, check_run.stdout
    problems = check_run.stdout.strip().splitlines()
    assert all("'users'" in line for line in problems), problems
    committed = world.transactions_started()
    wait_until(lambda: world.transactions_started() > committed + 150, timeout=30,
               message="app writes while the triggers are gone")
    world.finish_workload(app)
    wait_until(lambda: world.backlog() == 0, timeout=60, message="logged changes synced")
    gap = world.set_check()
    rc, report = world.verify_report()
    assert rc == 1 and not report["tables"]["users"]["in_sync"], report
    assert report["tables"]["items"]["in_sync"] and report["tables"]["stock"]["in_sync"], report
    verify_found = report["missing"] + report["extra"] + report["stale"]
    assert verify_found == len(gap.lost) + len(gap.unexpected) + len(gap.stale) > 0, (
        report, gap.summary())

    world.cli("install", check=True)
    wait_until(lambda: _triggers_metric(port).get("users") == 1.0, timeout=30,
               message="the metric back to 1 after install")
    assert world.cli("check").returncode == 0
    started = time.monotonic()
    rc, repaired = world.verify_report("--repair")
    assert rc == 0, repaired
    convergence, check = world.finish_converged(timeout=60, since=started)
    world.record("triggers dropped by a migration", seed, check, convergence,
                 detected_by_metric_s=round(detected_s, 2), check_problems=len(problems),
                 differences_found=verify_found, missed_lost=len(gap.lost),
                 missed_unexpected=len(gap.unexpected), missed_stale=len(gap.stale),
                 repaired=repaired.get("repaired"))
    assert check.clean, check.summary()


def test_log_emptied_by_hand(make_world: Callable[..., FaultWorld], seed: int) -> None:
    """Someone runs DELETE FROM change_log while changes are pending. Those changes never
    reach Typesense by the log; `verify` reports exactly the differences the set check sees, and
    `verify --repair` converges."""
    world = make_world()
    world.setup()
    world.start_daemon()
    app = world.start_workload(seed, rate=100)
    wait_until(lambda: world.logged() - world.backlog() > 200, timeout=60, message="syncing")
    assert world.stop_daemon() == 0
    wait_until(lambda: world.backlog() >= 300, timeout=60, message="a backlog to lose")
    world.removed_by_hand = world.app_sql('DELETE FROM "change_log"')
    world.finish_workload(app)
    world.start_daemon()
    wait_until(lambda: world.backlog() == 0, timeout=60, message="what is left synced")
    gap = world.set_check()
    rc, report = world.verify_report()
    assert rc == 1 and not report["in_sync"], report
    assert (report["missing"], report["extra"], report["stale"]) == (
        len(gap.lost), len(gap.unexpected), len(gap.stale)), (report, gap.summary())
    started = time.monotonic()
    rc, repaired = world.verify_report("--repair")
    assert rc == 0, repaired
    convergence, check = world.finish_converged(timeout=60, since=started)
    world.record("change log emptied by hand", seed, check, convergence,
                 removed_by_hand=world.removed_by_hand, verify_missing=len(gap.lost),
                 verify_extra=len(gap.unexpected), verify_stale=len(gap.stale),
                 repaired=repaired.get("repaired"))
    assert check.clean, check.summary()


def test_log_emptied_while_a_batch_is_in_flight(make_world: Callable[..., FaultWorld],
                                                proxy: FaultProxy, seed: int) -> None:
    """The log is emptied by hand while the daemon holds a batch at its import; the app goes on
    and its new changes take the emptied log's seqs again (no AUTOINCREMENT). The held batch's
    acknowledgement must not delete them: every change made after the emptying reaches
    Typesense without any repair."""
    world = make_world()
    gate = Gate()
    proxy.before = gate.before
    world.setup(daemon_url=proxy.url, sync={"batch_size": 50})
    world.start_daemon()
    gate.close()
    world.finish_workload(world.start_workload(seed, rate=200, max_transactions=150), stop=False)
    wait_until(lambda: gate.waiting >= 1, timeout=30, message="a batch held before its import")
    world.removed_by_hand = world.app_sql(f'DELETE FROM "{LOG_TABLE}"')
    world.finish_workload(world.start_workload(seed + 1, rate=200, max_transactions=150),
                          stop=False)
    changed_after = world.logged_keys()
    assert world.scalar(f'SELECT MIN(seq) FROM "{LOG_TABLE}"') == 1  # the seqs are used again
    gate.open()
    started = time.monotonic()
    wait_until(lambda: world.backlog() == 0, timeout=60, message="the new changes synced")
    convergence = time.monotonic() - started
    gap = world.set_check()
    missed = sorted(set(gap.lost + gap.unexpected + gap.stale) & changed_after)
    assert not missed, f"changes made after the emptying never reached Typesense: {missed[:10]}"
    refused = world.daemon_log().count("deleted by something else")
    assert refused >= 1
    rc, repaired = world.verify_report("--repair")  # what the emptying itself lost
    assert rc == 0, repaired
    _, check = world.finish_converged(timeout=60)
    world.record("change log emptied during a batch", seed, check, convergence,
                 removed_by_hand=world.removed_by_hand, changed_after=len(changed_after),
                 acknowledgements_refused=refused, lost_to_the_emptying=len(gap.lost),
                 stale_after_the_emptying=len(gap.stale))
    assert check.clean, check.summary()


def _fill(path: Path) -> int:
    """Write zeros until the file system refuses (ENOSPC); returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 1):
            chunk = b"\0" * size
            try:
                while True:
                    written += os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return written


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_disk_full_while_acknowledging(make_world: Callable[..., FaultWorld], proxy: FaultProxy,
                                       tmp_path: Path, seed: int, journal_mode: str) -> None:
    """The database lives on a 16 MB tmpfs. A batch is held between read and import; the WAL
    (in WAL mode) is checkpointed and truncated, the file system filled to the last byte; then
    the import is answered, so the acknowledgement (a write) fails with SQLITE_FULL, again and
    again. The daemon keeps running, acknowledges nothing, loses nothing, and converges once
    space is freed. Needs root for the mount (CAP_SYS_ADMIN): it fails, never skips, without."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                           capture_output=True, text=True)
    assert mount.returncode == 0, (
        f"cannot mount a tmpfs for the disk-full test: {mount.stderr.strip()} (needs root)")
    world = make_world(db_dir=disk, journal_mode=journal_mode)
    world.on_close(lambda: _unmount(disk))
    gate = Gate()
    proxy.before = gate.before
    world.setup(daemon_url=proxy.url, sync={"batch_size": 50})
    world.start_daemon()
    world.finish_workload(world.start_workload(seed, rate=150, max_transactions=300), stop=False)
    gate.close()
    world.finish_workload(world.start_workload(seed + 1, rate=200, max_transactions=200),
                          stop=False)
    wait_until(lambda: gate.waiting >= 1, timeout=30, message="a batch held before its import")
    if journal_mode == "wal":  # an empty WAL: the acknowledgement needs new space
        conn = sqlite3.connect(world.db, timeout=30, isolation_level=None)
        try:
            busy, _frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        assert busy == 0 and os.path.getsize(str(world.db) + "-wal") == 0
    pending = world.backlog()
    filler = disk / "filler"
    filled = _fill(filler)
    assert os.statvfs(disk).f_bavail == 0
    try:
        world.app_sql("UPDATE stock SET qty = qty + 1")
        app_refused = ""
    except sqlite3.OperationalError as exc:
        app_refused = str(exc)
    assert "full" in app_refused, "the app could still write: the disk is not full"
    gate.open()
    wait_until(lambda: world.daemon_log().count("disk full") >= 3, timeout=60,
               message="acknowledgements failing with disk full, and retried")
    world.assert_daemon_alive()
    assert world.backlog() == pending  # nothing acknowledged, nothing lost
    ack_failures = world.daemon_log().count("disk full")
    filler.unlink()
    freed = time.monotonic()
    convergence, check = world.finish_converged(timeout=60, since=freed)
    world.record(f"disk full while acknowledging ({journal_mode})", seed, check, convergence,
                 tmpfs="16m", filler_bytes=filled, pending_when_full=pending,
                 ack_failures=ack_failures, app_write_when_full=app_refused)
    assert check.clean, check.summary()
