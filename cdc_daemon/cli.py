"""The `cdc-daemon` command line: parses arguments, loads the config, prints results, exit codes."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from cdc_daemon import wiring
from cdc_daemon.cli_parser import build_parser
from cdc_daemon.cli_progress import progress_bar, shown_on, verify_shown_on
from cdc_daemon.config import (
    Config,
    database_name,
    default_config_path,
    init_node_url,
    load_config,
)
from cdc_daemon.config_template import render_config
from cdc_daemon.database_files import choose, database_files
from cdc_daemon.dependencies import missing_indexes
from cdc_daemon.drain import Drainer, backfill_table
from cdc_daemon.errors import CdcError, ConfigError, DatabaseError, GaveUp, KmsUnavailable
from cdc_daemon.evolution import Group, groups_of, version_name
from cdc_daemon.localserver import serve as serve_local_typesense
from cdc_daemon.logs import configure_logging, redact
from cdc_daemon.preflight import sample_problems, unwatched_reads
from cdc_daemon.runtime import Runtime
from cdc_daemon.schema import TableMapping
from cdc_daemon.signals import handle_signals
from cdc_daemon.status import SYNCING_COMMANDS, syncing_process
from cdc_daemon.triggers import (
    install,
    install_plan,
    install_problem,
    trigger_problems,
    uninstall,
)
from cdc_daemon.verify import EXAMPLES as VERIFY_EXAMPLES
from cdc_daemon.verify import verify_tables
from cdc_daemon.wiring import startup_problems

log = structlog.get_logger("cdc_daemon.cli")
SHARED_COLLECTION_POLL = 2.0  # seconds between its looks


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _main(args)
        sys.stdout.flush()  # here, not at exit: a reader gone (`| head -1`) is caught below
    except BrokenPipeError:
        # The reader closed our stdout: stop quietly, as `cat` does. Python's recipe: point
        # stdout at devnull so the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "local-typesense":
            return serve_local_typesense(args.data_dir, args.port, args.api_key_file)
        if args.command == "init":
            configure_logging(None, "warning")
            url, note = init_node_url(args.typesense_url)
            if note:
                print(f"cdc-daemon: {note}", file=sys.stderr)
            print(render_config(args.database, url, args.api_key_env), end="")
            return 0
        config = load_config(default_config_path(args.config))
        configure_logging(config.logging.format, config.logging.level)
        if args.command == "run":
            return _cmd_run(config, args)
        if args.command == "status" and args.watch is not None:
            return _watch_status(config, args)
        return _each_database(config, args, COMMANDS[args.command])
    except CdcError as exc:
        print(f"cdc-daemon: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cdc-daemon: interrupted", file=sys.stderr)
        return 130


Command = Callable[[Config, argparse.Namespace], int]
# A `databases:` config with no file matching its glob: these commands fail, the others say so.
NO_DATABASE_CODES = {"check": 1, "verify": 1}


def _each_database(config: Config, args: argparse.Namespace, command: Command) -> int:
    """The command on one database: the config's own, or `--database NAME` of a `databases:`
    config; else on each of its databases in turn (sorted by name), each one's output under an
    `== NAME (PATH)` line, or JSON outputs as one {"databases": {NAME: ...}} object. A database
    whose command fails says its error and the others still run; the exit code is the highest."""
    name: str | None = args.database
    if config.databases is None:
        _refuse_another_database(config, name)
        return command(config, args)
    chosen = _databases(config, name)
    if name is not None:
        return command(config.for_database(chosen[name]), args)
    shape = _json_shape(args)
    if not chosen:
        print(
            f"cdc-daemon: no database matches databases.glob {config.databases.glob!r}",
            file=sys.stderr,
        )
        if shape is not None:
            print(json.dumps({"databases": {}}))
        return NO_DATABASE_CODES.get(args.command, 0)
    if shape is not None:
        return _each_database_json(config, args, command, chosen, shape)
    worst = 0
    for each, path in chosen.items():
        print(f"== {each} ({path})", flush=True)
        try:
            code = command(config.for_database(path), args)
        except CdcError as exc:
            sys.stdout.flush()  # the error under its header on a terminal
            print(f"cdc-daemon: error: {redact(str(exc))}", file=sys.stderr, flush=True)
            code = exc.exit_code
        sys.stdout.flush()
        worst = max(worst, code)
        if code == 130:  # interrupted (backfill's Ctrl-C): the next databases are not started
            break
    return worst


def _refuse_another_database(config: Config, name: str | None) -> None:
    """`--database NAME` on a one-database config: only that database's own name is accepted."""
    own = database_name(config.path)
    if name is not None and name != own:
        raise ConfigError(
            f"--database {name!r}: this config has one database, {own!r} ({config.path});"
            " --database chooses among the files of a `databases:` config"
        )


