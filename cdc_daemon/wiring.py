"""The composition root: with cli.py, the only module that reads the Config and builds objects.

Like Litestream's cmd/litestream/main.go: the core takes plain values (the first section here
turns config sections into them and puts config key paths in front of the errors the core
raises), and everything the commands and the daemon run is built and wired here:

- `Services` (runtime.py): the API key source and the Typesense client, long-lived;
- the `Runtime`, the tables half: database, mappings, change log, collections, syncer;
- for `run`: the Daemon with a `RuntimeFactory` (new tables halves on an app schema change or a
  replaced file, a `Reload` on SIGHUP), metrics, the systemd notifier, the admin API over
  `DaemonControls`, and the signal handlers (signals.py);
- for the other commands: the few objects each one uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cdc_daemon.backfill import Backfill
from cdc_daemon.changelog import ChangeLog
from cdc_daemon.config import (
    Config,
    DependencyConfig,
    JwtConfig,
    KmsConfig,
    TableConfig,
    TypesenseConfig,
    read_api_key,
    refuse_restart_only,
)
from cdc_daemon.config import config_changes as changed_keys
from cdc_daemon.control import Controls
from cdc_daemon.daemon import Daemon, Reload
from cdc_daemon.database import Database, ProcessorLock, TableInfo
from cdc_daemon.database_files import database_files, folder_of, matches
from cdc_daemon.dead_letters import DeadLetters
from cdc_daemon.dependencies import (
    DependencyPath,
    Hop,
    join_columns,
    path_problem,
    path_text,
    with_comparisons,
)
from cdc_daemon.drain import Drainer
from cdc_daemon.errors import CdcError, ConfigError, DatabaseError
from cdc_daemon.evolution import CollectionManager, FollowLookups
from cdc_daemon.heartbeat import HeartbeatTransport, on_this_thread
from cdc_daemon.kms import KMS_TIMEOUT, ApiKeys, KmsKey, KmsSource, StaticKey
from cdc_daemon.log_schema import LogTables
from cdc_daemon.log_status import LogStatus
from cdc_daemon.logs import configure_logging
from cdc_daemon.metrics import FleetLogCollector, Metrics
from cdc_daemon.notify import Notifier
from cdc_daemon.ownership import NameKeys
from cdc_daemon.preflight import row_query_problem
from cdc_daemon.runtime import LoopSettings, Runtime, Services
from cdc_daemon.schema import (
    VIEW_FIX,
    MappingOptions,
    TableMapping,
    build_mapping,
    shared_field_conflict,
)
from cdc_daemon.signals import handle_signals
from cdc_daemon.sink import Sink
from cdc_daemon.startup_checks import Problem, daemon_running, listen_problem
from cdc_daemon.status import sync_status
from cdc_daemon.sync import Syncer
from cdc_daemon.triggers import require_installed
from cdc_daemon.typesense import TypesenseSink
from cdc_daemon.verify import Verifier, verify_tables

if TYPE_CHECKING:  # imported where used: most commands never load the web stack or PyJWT
    from cdc_daemon.admin import AdminApi, AdminServer
    from cdc_daemon.auth import JwtVerifier
    from cdc_daemon.fleet import Fleet

log = structlog.get_logger("cdc_daemon")

# -- a table -----------------------------------------------------------------------------------


def mapping_options(table: TableConfig, collection_prefix: str = "") -> MappingOptions:
    """A `tables[N]` entry as schema.py's options; `collection_prefix` (typesense's) goes in
    front of the collection's name."""
    return MappingOptions(
        collection=collection_prefix + table.collection_name,
        include=tuple(table.include) if table.include is not None else None,
        exclude=tuple(table.exclude),
        rename=dict(table.rename),
        fields={column: o.model_dump(exclude_none=True) for column, o in table.fields.items()},
        default_sorting_field=table.default_sorting_field,
        where=table.where,
        soft_delete=table.soft_delete,
        id_prefix=table.id_prefix or "",
        manage_collection=table.manage_collection,
    )


def mapping_from_config(
    info: TableInfo, table: TableConfig, entry: str | None = None, collection_prefix: str = ""
) -> TableMapping:
    """The table's mapping; a ConfigError names the bad key under `entry` (`tables[N]`; without
    one, relative to the table entry)."""
    try:
        return build_mapping(info, mapping_options(table, collection_prefix))
    except ConfigError as exc:
        raise (exc.within(entry) if entry is not None else exc) from None


