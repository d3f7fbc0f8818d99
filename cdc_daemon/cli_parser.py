"""`cdc-daemon`'s arguments: every command and option with its help and examples, in the order a
user runs them (tests/unit/test_cli_help.py: every option has help, every example parses)."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from cdc_daemon import __version__

SHARED_COLLECTION_WAIT = 300.0  # backfill: seconds to wait for a host managing a shared collection

TOP_EPILOG = """\
The config comes from --config PATH (before or after the command), else $CDC_CONFIG, else
./cdc.yaml. Start with `cdc-daemon init --database app.db > cdc.yaml`, then the commands above
in their order. `cdc-daemon COMMAND --help` shows a command's options and examples."""

Parser = argparse.ArgumentParser
Adder = Callable[..., Parser]  # _parser's add(name, text, examples, more="", config=True)
TABLE_HELP = "only this configured table (default: every table)"
JSON_HELP = "print JSON, for scripts"
DATABASE_HELP = (
    "with a `databases:` config: only this database, named by its file name without the"
    " suffix (default: every database)"
)


def _add_commands(add: Adder) -> None:
    """Every command but local-typesense, in the order a user runs them; the main ones with
    examples (tests/unit/test_cli_help.py: every option has help, every example parses)."""
    _add_setup_commands(add)
    _add_daily_commands(add)


def _add_setup_commands(add: Adder) -> None:
    """From a database to a running daemon: init, install, check, backfill, run."""
    p = add(
        "init",
        "print a commented cdc.yaml for a database's tables",
        [
            "cdc-daemon init --database app.db > cdc.yaml",
            "cdc-daemon init --database app.db --api-key-env TS_KEY > cdc.yaml",
        ],
        "Every table with a primary key gets an entry; the others are listed as skipped."
        " Nothing is written: redirect the output to a file.",
        config=False,
    )
    # init reads no config: --config is still accepted (as before), not offered.
    p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument(
        "--database", required=True, type=Path, metavar="DB", help="the app's SQLite file"
    )
    p.add_argument(
        "--typesense-url",
        default="http://127.0.0.1:8108",
        metavar="URL",
        help="the Typesense node written into the config (default: http://127.0.0.1:8108)",
    )
    p.add_argument(
        "--api-key-env",
        default="TYPESENSE_API_KEY",
        metavar="NAME",
        help="the variable the daemon reads the API key from (default: TYPESENSE_API_KEY)",
    )
    p = add(
        "install",
        "create the change log and triggers (idempotent)",
        [
            "cdc-daemon install",
            "cdc-daemon install --dry-run > install.sql   # the SQL it would run; nothing changes",
        ],
        "The log tables and, on every configured table, the triggers that log each insert,"
        " update and delete, in one transaction; run it again after adding a table.",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the SQL install would run; change nothing"
    )
    add(
        "check",
        "check config, database, triggers and Typesense",
        ["cdc-daemon check", "cdc-daemon --config /etc/cdc/cdc.yaml check"],
        "One line per problem; exit 1 if there is one, 2 if one is bad config.",
    )
    p = add(
        "backfill",
        "send the rows that exist now to Typesense, resumably",
        ["cdc-daemon backfill", "cdc-daemon backfill --table books"],
        "Run it once after install; stopped, it resumes where it was. Progress on a terminal.",
    )
    p.add_argument("--table", metavar="NAME", help=TABLE_HELP)
    p.add_argument(
        "--wait",
        type=float,
        default=SHARED_COLLECTION_WAIT,
        metavar="SECONDS",
        help="how long to wait for a shared collection another host manages"
        f" (default {SHARED_COLLECTION_WAIT:g}; inf: no limit)",
    )
    p = add(
        "run",
        "run the daemon: keep the collections in step",
        ["cdc-daemon run", "cdc-daemon run --once   # sync what is waiting, then exit"],
    )
    p.add_argument("--once", action="store_true", help="drain the backlog, then exit")