def _databases(config: Config, name: str | None) -> dict[str, Path]:
    """A `databases:` config's files by name (only NAME's with --database; a ConfigError naming
    the ones found when there is no such database), the files left out said on stderr."""
    assert config.databases is not None
    found, left_out = database_files(config.databases)
    for line in left_out:
        print(f"cdc-daemon: warning: {line}", file=sys.stderr)
    return choose(found, name)


def _json_shape(args: argparse.Namespace) -> str | None:
    """"object" for a command printing one JSON object, "lines" for one a line, else None."""
    if args.command == "schema" or (args.command in ("status", "verify") and args.json):
        return "object"
    if args.command == "dead-letters" and args.json and args.action == "list":
        return "lines"
    return None


def _each_database_json(
    config: Config,
    args: argparse.Namespace,
    command: Command,
    chosen: dict[str, Path],
    shape: str,
) -> int:
    """Each database's JSON (as the command prints it for one) in one object, by name; a
    database whose command fails gets {"error": ...} there and its error line on stderr."""
    outputs: dict[str, Any] = {}
    worst = 0
    for each, path in chosen.items():
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                code = command(config.for_database(path), args)
        except CdcError as exc:
            error = redact(str(exc))
            print(f"cdc-daemon: error: {each}: {error}", file=sys.stderr)
            outputs[each] = {"error": error}
            code = exc.exit_code
        else:
            text = printed.getvalue()
            outputs[each] = (
                [json.loads(line) for line in text.split("\n") if line.strip()]
                if shape == "lines"
                else json.loads(text)
            )
        worst = max(worst, code)
    print(json.dumps({"databases": outputs}, indent=2 if args.command == "schema" else None))
    return worst


def _cmd_install(config: Config, args: argparse.Namespace) -> int:
    db, infos, _mappings = wiring.open_tables(config)
    joined = wiring.loop_settings(config).joined  # the dependency tables' join columns
    try:
        if args.dry_run:
            statements, changes = install_plan(db, wiring.log_tables(config), infos, joined)
            print(_install_script(config.path, statements, changes), end="")
            return 0
        changes = install(db, wiring.log_tables(config), infos, joined)
    finally:
        db.close()
    for change in changes:
        print(change)
    print("installed: nothing to change" if not changes else f"installed: {len(changes)} changes")
    return 0


def _install_script(database: Path, statements: list[str], changes: list[str]) -> str:
    """install's statements as one script sqlite3 runs, what they change in comments on top."""
    head = [f"-- `cdc-daemon install` on {database} runs this SQL now (nothing was changed)."]
    if changes:
        head += [f"-- {len(changes)} changes:", *(f"--   {change}" for change in changes)]
    else:
        head.append("-- Nothing to change: the log tables exist and every trigger is current.")
    body = [sql.strip().rstrip(";") + ";" for sql in statements]
    return "\n".join([*head, "BEGIN;", *body, "COMMIT;"]) + "\n"


def _cmd_schema(config: Config, args: argparse.Namespace) -> int:
    db, _infos, mappings = wiring.open_tables(config)  # the tables only: no Typesense, no key
    db.close()
    chosen = (  # '' is a name like any other (refused), not "every table"
        [mappings[config.table(args.table).table]] if args.table is not None else mappings.values()
    )
    groups = groups_of(mappings)
    plans = {mapping.table: _collection_plan(mapping, groups) for mapping in chosen}
    print(json.dumps(plans, indent=2))
    return 0