# -- the Typesense API key -----------------------------------------------------------------------


def kms_key(config: KmsConfig, timeout: float = KMS_TIMEOUT) -> KmsKey:
    source = KmsSource(
        url=config.url,
        key_name=config.key_name,
        token_file=config.token_file,
        refresh_interval=config.refresh_interval,
        name="typesense.kms",
    )
    return KmsKey(source, timeout=timeout)


def open_api_keys(config: TypesenseConfig, timeout: float | None = None) -> ApiKeys:
    """The key source the `typesense` section names; a static key is read now (ConfigError if
    it can't be), a KMS key is fetched on first use."""
    if config.kms is not None:
        return kms_key(config.kms, timeout=min(KMS_TIMEOUT, timeout or config.timeout))
    return StaticKey(read_api_key(config))


# -- the admin API's tokens ----------------------------------------------------------------------


def jwt_verifier(config: JwtConfig, environ: Mapping[str, str] | None = None) -> JwtVerifier:
    """The verifier `admin.jwt` asks for, its secret or key file(s) read now; a ConfigError
    names the key (`admin.jwt.secret_env`)."""
    from cdc_daemon.auth import JwtVerifier, TokenRules, hmac_secret, load_jwks, load_public_key

    rules = TokenRules(
        algorithms=tuple(config.algorithms),
        issuer=config.issuer,
        audience=config.audience,
        roles_claim=config.roles_claim,
    )
    try:
        if config.secret_env is not None:
            return JwtVerifier(rules, secret=hmac_secret(config.secret_env, environ))
        if config.public_key_file is not None:
            key = load_public_key(config.public_key_file, rules.algorithms)
            return JwtVerifier(rules, public_key=key)
        assert config.jwks_file is not None  # config.py: exactly one source
        return JwtVerifier(rules, jwks=load_jwks(config.jwks_file, rules.algorithms))
    except ConfigError as exc:
        raise exc.within("admin.jwt") from None


def admin_verifier(config: Config) -> JwtVerifier | None:
    """The admin API's verifier; None without a jwt section (loopback only, no tokens)."""
    jwt = config.admin.jwt
    return jwt_verifier(jwt) if jwt is not None else None


# -- what `run` refuses at start -----------------------------------------------------------------


def startup_problems(config: Config) -> list[Problem]:
    """What `run` checks when it starts, beyond the database and Typesense: the admin API's JWT
    key (config errors, exit 2) and whether the metrics and admin addresses are free (exit 1;
    not while a daemon runs: then they are its own)."""
    problems: list[Problem] = []
    admin = config.admin
    if admin.listen and admin.jwt is not None:
        try:
            jwt_verifier(admin.jwt)
        except CdcError as exc:
            problems.append(Problem(str(exc), exc.exit_code))
    bind = not daemon_running(config.path)
    for key, listen in (("metrics.listen", config.metrics.listen), ("admin.listen", admin.listen)):
        problem = listen_problem(key, listen, bind) if listen else None
        if problem is not None:
            problems.append(problem)
    return problems


# -- config → names and settings ----------------------------------------------------------------


def log_tables(config: Config) -> LogTables:
    return LogTables(config.log_table)


def table_entries(config: Config) -> dict[str, str]:
    """Each configured table's config key path (`tables[N]`), the prefix of its errors. The one
    place that numbers the entries: a table skipped as broken must not shift the others'."""
    return {table.table: f"tables[{i}]" for i, table in enumerate(config.tables)}


def dependency_paths(config: Config) -> tuple[DependencyPath, ...]:
    """Every `depends_on` chain of the configured tables, one path per dependency entry (from
    the configured table down to it), in config order."""
    paths: list[DependencyPath] = []

    def walk(
        root: str, parent: str, hops: tuple[Hop, ...], entries: list[DependencyConfig], key: str
    ) -> None:
        for j, dependency in enumerate(entries):
            hop = Hop(parent, tuple(dependency.join), dependency.table,
                      tuple(dependency.join.values()))
            path = DependencyPath(root, (*hops, hop), f"{key}.depends_on[{j}]")
            paths.append(path)
            walk(root, dependency.table, path.hops, dependency.depends_on, path.entry)

    for entry, table in zip(table_entries(config).values(), config.tables, strict=True):
        walk(table.table, table.table, (), table.depends_on, entry)
    return tuple(paths)


