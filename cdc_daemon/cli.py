"""The `cdc-daemon` command line: parses arguments, loads the config, prints results, exit codes."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from cdc_daemon import __version__, wiring
from cdc_daemon.backfill import BackfillProgress
from cdc_daemon.config import Config, default_config_path, load_config
from cdc_daemon.config_template import render_config
from cdc_daemon.drain import Drainer, backfill_table
from cdc_daemon.errors import CdcError, DatabaseError, GaveUp, KmsUnavailable
from cdc_daemon.logs import configure_logging, redact
from cdc_daemon.preflight import sample_problems
from cdc_daemon.runtime import Runtime
from cdc_daemon.schema import TableMapping
from cdc_daemon.signals import handle_signals
from cdc_daemon.triggers import install, trigger_problems, uninstall
from cdc_daemon.verify import verify_tables
from cdc_daemon.wiring import startup_problems

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

log = structlog.get_logger("cdc_daemon.cli")
SHARED_COLLECTION_WAIT = 300.0  # backfill: seconds to wait for a host managing a shared collection
SHARED_COLLECTION_POLL = 2.0  # seconds between its looks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc-daemon", description="Keep Typesense collections in step with SQLite tables."
    )
    parser.add_argument("--version", action="version", version=f"cdc-daemon {__version__}")
    config_help = "config file (default: $CDC_CONFIG, else ./cdc.yaml)"
    parser.add_argument("--config", help=config_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=config_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text)

    p = add("init", "print a commented cdc.yaml for every table of a database that has a key")
    p.add_argument("--database", required=True, type=Path)
    p.add_argument("--typesense-url", default="http://127.0.0.1:8108")
    p.add_argument("--api-key-env", default="TYPESENSE_API_KEY")
    add("check", "validate config, database, triggers and Typesense; one line per problem")
    add("install", "create the log table and triggers (idempotent, one transaction)")
    p = add("uninstall", "remove the triggers (and the log with --drop-log)")
    p.add_argument("--drop-log", action="store_true")
    p = add("backfill", "load every current row into Typesense, resumably")
    p.add_argument("--table")
    p.add_argument(
        "--wait",
        type=float,
        default=SHARED_COLLECTION_WAIT,
        metavar="SECONDS",
        help="how long to wait for a shared collection another host manages"
        f" (default {SHARED_COLLECTION_WAIT:g}; inf: no limit)",
    )
    p = add("run", "run the daemon")
    p.add_argument("--once", action="store_true", help="drain the backlog, then exit")
    p = add("status", "backlog, oldest pending age, dead letters, per table")
    p.add_argument("--json", action="store_true")
    p = add("verify", "compare rows with documents; exit 1 when they differ")
    p.add_argument("--table")
    p.add_argument("--repair", action="store_true")
    p.add_argument("--json", action="store_true")
    p = add("dead-letters", "list, retry or purge changes that failed max_attempts times")
    p.add_argument("action", choices=["list", "retry", "purge"])
    p.add_argument("--table")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            configure_logging(None, "warning")
            print(render_config(args.database, args.typesense_url, args.api_key_env), end="")
            return 0
        config = load_config(default_config_path(args.config))
        configure_logging(config.logging.format, config.logging.level)
        command: Callable[[Config, argparse.Namespace], int] = COMMANDS[args.command]
        return command(config, args)
    except CdcError as exc:
        print(f"cdc-daemon: error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cdc-daemon: interrupted", file=sys.stderr)
        return 130


def _cmd_install(config: Config, _args: argparse.Namespace) -> int:
    db, infos, _mappings = wiring.open_tables(config)
    try:
        changes = install(db, wiring.log_tables(config), infos)
    finally:
        db.close()
    for change in changes:
        print(change)
    print("installed: nothing to change" if not changes else f"installed: {len(changes)} changes")
    return 0


def _cmd_uninstall(config: Config, args: argparse.Namespace) -> int:
    # The lock is held throughout: no daemon (nor backfill) starts syncing while the log goes.
    db, lock = wiring.open_database(config)
    try:
        if not lock.acquire():
            raise DatabaseError(
                f"{config.database}: a cdc-daemon process (pid {lock.holder()}: `run`, or a"
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
        problems.extend(trigger_problems(runtime.db, runtime.names, runtime.tables))
        problems.extend(_sampled_rejections(runtime))
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

    def reload() -> Config:
        fresh = load_config(path)
        configure_logging(fresh.logging.format, fresh.logging.level)
        return fresh

    return wiring.serve(config, reload, once=args.once)


def _cmd_status(config: Config, args: argparse.Namespace) -> int:
    status = wiring.read_status(config)
    if args.json:
        print(json.dumps(status))
        return 0
    oldest = status["oldest_age_seconds"]
    print(
        f"backlog: {status['backlog']} changes"
        + (f", oldest {oldest:.1f}s" if oldest is not None else "")
        + f"; dead letters: {status['dead_letters']}"
    )
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
    return 0


def _chosen(runtime: Runtime, config: Config, table: str | None) -> list[TableMapping]:
    """`--table NAME`'s mapping (ConfigError when it is not configured), else every table's."""
    if table:
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
    with _progress_bar() as bar:
        for mapping in mappings:
            task = bar.add_task(mapping.table, total=None, rate="-")
            finished = backfill_table(backfill, mapping, drainer, _shown_on(bar, task))
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


def _progress_bar() -> Progress:
    from rich.progress import (  # imported here: the other commands start faster without rich
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} rows/s"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not sys.stderr.isatty(), transient=False)


def _shown_on(bar: Progress, task: TaskID) -> Callable[[BackfillProgress], None]:
    def show(progress: BackfillProgress) -> None:
        if progress.resumed_from and progress.done == progress.resumed_from:
            print(f"{progress.table}: resuming after {progress.done} rows")
        speed = bar.tasks[task].speed
        bar.update(
            task,
            total=progress.total,
            completed=progress.done,
            rate=f"{speed:,.0f}" if speed else "-",
        )
        log.debug(
            "backfill progress", table=progress.table, done=progress.done, total=progress.total
        )

    return show


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
    with wiring.command_runtime(config) as runtime:
        drainer = wiring.drainer(runtime)
        try:
            summary, repaired = verify_tables(
                wiring.command_verifier(runtime, drainer),
                _chosen(runtime, config, args.table),
                runtime.syncer.collections,
                lambda: runtime.log_status.summary(list(runtime.mappings)),
                repair=args.repair,
                synced_through=drainer.drain_through,  # no daemon: this process syncs them
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
        )
        for kind, ids in d["examples"].items():
            for doc_id in ids:
                reason = d["reasons"].get(doc_id)
                print(f"  {kind}: {doc_id}" + (f" ({reason})" if reason else ""))
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


def _cmd_dead_letters(config: Config, args: argparse.Namespace) -> int:
    with wiring.dead_letters(config) as (dead_letters, mappings):
        if args.table and args.table not in mappings:
            config.table(args.table)
        if args.action == "list":
            for letter in dead_letters.entries(args.table):
                if args.json:
                    print(json.dumps(letter, default=str))
                else:
                    print(
                        f"{letter['table']} {letter['key']!r}: {letter['error']}"
                        f" (attempts {letter['attempts']})"
                    )
        elif args.action == "retry":
            print(f"retrying {dead_letters.retry(args.table)} dead letters")
        else:
            print(f"purged {dead_letters.purge(args.table)} dead letters")
    return 0


COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "install": _cmd_install,
    "uninstall": _cmd_uninstall,
    "check": _cmd_check,
    "run": _cmd_run,
    "status": _cmd_status,
    "backfill": _cmd_backfill,
    "verify": _cmd_verify,
    "dead-letters": _cmd_dead_letters,
}
