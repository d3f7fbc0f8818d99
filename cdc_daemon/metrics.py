"""Prometheus metrics. Lag, backlog, dead letters and trigger presence are read from the database
at scrape time, on a connection of their own, so a hung or dead loop still shows growing lag."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cdc_daemon.database import Database, TableInfo
from cdc_daemon.errors import CdcError, ConfigError
from cdc_daemon.kms import KeyStats
from cdc_daemon.log_schema import LogTables
from cdc_daemon.log_status import LogStatus
from cdc_daemon.sync import BatchReport
from cdc_daemon.triggers import installed_triggers, wanted_triggers

# No *_created series: they double the output and nobody alerts on them.
disable_created_metrics()  # type: ignore[no-untyped-call]

ERROR_KINDS = (
    "document",
    "target_unavailable",
    "auth_error",
    "target_error",
    "database_error",
    "database_busy",
    "collection_missing",
    "schema_mismatch",
    "kms_unavailable",
)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _LogCollector(Collector):
    """Reads the change log and the triggers when Prometheus scrapes, on its own connection."""

    def __init__(
        self,
        database: Path,
        names: LogTables,
        tables: Callable[[], list[TableInfo]],
        joined: Callable[[], Mapping[str, Sequence[str]]],
    ):
        self._path = database
        self._names = names
        self._tables = tables
        self._joined = joined  # the dependency tables (depends_on): their triggers too
        self._db: Database | None = None
        # Scrapes run on the HTTP server's threads, maybe two at once (two Prometheus servers):
        # one read transaction at a time on the shared connection.
        self._lock = threading.Lock()

    def _read(
        self, tables: list[TableInfo], joined: Mapping[str, Sequence[str]]
    ) -> tuple[dict[str, Any], dict[str, bool]]:
        """The log's summary, and per table whether its triggers are all present and current."""
        if self._db is None:
            self._db = Database(self._path)
        status = LogStatus(self._db, self._names).summary([])
        present = installed_triggers(self._db, self._names)
        current = {
            table: all(present.get(name, ("", ""))[1] == sql for name, sql in wanted.items())
            for table, wanted in wanted_triggers(self._db, self._names, tables, joined)
        }
        return status, current

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cdc_database_up", "1 when the log could be read at scrape")
        tables, joined = self._tables(), self._joined()
        with self._lock:
            try:
                status, current = self._read(tables, joined)
            except CdcError:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                status = None
        if status is None:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        per_table = status["tables"]
        lag = GaugeMetricFamily("cdc_lag_seconds", "Age of the oldest pending change; 0 when none")
        lag.add_metric([], status["oldest_age_seconds"] or 0.0)
        backlog = GaugeMetricFamily("cdc_backlog_changes", "Pending changes in the log")
        backlog.add_metric([], status["backlog"])
        dead = GaugeMetricFamily("cdc_dead_letters", "Changes in the dead-letter store")
        dead.add_metric([], status["dead_letters"])
        table_backlog = GaugeMetricFamily(
            "cdc_table_backlog_changes", "Pending changes per table", labels=["table"]
        )
        table_dead = GaugeMetricFamily(
            "cdc_table_dead_letters", "Dead letters per table", labels=["table"]
        )
        triggers = GaugeMetricFamily(
            "cdc_triggers_installed",
            "1 when every trigger of the table is present and current",
            labels=["table"],
        )
        for info in tables:
            entry = per_table.get(info.name, {})
            table_backlog.add_metric([info.name], entry.get("backlog", 0))
            table_dead.add_metric([info.name], entry.get("dead_letters", 0))
        for table in joined:  # a dependency table's backlog: its rows' changes not expanded yet
            if table not in {info.name for info in tables}:
                table_backlog.add_metric([table], per_table.get(table, {}).get("backlog", 0))
        for table, ok in current.items():
            triggers.add_metric([table], 1 if ok else 0)
        yield from (up, lag, backlog, table_backlog, dead, table_dead, triggers)


@dataclass
class DatabaseState:
    """One database of a `databases:` daemon, as its metrics see it (fleet.py)."""

    name: str
    path: Path
    state: str  # syncing, failing, not_installed, locked, starting, stopped
    changed: bool  # written since the last scrape (its log is read again only then)
    triggers_missing: frozenset[str] = frozenset()  # tables, as its loop last found them


LAG_PER_DATABASE = 60.0  # a database lagging more gets its own cdc_database_lag_seconds series