def loop_settings(config: Config) -> LoopSettings:
    return LoopSettings(
        tables=tuple(table.table for table in config.tables),
        joined=join_columns(dependency_paths(config)),
        poll_interval=config.sync.poll_interval,
        reinstall_triggers=config.sync.reinstall_triggers,
        max_attempts=config.sync.max_attempts,
    )


def loop_stale_after(config: Config) -> float:
    """Seconds without a loop iteration before /healthz says 503."""
    return max(60.0, 3 * config.sync.poll_interval, 4 * config.typesense.timeout)


# -- the tables ----------------------------------------------------------------------------------


def open_tables(
    config: Config, broken: dict[str, str] | None = None
) -> tuple[Database, list[TableInfo], dict[str, TableMapping]]:
    """Open the database and check every configured table before any other SQL runs: it exists,
    its mapping builds, and the query its rows are read with (columns, `where`, `soft_delete`)
    compiles. A table that fails is bad config (ConfigError naming the key), unless `broken` is
    given (the running daemon, `status`): then it is left out, its one-line problem recorded
    there by table name, and the other tables are returned."""
    db = Database(config.path)
    try:
        if config.log_table in {t.table for t in config.tables}:
            raise ConfigError(f"log_table: {config.log_table!r} is also a configured table")
        infos = _existing_tables(db, config, broken)
        mappings = _usable_mappings(db, config, {info.name: info for info in infos}, broken)
        infos = [info for info in infos if info.name in mappings]
    except BaseException:
        db.close()
        raise
    return db, infos, mappings


def _existing_tables(
    db: Database, config: Config, broken: dict[str, str] | None
) -> list[TableInfo]:
    infos: list[TableInfo] = []
    for entry, table in zip(table_entries(config).values(), config.tables, strict=True):
        try:
            if not db.table_exists(table.table):
                raise ConfigError(_not_a_table(db, table.table, config), key=f"{entry}.table")
            infos.append(db.table_info(table.table))
        except ConfigError as exc:
            if broken is None:
                raise
            broken[table.table] = str(exc)
    return infos


def _not_a_table(db: Database, name: str, config: Config) -> str:
    """Why a configured table is not a table: a view (say so, and what to do), or not there."""
    rows = db.query("SELECT 1 FROM sqlite_master WHERE name = ? AND type = 'view'", (name,))
    if rows:
        return f"{name!r} is a view in {config.path}; {VIEW_FIX}"
    return f"table {name!r} does not exist in {config.path}"


def _usable_mappings(
    db: Database, config: Config, infos: dict[str, TableInfo], broken: dict[str, str] | None
) -> dict[str, TableMapping]:
    mappings: dict[str, TableMapping] = {}
    prefix = config.typesense.collection_prefix
    entries = table_entries(config)
    every_path = dependency_paths(config)
    for entry, table in zip(entries.values(), config.tables, strict=True):
        if table.table not in infos:
            continue
        try:
            mapping = mapping_from_config(infos[table.table], table, entry, prefix)
            problem = row_query_problem(db, mapping, entry)
            if problem is not None:
                raise ConfigError(problem)
            paths = [path for path in every_path if path.root == table.table]
            for path in paths:
                unusable = path_problem(db, path)
                if unusable is not None:
                    raise unusable.within(path.entry)
            mapping = dataclasses.replace(mapping, reads=tuple(map(path_text, paths)))
            _refuse_shared_conflict(mapping, mappings, entry, entries)
        except ConfigError as exc:
            if broken is None:
                raise
            broken[table.table] = str(exc)
            continue
        mappings[table.table] = mapping
    return mappings


def _refuse_shared_conflict(
    mapping: TableMapping, earlier: dict[str, TableMapping], entry: str, entries: dict[str, str]
) -> None:
    """A table whose fields disagree with those of the tables before it in the same collection
    (schema.shared_field_conflict): a ConfigError at its own entry, naming the other's."""
    members = {entries[t]: m for t, m in earlier.items() if m.collection == mapping.collection}
    conflict = shared_field_conflict(mapping, members) if members else None
    if conflict is not None:
        raise conflict.within(entry) from None


# -- the two halves of a runtime -----------------------------------------------------------------