def _collection_plan(mapping: TableMapping, groups: dict[str, Group]) -> dict[str, Any]:
    """What the daemon creates for a table (evolution.py): searches use the alias, which points
    to a versioned collection (a schema change rebuilds into the next version). A host that
    follows a shared collection (manage_collection: false) creates nothing: it needs the
    collection to fit the schema. Tables sharing a collection show its one schema (the union
    of theirs) and, under `shared_with`, the other tables in it."""
    if not mapping.manage_collection:
        return {
            "alias": mapping.collection,
            "manage_collection": False,
            "schema": mapping.collection_schema(),
        }
    group = groups[mapping.collection]
    plan: dict[str, Any] = {
        "alias": mapping.collection,
        "manage_collection": True,
        "schema": group.collection_schema(version_name(mapping.collection, 1)),
    }
    if len(group.members) > 1:
        plan["id_prefix"] = mapping.id_prefix
        plan["shared_with"] = [t for t in group.tables if t != mapping.table]
    return plan


def _cmd_uninstall(config: Config, args: argparse.Namespace) -> int:
    # The lock is held throughout: no daemon (nor backfill) starts syncing while the log goes.
    db, lock = wiring.open_database(config)
    try:
        if not lock.acquire():
            raise DatabaseError(
                f"{config.path}: a cdc-daemon process (pid {lock.holder()}: `run`, or a"
                " `backfill` / `verify --repair`) is syncing this database: stop it first"
                " (`systemctl stop cdc-daemon`), then uninstall"
            )
        changes = uninstall(db, wiring.log_tables(config), drop_log=args.drop_log)
        if lock.remove():
            changes.append(f"removed lock file {str(lock.path)!r}")
    finally:
        lock.release()
        db.close()
    for change in changes:
        print(change)
    print(f"uninstalled: {len(changes)} changes")
    return 0


def _cmd_check(config: Config, _args: argparse.Namespace) -> int:
    runtime = wiring.build_runtime(config)
    startup = startup_problems(config)  # what `run` refuses beyond tables, keys and Typesense
    problems: list[str] = [problem.text for problem in startup]
    try:
        not_installed = install_problem(runtime.db, runtime.names)
        if not_installed is not None:  # one line: `install` creates the log and every trigger
            problems.append(not_installed)
        else:
            joined = runtime.settings.joined
            problems.extend(trigger_problems(runtime.db, runtime.names, runtime.tables, joined))
        problems.extend(_sampled_rejections(runtime))
        problems.extend(missing_indexes(runtime.db, runtime.syncer.dependencies))
        for table, mapping in runtime.mappings.items():
            watched = {p.table for p in runtime.syncer.dependencies if p.root == table}
            entry = runtime.syncer.entries[table]
            problems.extend(unwatched_reads(runtime.db, mapping, entry, watched))
        try:
            runtime.services.api_keys.ready()  # a KMS key is fetched now
        except KmsUnavailable as exc:
            problems.append(str(exc))  # names the KMS; Typesense can't be checked without a key
        else:
            node_problems = runtime.sink.health()
            problems.extend(node_problems)
            if len(node_problems) < len(config.typesense.nodes):
                for mapping in runtime.mappings.values():  # config order
                    try:
                        problem = runtime.syncer.collections.check(mapping)
                    except CdcError as exc:
                        problem = f"collection {mapping.collection!r}: {exc}"
                    if problem:
                        problems.append(problem)
    finally:
        runtime.close()
    for problem in problems:
        print(redact(problem))
    if not problems:
        print(f"ok: {len(runtime.mappings)} tables, triggers current, Typesense reachable")
    if any(problem.exit_code == 2 for problem in startup):
        return 2  # bad config: `run` would refuse it with exit 2 too
    return 1 if problems else 0