class FleetLogCollector(Collector):
    """The log metrics of every database of a `databases:` daemon, summed (lag: the oldest), so
    dashboards and alerts written for one database keep working; per-database series only where
    an operator must know which database: cdc_database_problem{database,state} while one is not
    syncing, cdc_database_lag_seconds{database} while one lags over LAG_PER_DATABASE. Each
    database's log is read on a connection opened for the scrape, and only when the file was
    written since the last scrape or its log was not empty (an unchanged file: an unchanged log)."""

    def __init__(
        self, databases: Callable[[], list[DatabaseState]], names: LogTables, tables: list[str]
    ) -> None:
        self._databases = databases
        self._names = names
        self._tables = tables
        self._last: dict[Path, dict[str, Any] | None] = {}  # a summary; None: unreadable
        self._lock = threading.Lock()

    def _summary(self, database: DatabaseState) -> dict[str, Any] | None:
        known = self._last.get(database.path, None)
        quiet = known is not None and not known["backlog"] and not known["dead_letters"]
        if database.path in self._last and quiet and not database.changed:
            return known
        try:
            db = Database(database.path)
            try:
                summary: dict[str, Any] | None = LogStatus(db, self._names).summary([])
            finally:
                db.close()
        except CdcError:
            summary = None
        self._last[database.path] = summary
        return summary

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            databases = self._databases()
            summaries = {d.name: self._summary(d) for d in databases if d.state == "syncing"}
            for gone in set(self._last) - {d.path for d in databases}:
                del self._last[gone]
        up = GaugeMetricFamily("cdc_database_up", "1 when every database's log could be read")
        up.add_metric([], 0 if None in summaries.values() else 1)
        readable = [s for s in summaries.values() if s is not None]
        lag = GaugeMetricFamily("cdc_lag_seconds", "Age of the oldest pending change; 0 when none")
        lag.add_metric([], max((s["oldest_age_seconds"] or 0.0 for s in readable), default=0.0))
        backlog = GaugeMetricFamily("cdc_backlog_changes", "Pending changes in the logs")
        backlog.add_metric([], sum(s["backlog"] for s in readable))
        dead = GaugeMetricFamily("cdc_dead_letters", "Changes in the dead-letter stores")
        dead.add_metric([], sum(s["dead_letters"] for s in readable))
        table_backlog = GaugeMetricFamily(
            "cdc_table_backlog_changes", "Pending changes per table", labels=["table"]
        )
        table_dead = GaugeMetricFamily(
            "cdc_table_dead_letters", "Dead letters per table", labels=["table"]
        )
        for table in self._tables:
            per_table = [s["tables"].get(table, {}) for s in readable]
            table_backlog.add_metric([table], sum(t.get("backlog", 0) for t in per_table))
            table_dead.add_metric([table], sum(t.get("dead_letters", 0) for t in per_table))
        triggers = GaugeMetricFamily(
            "cdc_triggers_installed",
            "1 when every trigger of the table is present and current in every database",
            labels=["table"],
        )
        for table in self._tables:
            ok = not any(table in d.triggers_missing for d in databases)
            triggers.add_metric([table], 1 if ok else 0)
        states = GaugeMetricFamily("cdc_databases", "Databases by state", labels=["state"])
        counts: dict[str, int] = {}
        for database in databases:
            counts[database.state] = counts.get(database.state, 0) + 1
        for state in ("syncing", "starting", "failing", "not_installed", "locked", "stopped"):
            states.add_metric([state], counts.get(state, 0))
        problem = GaugeMetricFamily(
            "cdc_database_problem",
            "1 for each database that is not syncing, by its state (unreadable: its log)",
            labels=["database", "state"],
        )
        for database in databases:
            if database.state not in ("syncing", "starting"):
                problem.add_metric([database.name, database.state], 1)
            elif summaries.get(database.name, {}) is None:
                problem.add_metric([database.name, "unreadable"], 1)
            elif database.triggers_missing:
                problem.add_metric([database.name, "triggers_missing"], 1)
        lagging = GaugeMetricFamily(
            "cdc_database_lag_seconds",
            f"Age of the oldest pending change of a database lagging over {LAG_PER_DATABASE:g} s",
            labels=["database"],
        )
        for name, summary in summaries.items():
            if summary is not None and (summary["oldest_age_seconds"] or 0) > LAG_PER_DATABASE:
                lagging.add_metric([name], summary["oldest_age_seconds"])
        yield from (up, lag, backlog, table_backlog, dead, table_dead, triggers)
        yield from (states, problem, lagging)


class _NodeCollector(Collector):
    """cdc_typesense_node_up{node}: each Typesense node's health as the sink sees it, at scrape."""

    def __init__(self, health: Callable[[], dict[str, bool]]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "cdc_typesense_node_up",
            "1 while the node answers (its last request or /health probe succeeded)",
            labels=["node"],
        )
        for node, up in self._health().items():
            gauge.add_metric([node], 1 if up else 0)
        yield gauge