def build_services(
    config: Config, heartbeat: Callable[[], None] | None = None, keys: ApiKeys | None = None
) -> Services:
    """`heartbeat` (the watchdog's, from `run`) is also beaten during HTTP calls. `keys`: a key
    source already opened from this config (a static key is read, a KMS key fetched on first
    use)."""
    keys = keys if keys is not None else open_api_keys(config.typesense)
    try:
        sink = TypesenseSink(
            config.typesense.nodes,
            keys,
            config.typesense.timeout,
            nearest_node=config.typesense.nearest_node,
            on_auth_error=keys.rejected,  # a 401 fetches a new key from the KMS (single flight)
            transport=HeartbeatTransport(heartbeat) if heartbeat is not None else None,
            plain=True,
            beat=on_this_thread(heartbeat) if heartbeat is not None else None,
        )
    except BaseException:
        keys.close()
        raise
    return Services(keys, sink)


def build_runtime(
    config: Config,
    services: Services | None = None,
    stop: threading.Event | None = None,
    heartbeat: Callable[[], None] | None = None,
    skip_broken_tables: bool = False,
) -> Runtime:
    """The tables half on `services` (built here, and closed with the runtime, when None).
    `skip_broken_tables` (the running daemon): a table open_tables can't use is skipped (its
    changes wait in the log) instead of failing the whole runtime."""
    owned = services is None
    services = services if services is not None else build_services(config, heartbeat)
    broken: dict[str, str] | None = {} if skip_broken_tables else None
    try:
        db, infos, mappings = open_tables(config, broken)
    except BaseException:
        if owned:
            services.close()
        raise
    names = log_tables(config)
    changelog = ChangeLog(db, names, config.sync.max_attempts)
    entries = table_entries(config)
    collections = collection_manager(
        services.sink, db, names, config.sync.batch_size, entries, services.follow
    )
    collections.mappings = mappings  # which tables share a collection, before any ensure
    syncer = Syncer(db, changelog, services.sink, mappings, config.sync.batch_size, collections)
    # Also the paths of tables skipped as broken: their dependency tables' changes wait.
    syncer.use_dependencies(
        with_comparisons(db, path) if path.root in mappings else path
        for path in dependency_paths(config)
    )
    syncer.resend_delay = 2 * config.typesense.timeout + 5
    syncer.skip_tables(broken or {})
    syncer.entries = entries
    return Runtime(
        db,
        names,
        infos,
        mappings,
        changelog,
        LogStatus(db, names),
        syncer,
        services,
        settings=loop_settings(config),
        stop=stop if stop is not None else threading.Event(),
        owns_services=owned,
    )


def collection_manager(
    sink: Sink,
    db: Database,
    names: LogTables,
    batch_size: int,
    entries: Mapping[str, str],
    follow: FollowLookups | None = None,
) -> CollectionManager:
    """`entries`: table_entries. Its messages name the keys that rename a collection. `follow`:
    the Services' looks at shared collections (one for every database of a process)."""
    keys = {
        table: NameKeys(f"{entry}.collection", "typesense.collection_prefix")
        for table, entry in entries.items()
    }
    return CollectionManager(sink, db, names, batch_size, keys, follow)


@contextmanager
def command_runtime(config: Config) -> Iterator[Runtime]:
    """A command's runtime, installed (the log exists), closed with its services at the end."""
    runtime = build_runtime(config)
    try:
        require_installed(runtime.db, runtime.names)
        yield runtime
    finally:
        runtime.close()


# -- the running daemon's factory ----------------------------------------------------------------


