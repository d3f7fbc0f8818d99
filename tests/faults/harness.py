"""The fault suite's world (support's Env, extended): an app database with three tables, a
config for the CLI (straight to Typesense) and one for the daemon (maybe through a FaultProxy),
the workload process, daemons started and stopped by the test, and the set check that decides
whether anything was lost.

Every process started here is tracked and stopped in `close()`, also when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from support import API_KEY, Env, launcher, wait_for

from cdc_daemon.config import load_config
from cdc_daemon.documents import build_document, row_is_live
from cdc_daemon.errors import DocumentError
from cdc_daemon.row_keys import document_id, log_key_to_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.wiring import open_tables

from .workload import DDL, TABLES

HERE = Path(__file__).parent
WORKLOAD = HERE / "workload.py"  # run as a script, in its own process

FIGURES: list[dict[str, Any]] = []  # every fault's figures, for the terminal summary
LOG_TABLE = "change_log"


def _normalize(value: Any) -> Any:
    """JSON numbers come back from Typesense as ints or floats: compare 3.0 and 3 as equal."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


@dataclass
class SetCheck:
    """Every key ever written, its final row against its final document."""

    keys: int = 0
    rows: int = 0
    documents: int = 0
    lost: list[str] = field(default_factory=list)  # a row without its document
    unexpected: list[str] = field(default_factory=list)  # a document without its row
    stale: list[str] = field(default_factory=list)  # a document that differs from its row
    excused: list[str] = field(default_factory=list)  # dead-lettered, rejected rows
    unknown_rows: list[str] = field(default_factory=list)  # rows the workload never wrote

    @property
    def clean(self) -> bool:
        return not (self.lost or self.unexpected or self.stale or self.unknown_rows)

    def summary(self) -> dict[str, Any]:
        return {
            "keys": self.keys, "rows": self.rows, "documents": self.documents,
            "lost": len(self.lost), "unexpected": len(self.unexpected), "stale": len(self.stale),
            "excused": len(self.excused),
            "examples": {"lost": self.lost[:5], "unexpected": self.unexpected[:5],
                         "stale": self.stale[:5], "unknown_rows": self.unknown_rows[:5]},
        }