def _sampled_rejections(runtime: Runtime) -> list[str]:
    """Each table's first rows built into documents: the fields Typesense would reject."""
    return [
        problem
        for table, mapping in runtime.mappings.items()
        for problem in sample_problems(runtime.db, mapping, runtime.syncer.entries[table])
    ]


def _cmd_run(config: Config, args: argparse.Namespace) -> int:
    path = default_config_path(args.config)
    name: str | None = args.database
    one: Path | None = None  # `--database NAME` of a `databases:` config: that file only
    if config.databases is None:
        _refuse_another_database(config, name)
    elif name is not None:
        one = _databases(config, name)[name]
        config = config.for_database(one)

    def reload() -> Config:
        fresh = load_config(path)
        configure_logging(fresh.logging.format, fresh.logging.level)
        if one is not None and fresh.databases is not None:
            return fresh.for_database(one)  # narrowed as at the start
        return fresh  # a config changed to another kind: the reload says what can't change

    if config.databases is not None:  # every database, in one process (fleet.py)
        return wiring.serve_fleet(config, reload, once=args.once)
    return wiring.serve(config, reload, once=args.once)


def _cmd_status(config: Config, args: argparse.Namespace) -> int:
    _show_status(config, args.json)
    return 0


def _watch_status(config: Config, args: argparse.Namespace) -> int:
    """`status --watch`: every database's status again every SECONDS until Ctrl-C."""
    try:
        while True:
            if not args.json:  # one JSON object a line with --json; headed reports without
                now = time.strftime("%H:%M:%S")
                print(f"status at {now} (every {args.watch:g} s; Ctrl-C stops)")
            _each_database(config, args, _cmd_status)
            print(end="" if args.json else "\n", flush=True)  # a pipe sees each report now
            time.sleep(args.watch)
    except KeyboardInterrupt:  # how a watch ends: not an error
        return 0


def _show_status(config: Config, as_json: bool) -> None:
    status = wiring.read_status(config)
    status.update(syncing_process(config.path))
    if as_json:
        print(json.dumps(status))
        return
    oldest = status["oldest_age_seconds"]
    print(
        f"backlog: {status['backlog']} changes"
        + (f", oldest {oldest:.1f}s" if oldest is not None else "")
        + f"; dead letters: {status['dead_letters']}"
    )
    print(_daemon_line(status))
    for table, entry in status["tables"].items():
        age = entry.get("oldest_age_seconds")
        line = (
            f"  {table}: backlog {entry.get('backlog', 0)}"
            + (f" (oldest {age:.1f}s)" if age is not None else "")
            + f", retrying {entry.get('retrying', 0)}, dead letters {entry.get('dead_letters', 0)}"
        )
        if "rebuilding_into" in entry:
            line += f", rebuilding into {entry['rebuilding_into']}"
        if "backfill_logged_rows" in entry:
            line += f", backfill in progress ({entry['backfill_logged_rows']} rows logged)"
        if "resync" in entry:
            line += f", resync in progress ({entry['resync']})"
        if "leftovers" in entry:
            line += f", old documents to clear: {'; '.join(entry['leftovers'])}"
        if "problem" in entry:
            line += f"; NOT SYNCING: {entry['problem']}"
        if "trigger_problems" in entry:
            line += (
                "; triggers missing or outdated, changes NOT LOGGED: "
                + "; ".join(entry["trigger_problems"])
                + " (run `cdc-daemon install`)"
            )
        print(line)


def _daemon_line(status: dict[str, Any]) -> str:
    """`daemon: running (pid 4242); last synced 2026-01-02 10:00:03 (3 s ago)`."""
    pid, command = status["syncing_pid"], status["syncing_command"]
    if status["daemon_running"]:
        running = f"daemon: running (pid {pid or 'unknown'})"
    elif command in SYNCING_COMMANDS:
        running = f"daemon: not running; `{command}` (pid {pid}) is syncing"
    elif command is not None:
        running = f"daemon: not running; `cdc-daemon {command}` (pid {pid}) holds the lock"
    elif pid is not None:  # the pid in the lock file now runs another program
        running = f"daemon: not running; pid {pid} (not a cdc-daemon) holds the lock"
    else:
        running = "daemon: not running"
    at = status["last_synced_at"]
    if at is None:
        return f"{running}; never synced"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{running}; last synced {when} ({_ago(status['last_synced_seconds_ago'])} ago)"