class RuntimeFactory:
    """daemon.Factory: new tables halves from the running config, and reloads. Used on the
    loop's thread only."""

    def __init__(
        self,
        config: Config,
        load_config: Callable[[], Config] | None,
        stop: threading.Event,
        heartbeat: Callable[[], None],
        prepare: Callable[[Runtime], None] = lambda _runtime: None,
    ) -> None:
        """`prepare`: done to each runtime it builds (a fleet's members: fleet.lighten)."""
        self.config = config
        self.load_config = load_config
        self.stop = stop
        self.heartbeat = heartbeat
        self.prepare = prepare
        self.admin: AdminApi | None = None  # serve() sets it: a reload swaps its verifier

    def runtime(self, services: Services) -> Runtime:
        runtime = build_runtime(self.config, services, self.stop, skip_broken_tables=True)
        self.prepare(runtime)
        return runtime

    def reload(self, services: Services) -> Reload:
        """Read the config file again; refuse (ConfigError naming the key) a restart-only key or
        a bad `admin.jwt`; read the key source the new `typesense:` section names."""
        return self.read_reload(services)[1]

    def read_reload(self, services: Services) -> tuple[Config, Reload]:
        """reload(), with the new config (a fleet narrows it per database)."""
        if self.load_config is None:
            raise ConfigError("no config file to reload")
        config = self.load_config()  # cli.py's loader switches the log format at once
        refuse_restart_only(self.config, config)
        api = self.admin
        swap_admin = (
            api.prepare_reload(admin_verifier(config), loop_stale_after(config))
            if api is not None
            else None
        )
        fresh = self._services(config, services)

        def apply() -> None:
            self.config = config
            configure_logging(config.logging.format, config.logging.level)
            if swap_admin is not None:
                swap_admin()

        def build(running: Services) -> Runtime:
            # An operator's config error (a `where` that doesn't compile, a table that doesn't
            # exist) refuses the reload, as `check` and start refuse it: no skipping here.
            runtime = build_runtime(config, running, self.stop)
            self.prepare(runtime)
            return runtime

        return config, Reload(build, fresh, changed_keys(self.config, config), apply)

    def _services(self, config: Config, running: Services) -> Services | None:
        """New Services when the reload changes them: the `typesense:` section, or the key a
        static key source reads (an `api_key_file` rewritten for a rotation). None: keep them
        (a KMS source rotates its key itself)."""
        if config.typesense == self.config.typesense and config.typesense.kms is not None:
            return None
        keys = open_api_keys(config.typesense)
        same_key = isinstance(keys, StaticKey) and isinstance(running.api_keys, StaticKey)
        if config.typesense == self.config.typesense and same_key and keys() == running.api_keys():
            keys.close()
            return None
        return build_services(config, self.heartbeat, keys)

    def keep_running_config(self) -> None:
        configure_logging(self.config.logging.format, self.config.logging.level)


# -- the admin API's controls ---------------------------------------------------------------