def _add_daily_commands(add: Adder) -> None:
    """Watching, checking and repairing: status, verify, dead-letters, schema, uninstall."""
    p = add(
        "status",
        "is a daemon running, when it last synced, what waits",
        ["cdc-daemon status", "cdc-daemon status --watch", "cdc-daemon status --json"],
        "Per table: backlog, oldest pending age, retries, dead letters, missing triggers.",
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.add_argument("--watch", nargs="?", const=2.0, type=_positive_seconds, metavar="SECONDS",
                   help="print the status again every SECONDS (default 2) until Ctrl-C")
    p = add(
        "verify",
        "compare rows with documents; exit 1 when they differ",
        ["cdc-daemon verify", "cdc-daemon verify --table books --repair"],
        "With --repair it sends the differences again and exits 0 once they are repaired.",
    )
    p.add_argument("--table", metavar="NAME", help=TABLE_HELP)
    p.add_argument(
        "--repair", action="store_true", help="send the differing rows again (exit 0 once done)"
    )
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p = add(
        "dead-letters",
        "list, retry or purge changes that kept failing",
        ["cdc-daemon dead-letters list", "cdc-daemon dead-letters retry --table books"],
        "A dead letter is a change Typesense refused sync.max_attempts times; it stays until"
        " retried or purged.",
    )
    p.add_argument(
        "action",
        choices=["list", "retry", "purge"],
        help="list: show them; retry: send them again; purge: delete them",
    )
    p.add_argument("--table", metavar="NAME", help="only this configured table's dead letters")
    p.add_argument("--json", action="store_true", help="list: one JSON object per line")
    p = add(
        "schema",
        "print each table's collection schema (needs no Typesense)",
        ["cdc-daemon schema", "cdc-daemon schema --table books"],
        "As JSON, what the daemon creates: the fields, their types and facets, the default"
        " sorting field, and the versioned collection behind the alias searches use.",
    )
    p.add_argument("--table", metavar="NAME", help=TABLE_HELP)
    p = add(
        "uninstall",
        "remove the triggers (and the log with --drop-log)",
        ["cdc-daemon uninstall", "cdc-daemon uninstall --drop-log"],
        "Refused while a daemon, backfill or verify --repair syncs the database.",
    )
    p.add_argument(
        "--drop-log",
        action="store_true",
        help="also drop the log, dead-letter and state tables (what they hold is lost)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdc-daemon",
        description="Keep Typesense collections in step with SQLite tables.",
        epilog=TOP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cdc-daemon {__version__}")
    config_help = "config file (default: $CDC_CONFIG, else ./cdc.yaml)"
    parser.add_argument("--config", metavar="PATH", help=config_help)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=config_help)
    common.add_argument("--database", metavar="NAME", help=DATABASE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, text: str, examples: Sequence[str], more: str = "", config: bool = True
    ) -> Parser:
        lines = "\n".join(f"  {example}" for example in examples)
        return sub.add_parser(
            name,
            parents=[common] if config else [],
            help=text,
            description=textwrap.fill(f"{text[0].upper()}{text[1:]}. {more}".strip(), 79),
            epilog=f"Examples:\n{lines}" if examples else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    _add_commands(add)
    p = add(
        "local-typesense",
        "run the bundled Typesense to try cdc-daemon with",
        ["cdc-daemon local-typesense --data-dir ~/typesense-data &",
         'export TYPESENSE_API_KEY="$(cat ~/typesense-data/api.key)"'],
        "On 127.0.0.1 in the foreground until Ctrl-C, its data kept for the next start (needs"
        " the demo extra). In production run Typesense itself.",
        config=False,
    )
    p.add_argument("--data-dir", type=Path, default=Path("typesense-data"), metavar="DIR",
                   help="where the server keeps its data (default: ./typesense-data)")
    p.add_argument("--port", type=int, default=8108, help="API port (default: 8108)")
    p.add_argument("--api-key-file", type=Path, metavar="FILE",
                   help="the API key, made (random, mode 0600) if missing (default: DIR/api.key)")
    return parser


MAX_WATCH_SECONDS = 86400.0  # a day: more is a typo (and inf overflows time.sleep)


def _positive_seconds(text: str) -> float:
    """`status --watch SECONDS`: a number above 0, at most a day."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number of seconds") from None
    if not 0 < seconds <= MAX_WATCH_SECONDS:  # NaN and inf too
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a number of seconds above 0, at most {MAX_WATCH_SECONDS:g}"
        )
    return seconds