class FaultWorld(Env):
    """One test's database, configs, processes and figures. `config_path` (Env's) is the CLI's
    config, straight to Typesense; the daemon's may go through a proxy."""

    def __init__(self, tmp: Path, typesense_url: str, name: str, *,
                 db_dir: Path | None = None, journal_mode: str = "wal") -> None:
        super().__init__(tmp, typesense_url, name, db=(db_dir or tmp) / "app.db")
        self.name = name
        self.journal_mode = journal_mode
        self.daemon_config_path = tmp / "daemon.yaml"  # the daemon's: maybe through a proxy
        self.keys_path = tmp / "keys.jsonl"
        self.processes: list[subprocess.Popen[str]] = []
        self.daemon: subprocess.Popen[str] | None = None
        self.daemon_starts = 0
        self.workload: subprocess.Popen[str] | None = None
        self.workload_stats: list[dict[str, Any]] = []
        self.removed_by_hand = 0
        self._mappings: dict[str, TableMapping] | None = None
        self._cleanups: list[Callable[[], None]] = []

    # -- setup --------------------------------------------------------------------------------

    def _config(self, nodes: list[str], sync: dict[str, Any], timeout: float,
                metrics: str | None) -> dict[str, Any]:
        config: dict[str, Any] = {
            "database": str(self.db),
            "typesense": {"nodes": nodes, "api_key": API_KEY, "timeout": timeout},
            "sync": {"batch_size": 100, "poll_interval": 0.2, "max_attempts": 3, **sync},
            "logging": {"format": "json", "level": "info"},
            "tables": [{"table": t, "collection": self.collection(t)} for t in TABLES],
        }
        if metrics:
            config["metrics"] = {"listen": metrics}
        return config

    def setup(self, *, daemon_url: str | None = None, sync: dict[str, Any] | None = None,
              timeout: float = 10, metrics: str | None = None) -> None:
        """Create the app's tables (as the app), write both configs, `install`."""
        self.db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db, isolation_level=None)
        try:
            mode = conn.execute(f"PRAGMA journal_mode={self.journal_mode}").fetchone()[0]
            assert mode == self.journal_mode, mode
            for ddl in DDL:
                conn.execute(ddl)
        finally:
            conn.close()
        sync = sync or {}
        self.config_path.write_text(yaml.safe_dump(
            self._config([self.typesense_url], sync, timeout, None)))
        self.daemon_config_path.write_text(yaml.safe_dump(
            self._config([daemon_url or self.typesense_url], sync, timeout, metrics)))
        self.cli("install", check=True)
        self.app_sql(  # the log has no AUTOINCREMENT: count what is ever logged here
            "CREATE TABLE harness_logged (n INTEGER NOT NULL)",
            "INSERT INTO harness_logged VALUES (0)",
            f'CREATE TRIGGER harness_logged AFTER INSERT ON "{LOG_TABLE}"'
            " BEGIN UPDATE harness_logged SET n = n + 1; END",
        )
        config = load_config(self.config_path)
        db, _infos, mappings = open_tables(config)
        db.close()
        self._mappings = mappings
        self._cleanups.append(self._drop_collections)

    def _drop_collections(self) -> None:
        for table in TABLES:
            self.drop_collection(table)

    def on_close(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    # -- the CLI and the daemon ---------------------------------------------------------------

    def start_daemon(self) -> subprocess.Popen[str]:
        assert self.daemon is None or self.daemon.poll() is not None, "a daemon is running"
        self.daemon_starts += 1
        with open(self.tmp / "daemon.log", "a") as err:
            err.write(f'{{"event": "== start {self.daemon_starts} =="}}\n')
        process = launcher.start_logged("run", config=self.daemon_config_path, cwd=self.tmp,
                                        log=self.tmp / "daemon.log", out=self.tmp / "daemon.out")
        self.processes.append(process)
        self.daemon = process
        return process

    def daemon_log(self) -> str:
        path = self.tmp / "daemon.log"
        return path.read_text() if path.exists() else ""

    def assert_daemon_alive(self) -> None:
        assert self.daemon is not None and self.daemon.poll() is None, (
            f"the daemon exited with {self.daemon and self.daemon.returncode}:\n"
            + self.daemon_log()[-4000:])

    def stop_daemon(self, timeout: float = 15) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.daemon is not None
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=timeout)
        return int(self.daemon.returncode)

    # -- the app ------------------------------------------------------------------------------

    def start_workload(self, seed: int, rate: float = 100.0, max_transactions: int = 10**9,
                       bad_fraction: float = 0.0, busy_timeout: float = 30.0,
                       name: str = "workload") -> subprocess.Popen[str]:
        stats = self.tmp / f"{name}-stats-{len(self.workload_stats)}.json"
        with open(self.tmp / f"{name}.log", "a") as err:
            process = subprocess.Popen(
                [sys.executable, str(WORKLOAD), str(self.db), "--seed", str(seed),
                 "--keys", str(self.keys_path), "--stats", str(stats), "--rate", str(rate),
                 "--max-transactions", str(max_transactions), "--bad-fraction",
                 str(bad_fraction), "--timeout", str(busy_timeout)],
                stdout=subprocess.DEVNULL, stderr=err, text=True,
            )
        process.stats_path = stats  # type: ignore[attr-defined]
        self.processes.append(process)
        self.workload = process
        return process

    def finish_workload(self, process: subprocess.Popen[str] | None = None,
                        stop: bool = True) -> dict[str, Any]:
        """Stop the workload (SIGTERM: it ends its transaction) and return its stats."""
        process = process or self.workload
        assert process is not None
        if stop and process.poll() is None:
            process.send_signal(signal.SIGTERM)
        rc = process.wait(timeout=60)
        assert rc == 0, (self.tmp / "workload.log").read_text()[-3000:]
        stats: dict[str, Any] = json.loads(process.stats_path.read_text())  # type: ignore[attr-defined]
        self.workload_stats.append(stats)
        return stats

    def transactions_started(self) -> int:
        """Transactions the workloads started so far (a line each in the keys file)."""
        if not self.keys_path.exists():
            return 0
        with open(self.keys_path, "rb") as keys:
            return sum(1 for _ in keys)

    def app_sql(self, *statements: str) -> int:
        """Each statement in its own transaction, as the app (stdlib sqlite3); rows changed."""
        conn = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        changed = 0
        try:
            for sql in statements:
                conn.execute("BEGIN IMMEDIATE")
                changed += conn.execute(sql).rowcount
                conn.execute("COMMIT")
        finally:
            conn.close()
        return changed

    def scalar(self, sql: str) -> Any:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            row = conn.execute(sql).fetchone()
            return None if row is None else row[0]
        finally:
            conn.close()

    def backlog(self) -> int:
        return int(self.scalar(f'SELECT COUNT(*) FROM "{LOG_TABLE}"'))

    def logged(self) -> int:
        """Log entries ever written (counted by the trigger setup() adds)."""
        return int(self.scalar("SELECT n FROM harness_logged"))

    def dead_letters(self) -> set[str]:
        return self._labels(f'SELECT tbl, pk FROM "{LOG_TABLE}_dead"')

    def logged_keys(self) -> set[str]:
        """The keys in the log now, as the set check's "table:id" labels."""
        return self._labels(f'SELECT tbl, pk FROM "{LOG_TABLE}"')

    def _labels(self, select: str) -> set[str]:
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            rows = conn.execute(select).fetchall()
        finally:
            conn.close()
        mappings = self.mappings()
        return {f"{t}:{document_id(log_key_to_key(pk, len(mappings[t].key)))}" for t, pk in rows}

    # -- the set check ------------------------------------------------------------------------

    def mappings(self) -> dict[str, TableMapping]:
        assert self._mappings is not None
        return self._mappings

    def universe(self) -> dict[str, set[str]]:
        """Every key the workload (or the test) ever wrote, as document ids per table."""
        keys: dict[str, set[str]] = {t: set() for t in TABLES}
        if self.keys_path.exists():
            for line in self.keys_path.read_text().splitlines():
                for table, key in json.loads(line) if line.strip() else []:
                    keys[table].add(document_id(tuple(key) if isinstance(key, list) else (key,)))
        return keys

    def expected(self, table: str) -> dict[str, dict[str, Any]]:
        mapping = self.mappings()[table]
        columns = ", ".join(mapping.select_list())
        conn = sqlite3.connect(self.db, timeout=30)
        try:
            rows = conn.execute(f'SELECT {columns} FROM "{table}"').fetchall()
        finally:
            conn.close()
        docs: dict[str, dict[str, Any]] = {}
        for row in rows:
            if not row_is_live(mapping, row):
                continue
            try:
                doc = build_document(mapping, row)
            except DocumentError as exc:  # never for this workload's values
                raise AssertionError(f"{table} row {row!r}: {exc}") from None
            docs[doc["id"]] = doc
        return docs

    def set_check(self, excuse: set[str] | None = None) -> SetCheck:
        """Rows against documents for every key ever written (and any document at all).
        `excuse`: "table:id" of dead-lettered keys whose rows Typesense rejects."""
        check = SetCheck()
        universe = self.universe()
        for table in TABLES:
            expected, actual = self.expected(table), self.documents(table)
            check.keys += len(universe[table])
            check.rows += len(expected)
            check.documents += len(actual)
            for doc_id in sorted(universe[table] | set(expected) | set(actual)):
                label = f"{table}:{doc_id}"
                want, have = expected.get(doc_id), actual.get(doc_id)
                if want is not None and doc_id not in universe[table]:
                    check.unknown_rows.append(label)
                if want is not None and excuse and label in excuse:
                    check.excused.append(label)
                elif want is not None and have is None:
                    check.lost.append(label)
                elif want is None and have is not None:
                    check.unexpected.append(label)
                elif want is not None and _normalize(want) != _normalize(have):
                    check.stale.append(label)
        return check

    def wait_converged(self, timeout: float = 90, excuse: Callable[[], set[str]] | None = None,
                       since: float | None = None) -> tuple[float, SetCheck]:
        """Wait until the log is empty and the set check is clean; returns (seconds, check).
        On timeout, fails with the last check's figures."""
        started = since if since is not None else time.monotonic()
        last: list[SetCheck] = []

        def converged() -> SetCheck | None:
            if self.backlog() != 0:
                return None
            last[:] = [self.set_check(excuse() if excuse else None)]
            return last[0] if last[0].clean and self.backlog() == 0 else None

        try:
            check = wait_for(converged, timeout, "convergence", interval=0.2)
        except AssertionError:
            detail = last[0].summary() if last else "backlog never drained"
            raise AssertionError(
                f"no convergence after {timeout}s: backlog {self.backlog()}, {detail}\n"
                + self.daemon_log()[-3000:]) from None
        return time.monotonic() - started, check

    def finish_converged(self, timeout: float, since: float | None = None
                         ) -> tuple[float, SetCheck]:
        """Every fault test's ending: wait until converged, the daemon still running, `verify`
        in sync, then a clean stop (exit 0). Returns wait_converged()'s (seconds, check)."""
        convergence, check = self.wait_converged(timeout=timeout, since=since)
        self.assert_daemon_alive()
        rc, report = self.verify_report()
        assert rc == 0 and report["in_sync"], report
        assert self.stop_daemon() == 0
        return convergence, check

    # -- figures ------------------------------------------------------------------------------

    def record(self, fault: str, seed: int, check: SetCheck, convergence_s: float,
               **extra: Any) -> dict[str, Any]:
        pending, dead = self.backlog(), len(self.dead_letters())
        logged = self.logged()
        figures: dict[str, Any] = {
            "fault": fault,
            "seed": seed,
            "app_transactions": sum(s["attempted"] for s in self.workload_stats),
            "app_committed": sum(s["committed"] for s in self.workload_stats),
            "app_failed": sum(s["failed"] for s in self.workload_stats),
            "keys": check.keys,
            "rows": check.rows,
            "logged": logged,
            "acknowledged": logged - pending - dead - self.removed_by_hand,
            "lost": len(check.lost),
            "unexpected": len(check.unexpected),
            "stale": len(check.stale),
            "dead_lettered": dead,
            "convergence_s": round(convergence_s, 2),
            "daemon_starts": self.daemon_starts,
            **extra,
        }
        (self.tmp / "figures.json").write_text(json.dumps(figures, indent=2))
        FIGURES.append(figures)
        print("FAULT FIGURES " + json.dumps(figures))
        return figures

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        errors = []
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(exc)
        super().close()
        if errors:
            raise errors[0]


def kill9(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