class DaemonControls:
    """control.Controls over the running Daemon, for the admin API. Every method runs on an
    admin server thread, never the loop's: it reads `daemon.runtime` once (a reload may replace
    it meanwhile), works on a SQLite connection and objects of its own, and logs keys or sets
    flags; the loop does the syncing (the one-processor rule). One exception: a verify with
    repair deletes stray documents (ids no row can produce) itself, see Verifier.repair."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def tables(self) -> Collection[str]:
        return list(self.daemon.runtime.mappings)

    def databases(self) -> Collection[str]:
        return []

    def for_database(self, name: str) -> Controls:
        raise ConfigError(f"database {name!r}: this daemon serves one database")

    def paused(self) -> bool:
        return self.daemon.paused.is_set()

    def pause(self) -> None:
        self.daemon.paused.set()

    def resume(self) -> None:
        self.daemon.paused.clear()
        self.daemon.wake()

    def loop_idle_seconds(self) -> float:
        return time.monotonic() - self.daemon.last_beat

    @contextlib.contextmanager
    def _database(self) -> Iterator[tuple[Runtime, Database]]:
        runtime = self.daemon.runtime
        db = Database(runtime.db.path)
        try:
            yield runtime, db
        finally:
            db.close()

    def status(self) -> dict[str, Any]:
        with self._database() as (runtime, db):
            status = sync_status(
                db, runtime.names, list(runtime.mappings), runtime.settings.joined
            )
        for table, problem in list(runtime.syncer.broken.items()):  # skipped: changes wait
            status["tables"].setdefault(table, {})["problem"] = problem
        keys = runtime.services.api_keys.stats()
        status["daemon"] = {
            "paused": self.paused(),
            "loop_idle_seconds": round(self.loop_idle_seconds(), 3),
            "consecutive_failures": self.daemon.consecutive_failures,
            "typesense_up": runtime.sink.up,
            "api_key_source": keys.source,  # never the key
            "kms_up": keys.kms_up,
        }
        return status

    def retry_dead_letters(self, table: str | None) -> int:
        with self._database() as (runtime, db):
            return DeadLetters(db, runtime.names).retry(table)

    def verify(self, table: str | None, repair: bool) -> dict[str, Any]:
        with self._database() as (runtime, db):
            changelog = ChangeLog(db, runtime.names, runtime.settings.max_attempts)
            # Inside the daemon: its loop delivers what is in the log.
            verifier = Verifier(db, changelog, runtime.sink, processor_running=True)
            # Its own collection checker: the loop's is the loop's, on the loop's connection.
            checker = collection_manager(
                runtime.sink, db, runtime.names, runtime.syncer.batch_size, runtime.syncer.entries
            )
            checker.mappings = runtime.mappings
            tables = list(runtime.mappings)
            summary, queued = verify_tables(
                verifier,
                [runtime.mappings[name] for name in ([table] if table else tables)],
                checker,
                lambda: LogStatus(db, runtime.names).summary(tables),
                repair=repair,  # logs the keys (the loop syncs them), deletes stray documents
            )
        if repair:
            summary["repair_queued"] = queued
        return summary

    def backfill(self, table: str | None) -> dict[str, Any]:
        with self._database() as (runtime, db):
            backfill = Backfill(db, runtime.names)
            running = backfill.active()
            started, already = [], []
            for name in [table] if table else list(runtime.mappings):
                if name in running:
                    already.append(name)
                else:
                    backfill.start(name)  # the loop logs its pages between batches
                    started.append(name)
        return {"started": started, "already_running": already}


class FleetControls:
    """control.Controls over a `databases:` daemon (fleet.py): each database's own
    DaemonControls, or all of them with the totals. On admin server threads, like those."""

    def __init__(self, fleet: Fleet, tables: list[str]) -> None:
        self.fleet = fleet
        self._tables = tables

    def tables(self) -> Collection[str]:
        return self._tables

    def databases(self) -> Collection[str]:
        return [member.name for member in self.fleet.members()]

    def for_database(self, name: str) -> Controls:
        for member in self.fleet.members():
            if member.name == name:
                daemon = member.daemon
                if daemon is None or not member.started:
                    raise DatabaseError(
                        f"database {name!r} is not syncing ({member.state}): {member.problem}"
                    )
                return _MemberControls(daemon, functools.partial(self.fleet.wake, member))
        raise ConfigError(f"database {name!r} is not served")

    def _each(self) -> Iterator[tuple[str, Controls | None, dict[str, Any]]]:
        """Every database: its controls (None while it is not syncing) and its state."""
        for member in self.fleet.members():
            state = {"state": member.state, "problem": member.problem}
            try:
                yield member.name, self.for_database(member.name), state
            except CdcError:
                yield member.name, None, state

    def paused(self) -> bool:
        return self.fleet.paused.is_set()

    def pause(self) -> None:
        self.fleet.paused.set()

    def resume(self) -> None:
        self.fleet.resume()

    def loop_idle_seconds(self) -> float:
        return time.monotonic() - self.fleet.last_beat

    def status(self) -> dict[str, Any]:
        databases = {
            name: {**(controls.status() if controls is not None else {}), **state}
            for name, controls, state in self._each()
        }
        keys = self.fleet.services.api_keys.stats()
        daemon = {
            "paused": self.paused(),
            "loop_idle_seconds": round(self.loop_idle_seconds(), 3),
            "typesense_up": self.fleet.services.sink.up,
            "api_key_source": keys.source,  # never the key
            "kms_up": keys.kms_up,
        }
        return {"databases": databases, "daemon": daemon}

    def verify(self, table: str | None, repair: bool) -> dict[str, Any]:
        databases: dict[str, Any] = {}
        for name, controls, state in self._each():
            databases[name] = (
                controls.verify(table, repair) if controls is not None
                else {"in_sync": False, **state}
            )
        totals = {
            key: sum(summary.get(key, 0) for summary in databases.values())
            for key in ("missing", "extra", "stale")
        }
        in_sync = all(summary["in_sync"] for summary in databases.values())
        return {"in_sync": in_sync, **totals, "databases": databases}

    def backfill(self, table: str | None) -> dict[str, Any]:
        started, already = [], []
        for name, controls, _state in self._each():
            if controls is not None:
                result = controls.backfill(table)
                started += [f"{name}/{t}" for t in result["started"]]
                already += [f"{name}/{t}" for t in result["already_running"]]
        return {"started": started, "already_running": already}

    def retry_dead_letters(self, table: str | None) -> int:
        return sum(
            controls.retry_dead_letters(table)
            for _name, controls, _state in self._each()
            if controls is not None
        )


class _MemberControls(DaemonControls):
    """One database of a fleet: a backfill, a retry or a resume also wakes it (an idle
    database looks at its file only now and then)."""

    def __init__(self, daemon: Daemon, wake: Callable[[], None]) -> None:
        super().__init__(daemon)
        self._wake = wake

    def resume(self) -> None:
        super().resume()
        self._wake()

    def backfill(self, table: str | None) -> dict[str, Any]:
        result = super().backfill(table)
        self._wake()
        return result

    def retry_dead_letters(self, table: str | None) -> int:
        count = super().retry_dead_letters(table)
        self._wake()
        return count

    def verify(self, table: str | None, repair: bool) -> dict[str, Any]:
        result = super().verify(table, repair)
        if repair:
            self._wake()
        return result


# -- `run` -----------------------------------------------------------------------------------------


def serve(config: Config, load_config: Callable[[], Config] | None, once: bool = False) -> int:
    """`cdc-daemon run`: build everything, serve metrics and the admin API if configured, run
    the loop under the signal handlers."""
    Database.configure_sqlite()
    notifier = Notifier()
    stop = threading.Event()
    services = build_services(config, notifier.heartbeat)  # closed by Daemon.close
    try:
        runtime = build_runtime(config, services, stop)
    except BaseException:
        services.close()
        raise
    try:
        require_installed(runtime.db, runtime.names)
    except BaseException:
        runtime.close()
        services.close()
        raise
    factory = RuntimeFactory(config, load_config, stop, notifier.heartbeat)
    daemon = Daemon(runtime, factory, notifier)
    admin: AdminServer | None = None
    try:
        if config.metrics.listen:
            daemon.metrics = _serve_metrics(daemon, config.metrics.listen)
        if config.admin.listen:
            admin = _start_admin(daemon, config, config.admin.listen)
            factory.admin = admin.api
        with handle_signals(daemon.request_stop, daemon.request_reload):
            return daemon.run(once=once)
    finally:
        if admin is not None:
            admin.close()
        daemon.close()


def serve_fleet(
    config: Config, load_config: Callable[[], Config] | None, once: bool = False
) -> int:
    """`cdc-daemon run` on a `databases:` config: one process for every matching file
    (fleet.py). With `once`, each database in turn, as `run --once` would sync it alone."""
    assert config.databases is not None
    if once:
        found, _left_out = database_files(config.databases)
        codes = [serve(config.for_database(path), None, once=True) for path in found.values()]
        return max(codes, default=0)
    from cdc_daemon.fleet import Fleet, Folder
    from cdc_daemon.fleet_member import MEMBER_STATEMENTS, Build, FleetReload, lighten

    Database.statement_cache = MEMBER_STATEMENTS  # a thousand connections: fleet_member.py
    Database.configure_sqlite(lookaside=False)
    notifier = Notifier()
    stop = threading.Event()
    services = build_services(config, notifier.heartbeat)

    def members_of(whole: Config) -> Build:
        def member(
            path: Path, shared: Services, stop: threading.Event
        ) -> tuple[Runtime, RuntimeFactory]:
            narrowed = whole.for_database(path)
            runtime = build_runtime(narrowed, shared, stop, skip_broken_tables=True)
            lighten(runtime)
            factory = RuntimeFactory(narrowed, None, stop, notifier.heartbeat, prepare=lighten)
            return runtime, factory

        return member

    factory = RuntimeFactory(config, load_config, stop, notifier.heartbeat)

    def reload(running: Services) -> FleetReload:
        fresh, prepared = factory.read_reload(running)
        return FleetReload(members_of(fresh), prepared.services, prepared.changed, prepared.apply)

    databases = config.databases
    folder = Folder(
        glob=databases.glob,
        path=folder_of(databases),
        files=functools.partial(database_files, databases),
        matches=functools.partial(matches, databases),
        install=databases.install,
        workers=databases.workers,
    )
    fleet = Fleet(
        folder, services, members_of(config), stop, notifier, reload if load_config else None
    )
    metrics: Metrics | None = None
    admin: AdminServer | None = None
    try:
        if config.metrics.listen:
            metrics = fleet.metrics = _serve_fleet_metrics(fleet, config)
        if config.admin.listen:
            controls = FleetControls(fleet, [table.table for table in config.tables])
            admin = _serve_admin(controls, config, config.admin.listen)
            factory.admin = admin.api

        def request_stop(_signum: int) -> None:
            notifier.send("STOPPING=1")
            stop.set()

        with handle_signals(request_stop, fleet.request_reload):
            return fleet.run()
    finally:
        if admin is not None:
            admin.close()
        if metrics is not None:
            metrics.close()
        fleet.services.close()  # the ones in use (a reload may have replaced the first)
        notifier.close()


def _serve_fleet_metrics(fleet: Fleet, config: Config) -> Metrics:
    """The fleet's metrics: the same series as one database's, summed (lag: the oldest), plus
    counts of databases by state and a series per database that has a problem (metrics.py)."""
    names = log_tables(config)
    tables = [table.table for table in config.tables]
    collector = FleetLogCollector(fleet.database_states, names, tables)
    metrics = Metrics(None, names, lambda: [], log_collector=collector, table_names=tables)
    metrics.watch_nodes(lambda: fleet.services.sink.node_health())
    metrics.watch_keys(lambda: fleet.services.api_keys.stats())
    metrics.serve(config.metrics.listen or "")
    log.info("metrics listening", address=config.metrics.listen)
    return metrics


def _start_admin(daemon: Daemon, config: Config, listen: str) -> AdminServer:
    """The admin API over the daemon's Controls, on `listen` (HOST:PORT, checked by config.py)."""
    return _serve_admin(DaemonControls(daemon), config, listen)