def _ago(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def _chosen(runtime: Runtime, config: Config, table: str | None) -> list[TableMapping]:
    """`--table NAME`'s mapping (ConfigError when it is not configured), else every table's."""
    if table is not None:  # '' too: refused, never "every table"
        return [runtime.mappings[config.table(table).table]]
    return list(runtime.mappings.values())


def _cmd_backfill(config: Config, args: argparse.Namespace) -> int:
    with (
        wiring.command_runtime(config) as runtime,
        handle_signals(lambda _signum: runtime.stop.set()) as signals,
    ):
        drainer = wiring.drainer(runtime)
        try:
            code = _backfill(runtime, drainer, _chosen(runtime, config, args.table), args.wait)
        except CdcError as exc:
            if signals.received != signal.SIGINT or not exc.retryable:
                raise
            code = 1  # Ctrl-C while Typesense was failing: an interruption like any other
        finally:
            drainer.close()
    if signals.received == signal.SIGINT and code != 0:
        print("backfill interrupted; run it again to resume", file=sys.stderr)
        return 130
    return code


def _backfill(runtime: Runtime, drainer: Drainer, mappings: list[TableMapping], wait: float) -> int:
    holding = drainer.hold()
    if not holding:
        log.info(
            "a running cdc-daemon syncs the backfilled rows; waiting for it",
            pid=drainer.lock.holder(),
        )
    following = runtime.mappings.values() if holding else mappings
    if not _wait_for_shared_collections(runtime, following, wait):
        print("backfill stopped while waiting; nothing was backfilled", file=sys.stderr)
        return 1
    if holding:  # no daemon runs: this process syncs, so it prepares the collections
        runtime.syncer.ensure_collections()
    backfill = wiring.backfill(runtime)
    with progress_bar() as bar:
        for mapping in mappings:
            task = bar.add_task(mapping.table, total=None, rate="-")
            finished = backfill_table(backfill, mapping, drainer, shown_on(bar, task))
            done = bar.tasks[task].completed
            print(f"{mapping.table}: {'backfilled' if finished else 'stopped at'} {done:.0f} rows")
            if not finished:
                return 1
    # Synced here (no daemon ran): documents Typesense refused are said now, not when they are
    # dead-lettered minutes later.
    rejected = runtime.syncer.rejections.lines()
    for line in rejected:
        print(f"cdc-daemon: {line}", file=sys.stderr)
    return 1 if rejected else 0


def _wait_for_shared_collections(
    runtime: Runtime, mappings: Iterable[TableMapping], limit: float
) -> bool:
    """Tables that follow a shared collection (manage_collection: false) wait until the host
    that manages it has created it (or migrated it to fit): said once per reason, GaveUp after
    `limit` seconds. False when stopped (SIGTERM) meanwhile."""
    deadline = time.monotonic() + limit
    said: dict[str, str] = {}
    while True:
        waiting = {
            m.table: problem
            for m in mappings
            if not m.manage_collection and (problem := runtime.syncer.collections.check(m))
        }
        if not waiting:
            return True
        remaining = deadline - time.monotonic()
        for table, problem in waiting.items():
            if said.get(table) != problem:
                said[table] = problem
                log.warning(
                    "waiting for the host that manages the shared collection",
                    table=table,
                    problem=problem,
                    gives_up_in_s=round(max(remaining, 0)) if remaining != math.inf else None,
                )
        if remaining <= 0:
            table, problem = next(iter(waiting.items()))
            raise GaveUp(
                f"backfill: gave up after {limit:g} s waiting for table {table!r}'s shared"
                f" collection: {problem}. Start the managing host (manage_collection: true), or"
                " wait longer with --wait SECONDS (inf: no limit)"
            )
        if runtime.stop.wait(min(SHARED_COLLECTION_POLL, remaining)):
            return False


def _cmd_verify(config: Config, args: argparse.Namespace) -> int:
    shown = sys.stderr.isatty() and not args.json  # else no bar, and no totals counted for one
    with wiring.command_runtime(config) as runtime, progress_bar(transient=True) as bar:
        drainer = wiring.drainer(runtime)
        try:
            summary, repaired = verify_tables(
                wiring.command_verifier(runtime, drainer),
                _chosen(runtime, config, args.table),
                runtime.syncer.collections,
                lambda: runtime.log_status.summary(list(runtime.mappings)),
                repair=args.repair,
                synced_through=drainer.drain_through,  # no daemon: this process syncs them
                on_progress=verify_shown_on(bar) if shown else None,
            )
        finally:
            drainer.close()
    if args.repair:
        summary["repaired"] = repaired
    if args.json:
        print(json.dumps(summary))
    else:
        _print_verify(summary, args.repair)
    return 0 if summary["in_sync"] else 1


def _print_verify(summary: dict[str, Any], repair: bool) -> None:
    for table, d in summary["tables"].items():
        print(
            f"{table}: {d['rows']} rows, {d['documents']} documents: {d['missing']} missing,"
            f" {d['extra']} extra, {d['stale']} stale"
            + (f" ({d['in_flight']} more on their way)" if d["in_flight"] else "")
            + (" (after the repair)" if "repaired" in d else "")
        )
        for kind, ids in d["examples"].items():
            for doc_id in ids:
                reason = d["reasons"].get(doc_id)
                # repr: a key with a comma, '', a newline or an escape code shows as itself
                print(f"  {kind}: {doc_id!r}" + (f" ({reason})" if reason else ""))
        for kind, ids in d.get("repaired", {}).items():
            if ids:
                print(f"  repaired {len(ids)} {kind}: {_first_ids(ids)}")
    if summary["backlog"] or summary["dead_letters"]:
        age = summary["oldest_age_seconds"]
        print(
            f"log: {summary['backlog']} changes waiting"
            + (f", oldest {age:.0f} s" if age is not None else "")
            + f"; {summary['dead_letters']} dead letters"
        )
    if repair:
        print(f"repaired: {summary['repaired']} differences sent again")
    print("in sync" if summary["in_sync"] else "NOT in sync")


def _first_ids(ids: list[str]) -> str:
    """The first few ids, and how many more (every one is in `verify --json`)."""
    more = len(ids) - VERIFY_EXAMPLES
    shown = ", ".join(repr(doc_id) for doc_id in ids[:VERIFY_EXAMPLES])
    return shown + (f" and {more} more (all in --json)" if more > 0 else "")


def _cmd_dead_letters(config: Config, args: argparse.Namespace) -> int:
    with wiring.dead_letters(config) as (dead_letters, mappings):
        if args.table is not None and args.table not in mappings:  # '' too: refused
            config.table(args.table)
        if args.action == "list":
            for letter in dead_letters.entries(args.table):
                if args.json:
                    print(json.dumps(letter, default=str))
                else:
                    print(
                        f"{letter['table']} {letter['key']!r}: {_one_line(letter['error'])}"
                        f" (attempts {letter['attempts']})"
                    )
        elif args.action == "retry":
            print(f"retrying {dead_letters.retry(args.table)} dead letters")
        else:
            print(f"purged {dead_letters.purge(args.table)} dead letters")
    return 0


def _one_line(text: object) -> str:
    """A stored error on one line: its line breaks and control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


COMMANDS: dict[str, Command] = {  # `run` is not here: one process serves every database
    "install": _cmd_install,
    "schema": _cmd_schema,
    "uninstall": _cmd_uninstall,
    "check": _cmd_check,
    "status": _cmd_status,
    "backfill": _cmd_backfill,
    "verify": _cmd_verify,
    "dead-letters": _cmd_dead_letters,
}