class _KeyCollector(Collector):
    """The Typesense key's source (kms.py), read at scrape: fetches from the KMS by reason and
    result, whether the KMS answered last time, and the age of the key in use. Never the key."""

    def __init__(self, stats: Callable[[], KeyStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        fetches = CounterMetricFamily(
            "cdc_kms_fetches",
            "Key fetches from the KMS by reason (start, interval, rejected) and result",
            labels=["reason", "result"],
        )
        for reason in ("start", "interval", "rejected"):
            for result in ("ok", "error"):
                fetches.add_metric([reason, result], stats.fetches.get((reason, result), 0))
        yield fetches
        if stats.source != "kms":
            return
        up = GaugeMetricFamily("cdc_kms_up", "1 when the last key fetch from the KMS succeeded")
        up.add_metric([], 1 if stats.kms_up else 0)
        yield up
        if stats.key_age is not None:
            age = GaugeMetricFamily(
                "cdc_api_key_age_seconds", "Seconds since the key in use came from the KMS"
            )
            age.add_metric([], stats.key_age)
            yield age


class Metrics:
    """The daemon's metrics; `record_*` methods are called by the loop."""

    def __init__(
        self,
        database: Path | None,
        names: LogTables,
        tables: Callable[[], list[TableInfo]],
        joined: Callable[[], Mapping[str, Sequence[str]]] = dict,
        log_collector: Collector | None = None,
        table_names: Sequence[str] = (),
    ) -> None:
        """`tables`: the configured tables now; `joined`: the dependency tables now, with the
        join columns their triggers log (LoopSettings.joined). A `databases:` daemon gives its
        `log_collector` (FleetLogCollector) and `table_names` instead of a database."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.synced = Counter(
            "cdc_changes_synced", "Changes acknowledged by Typesense", ["table", "op"], registry=r
        )
        self.errors = Counter("cdc_sync_errors", "Failures by kind", ["kind"], registry=r)
        self.dead_lettered = Counter(
            "cdc_dead_lettered", "Changes moved to the dead letters", ["table"], registry=r
        )
        self.batch_duration = Histogram(
            "cdc_batch_duration_seconds",
            "One batch, read to ack",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.last_success = Gauge(
            "cdc_last_success_timestamp_seconds",
            "Unix time of the last loop iteration without error",
            registry=r,
        )
        self.typesense_up = Gauge(
            "cdc_typesense_up", "1 when the last call to Typesense succeeded", registry=r
        )
        self.started = Gauge("cdc_start_time_seconds", "Unix time the daemon started", registry=r)
        self.table_skipped = Gauge(
            "cdc_table_skipped",
            "1 while the table can't be read (dropped, renamed, a where that fails) and is"
            " skipped; its changes wait in the log",
            ["table"],
            registry=r,
        )
        self._skipped: dict[Path | None, set[str]] = {}  # by database: skipped tables
        self.started.set_to_current_time()
        for kind in ERROR_KINDS:  # present from the start, so rate() and alerts see a zero
            self.errors.labels(kind)
        for table in [info.name for info in tables()] or list(table_names):
            self.dead_lettered.labels(table)
            for op in ("upsert", "delete"):
                self.synced.labels(table, op)
        if log_collector is None:
            assert database is not None
            log_collector = _LogCollector(database, names, tables, joined)
        r.register(log_collector)
        self._record_lock = threading.Lock()  # a fleet's workers record at the same time
        self._server: WSGIServer | None = None
        self.port = 0

    def watch_nodes(self, health: Callable[[], dict[str, bool]]) -> None:
        """Serve per-node health (`TypesenseSink.node_health`), read at scrape."""
        self.registry.register(_NodeCollector(health))

    def watch_keys(self, stats: Callable[[], KeyStats]) -> None:
        """Serve the key source's fetch counts and state (kms.py), read at scrape."""
        self.registry.register(_KeyCollector(stats))

    def record_batch(self, report: BatchReport, database: Path | None = None) -> None:
        for table, count in report.upserted.items():
            self.synced.labels(table, "upsert").inc(count)
        for table, count in report.deleted.items():
            self.synced.labels(table, "delete").inc(count)
        if report.failed:
            self.errors.labels("document").inc(report.failed)
        for table, count in report.dead_by_table.items():
            self.dead_lettered.labels(table).inc(count)
        if report.entries:
            self.batch_duration.observe(report.duration)
        self._skip(database, set(report.skipped))

    def forget_database(self, database: Path) -> None:
        """A `databases:` daemon's database gone: the tables it skipped are no longer skipped
        because of it."""
        self._skip(database, None)

    def _skip(self, database: Path | None, tables: set[str] | None) -> None:
        """`cdc_table_skipped{table}` is 1 while any database skips the table."""
        with self._record_lock:
            before = set().union(*self._skipped.values())
            if tables is None:
                self._skipped.pop(database, None)
            else:
                self._skipped[database] = tables
            now = set().union(*self._skipped.values())
        for table in before - now:
            self.table_skipped.labels(table).set(0)
        for table in now:
            self.table_skipped.labels(table).set(1)

    def record_success(self, typesense_up: bool) -> None:
        self.last_success.set_to_current_time()
        self.typesense_up.set(1 if typesense_up else 0)

    def record_failure(self, kind: str, typesense_up: bool) -> None:
        self.errors.labels(kind).inc()
        self.typesense_up.set(1 if typesense_up else 0)

    def serve(self, listen: str) -> None:
        host, port = parse_listen(listen, "metrics.listen")
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise CdcError(f"metrics.listen: cannot listen on {listen}: {exc.strerror}") from None
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def parse_listen(listen: str, key: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{key}: {listen!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def error_kind(exc: BaseException) -> str:
    """A low-cardinality label for an exception: its class name in snake case."""
    name = type(exc).__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