def _serve_admin(controls: Controls, config: Config, listen: str) -> AdminServer:
    from cdc_daemon.admin import AdminApi, AdminServer, auth_kind

    verifier = admin_verifier(config)
    api = AdminApi(controls, verifier, loop_stale_after(config))
    server = AdminServer(api.app(), listen)
    server.api = api
    server.start()
    host = listen.rpartition(":")[0]
    log.info("admin api listening", address=f"{host}:{server.port}", auth=auth_kind(verifier))
    return server


def _serve_metrics(daemon: Daemon, listen: str) -> Metrics:
    """Each scrape reads the daemon's current runtime (a rebuild replaces it)."""
    metrics = Metrics(
        daemon.runtime.db.path,
        daemon.runtime.names,
        lambda: daemon.runtime.tables,
        lambda: daemon.runtime.settings.joined,
    )
    metrics.watch_nodes(lambda: daemon.runtime.sink.node_health())
    metrics.watch_keys(lambda: daemon.runtime.services.api_keys.stats())
    metrics.serve(listen)
    log.info("metrics listening", address=listen)
    return metrics


# -- the other commands ----------------------------------------------------------------------------


def read_status(config: Config) -> dict[str, Any]:
    """`status`: a table that can't be read (dropped, renamed, a `where` that no longer
    compiles) is shown with its problem; it does not make `status` fail (a running daemon skips
    it too)."""
    broken: dict[str, str] = {}
    db, _infos, _mappings = open_tables(config, broken)
    try:
        names = log_tables(config)
        require_installed(db, names)
        status = sync_status(
            db, names, [t.table for t in config.tables], loop_settings(config).joined
        )
    finally:
        db.close()
    for table, problem in broken.items():
        status["tables"].setdefault(table, {})["problem"] = problem
    return status


@contextmanager
def dead_letters(config: Config) -> Iterator[tuple[DeadLetters, dict[str, TableMapping]]]:
    """`dead-letters`: the database's dead letters, and the configured tables' mappings."""
    db, _infos, mappings = open_tables(config)
    try:
        require_installed(db, log_tables(config))
        yield DeadLetters(db, log_tables(config)), mappings
    finally:
        db.close()


def open_database(config: Config) -> tuple[Database, ProcessorLock]:
    """`uninstall`: the database (no table checked) and its processor lock (not taken yet)."""
    return Database(config.path), ProcessorLock(config.path)


def drainer(runtime: Runtime) -> Drainer:
    """`backfill`, `verify --repair`: syncs what they logged (or waits for a running daemon)."""
    return Drainer(runtime.syncer, runtime.log_status, runtime.stop)


def backfill(runtime: Runtime) -> Backfill:
    return Backfill(runtime.db, runtime.names)


def command_verifier(runtime: Runtime, draining: Drainer) -> Verifier:
    """`verify`'s comparer. Young changes are on their way only while another process (a
    daemon, a backfill) syncs: this one's --repair drains only what it logged, so newer changes
    would wait for nobody."""
    lock = ProcessorLock(runtime.db.path)
    return Verifier(
        runtime.db,
        runtime.changelog,
        runtime.sink,
        processor_running=lambda: not draining.holding and lock.busy(),
    )
