"""Install, inspect and remove the log table and the triggers (SQL templates live in sql/)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from string import Template
from types import MappingProxyType

from cdc_daemon.database import Database, TableInfo, quote_ident, quote_literal
from cdc_daemon.dependencies import payload_sql
from cdc_daemon.errors import ConfigError, DatabaseError
from cdc_daemon.log_schema import (
    ACKNOWLEDGING,
    DELETED_BY_OTHERS,
    LogTables,
    Op,
    not_installed_message,
)
from cdc_daemon.row_keys import log_key_sql

# The comment each CREATE TABLE of sql/log.sql carries (sqlite_master keeps a statement's text,
# comments too): how a table of the log's names is known to be cdc-daemon's own.
LOG_MARKER = "cdc-daemon change log"
DEAD_MARKER = "cdc-daemon dead letters"
STATE_MARKER = "cdc-daemon state"
# The op letters the triggers write (log_schema.Op), as the templates' SQL literals.
TRIGGER_OPS = {
    "op_insert": quote_literal(Op.INSERT),
    "op_update": quote_literal(Op.UPDATE),
    "op_delete": quote_literal(Op.DELETE),
    "op_joined": quote_literal(Op.JOINED),
}
# A dependency table's triggers (depends_on): kind → (event, logs the old row, logs the new row).
DEPENDENCY_EVENTS = {
    "joined_insert": ("INSERT", False, True),
    "joined_update": ("UPDATE", True, True),
    "joined_delete": ("DELETE", True, False),
}


def _sql_dir() -> Path:
    packaged = Path(__file__).with_name("sql")  # inside a wheel
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "sql"


@cache
def template(name: str) -> Template:
    return Template((_sql_dir() / f"{name}.sql").read_text(encoding="utf-8"))


def key_expr(prefix: str, key: Sequence[str]) -> str:
    """SQL for the log key of a row (keys.log_key_sql): `prefix` is `NEW.`, `OLD.` or ``."""
    return log_key_sql([f"{prefix}{quote_ident(col)}" for col in key])


def _collate(collation: str) -> str:
    return "" if collation.upper() == "BINARY" else f" COLLATE {quote_ident(collation)}"


def _match(columns: Sequence[str], collations: Sequence[str]) -> str:
    """The row's columns equal the new row's as the index compares them (its collations)."""
    return " AND ".join(
        f"{quote_ident(c)} = NEW.{quote_ident(c)}{_collate(coll)}"
        for c, coll in zip(columns, collations, strict=True)
    )


def _same_key(key: Sequence[str], other: str) -> str:
    """The row's key is byte for byte `other`'s key: the same document id."""
    return " AND ".join(f"{quote_ident(c)} IS {other}{quote_ident(c)} COLLATE BINARY" for c in key)


def _unique_indexes(info: TableInfo) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each UNIQUE index's columns and their collations (BINARY where none is known)."""
    return [
        (
            columns,
            info.unique_collations[i]
            if i < len(info.unique_collations)
            else ("BINARY",) * len(columns),
        )
        for i, columns in enumerate(info.unique_indexes)
    ]


def _eviction_triggers(info: TableInfo) -> dict[str, tuple[str, dict[str, str]]]:
    """BEFORE triggers that log the rows a REPLACE evicts without firing their delete trigger:
    through each UNIQUE index, and through the primary key itself when it compares other than
    byte for byte (`COLLATE NOCASE`: 'alice@x' replaces 'Alice@x', another document id). A
    BINARY key needs none: the evicted row's document is the new row's, upserted anyway."""
    wanted: dict[str, tuple[str, dict[str, str]]] = {}
    for i, (columns, collations) in enumerate(_unique_indexes(info), start=1):
        unique = {
            "unique_columns": ", ".join(quote_ident(c) for c in columns),
            # Match the way the index compares (e.g. an index on `email COLLATE NOCASE`).
            "unique_match": _match(columns, collations),
        }
        wanted[f"unique{i}_insert"] = ("trigger_unique_insert", unique)
        wanted[f"unique{i}_update"] = ("trigger_unique_update", unique)
    if any(c.upper() != "BINARY" for c in info.key_collations):
        key_columns = ", ".join(quote_ident(c) for c in info.key)
        # Not the new key itself (the insert trigger logs it), nor the updated row's old key
        # (update_key logs it).
        on_insert = (
            f"{_match(info.key, info.key_collations)} AND NOT ({_same_key(info.key, 'NEW.')})"
        )
        on_update = f"{on_insert} AND NOT ({_same_key(info.key, 'OLD.')})"
        wanted["key_collation_insert"] = (
            "trigger_unique_insert",
            {"unique_columns": key_columns, "unique_match": on_insert},
        )
        wanted["key_collation_update"] = (
            "trigger_unique_update",
            {"unique_columns": key_columns, "unique_match": on_update},
        )
    return wanted


def expected_triggers(names: LogTables, info: TableInfo) -> dict[str, str]:
    """Trigger name → exact CREATE TRIGGER text, for one table."""
    table = quote_ident(info.name)
    common = {
        "table": table,
        "log": quote_ident(names.log),
        "table_literal": quote_literal(info.name),
        "new_key": key_expr("NEW.", info.key),
        "old_key": key_expr("OLD.", info.key),
        "row_key": key_expr("", info.key),
        "key_columns": ", ".join(quote_ident(c) for c in info.key),
        # COLLATE BINARY: a NOCASE key changed only in case ('Abc' → 'abc') is a new document id.
        "key_changed": " OR ".join(
            f"OLD.{quote_ident(c)} IS NOT NEW.{quote_ident(c)} COLLATE BINARY" for c in info.key
        ),
        **TRIGGER_OPS,
    }
    wanted: dict[str, tuple[str, dict[str, str]]] = {
        "insert": ("trigger_insert", {}),
        "update": ("trigger_update", {}),
        "update_key": ("trigger_update_key", {}),
        "delete": ("trigger_delete", {}),
        **_eviction_triggers(info),
    }
    result = {}
    for kind, (template_name, extra) in wanted.items():
        name = names.trigger_name(info.name, kind)
        sql = template(template_name).substitute(common, name=quote_ident(name), **extra)
        result[name] = sql.strip()
    return result


def log_guard_trigger(names: LogTables) -> dict[str, str]:
    """The trigger on the log itself that counts entries deleted by anyone but the daemon."""
    name = names.trigger_name(names.log, "guard")
    sql = template("trigger_log_guard").substitute(
        name=quote_ident(name),
        log=quote_ident(names.log),
        state=quote_ident(names.state),
        acknowledging=quote_literal(ACKNOWLEDGING),
        deleted_by_others=quote_literal(DELETED_BY_OTHERS),
    )
    return {name: sql.strip()}


def ensure_log_is_ours(db: Database, names: LogTables) -> bool:
    """True if the log exists; ConfigError as missing_log_tables."""
    return names.log not in missing_log_tables(db, names)


def missing_log_tables(db: Database, names: LogTables) -> list[str]:
    """The log's tables (log, dead letters, state) not in the database: all three before
    `install` ever ran. ConfigError if a table (or view) of one of those names was not created
    by cdc-daemon: install would adopt it (CREATE TABLE IF NOT EXISTS) and `uninstall
    --drop-log` drop it with the app's rows."""
    return [  # each of the three looked at, so a foreign one is refused whichever it is
        table
        for table, marker in (
            (names.log, LOG_MARKER),
            (names.dead, DEAD_MARKER),
            (names.state, STATE_MARKER),
        )
        if not _exists_as_ours(db, names, table, marker)
    ]


def _exists_as_ours(db: Database, names: LogTables, table: str, marker: str) -> bool:
    # NOCASE as SQLite compares names: `Change_Log_State` is `change_log_state`.
    rows = db.query(
        "SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'view')"
        " AND name = ? COLLATE NOCASE",
        (table,),
    )
    for name, sql in rows:
        if marker not in (sql or ""):
            raise ConfigError(
                f"log_table: table {name!r} exists and was not created by cdc-daemon;"
                " choose another log_table (cdc-daemon's tables are named after it:"
                f" {names.log!r}, {names.dead!r}, {names.state!r})"
            )
    return bool(rows)


def install_problem(db: Database, names: LogTables) -> str | None:
    """One line naming `cdc-daemon install` when the log's tables are not (all) there: the check
    every command, and the daemon after a reopen, makes before it touches them; ConfigError when
    a table of the log's name was not created by cdc-daemon."""
    missing = missing_log_tables(db, names)
    return not_installed_message(db, names, missing) if missing else None


def require_installed(db: Database, names: LogTables) -> None:
    problem = install_problem(db, names)
    if problem is not None:
        raise DatabaseError(problem)


def dependency_triggers(
    names: LogTables, info: TableInfo, columns: Sequence[str]
) -> dict[str, str]:
    """Trigger name → CREATE TRIGGER text for a dependency table: one J entry per row change,
    whatever number of documents read the row (the daemon finds them: dependencies.py), and one
    per row a REPLACE evicts without firing the delete trigger."""
    common = {
        **TRIGGER_OPS,
        "table": quote_ident(info.name),
        "log": quote_ident(names.log),
        "table_literal": quote_literal(info.name),
    }
    result = {}
    for kind, (event, old, new) in DEPENDENCY_EVENTS.items():
        name = names.trigger_name(info.name, kind)
        payload = payload_sql(columns, "OLD." if old else None, "NEW." if new else None)
        sql = template("trigger_dependency").substitute(
            common, name=quote_ident(name), event=event, payload=payload
        )
        result[name] = sql.strip()
    evicted = payload_sql(columns, "", None)  # the evicted row's values, as the SELECT reads it
    for kind, event, match in _dependency_evictions(info, columns):
        name = names.trigger_name(info.name, kind)
        sql = template("trigger_dependency_evict").substitute(
            common, name=quote_ident(name), event=event, payload=evicted, match=match
        )
        result[name] = sql.strip()
    return result


def _dependency_evictions(info: TableInfo, columns: Sequence[str]) -> list[tuple[str, str, str]]:
    """(kind, event, the evicted rows) for each way a REPLACE can delete another row of a
    dependency table: through a UNIQUE index, or through the primary key when the join columns
    are not all in it (a row replaced by its key may join other documents than the new one)."""
    uniques = _unique_indexes(info)
    if info.key and not set(columns) <= set(info.key):
        uniques.append((info.key, info.key_collations or ("BINARY",) * len(info.key)))
    same_row = _same_key(info.key, "OLD.") if info.key else "rowid = OLD.rowid"
    found = []
    for i, (unique, collations) in enumerate(uniques, start=1):
        match = _match(unique, collations)
        listed = ", ".join(quote_ident(c) for c in unique)
        found.append((f"joined_evict{i}_insert", "INSERT", match))
        found.append(
            (f"joined_evict{i}_update", f"UPDATE OF {listed}", f"{match} AND NOT ({same_row})")
        )
    return found


def wanted_triggers(
    db: Database,
    names: LogTables,
    tables: Sequence[TableInfo],
    joined: Mapping[str, Sequence[str]],
) -> list[tuple[str, dict[str, str]]]:
    """(table, its triggers by name) for the configured tables, then the dependency tables
    (`joined`: table → the join columns its entries log, dependencies.join_columns)."""
    wanted = [(info.name, expected_triggers(names, info)) for info in tables]
    wanted += [  # a dependency table that is gone has no triggers (its readers are skipped)
        (table, dependency_triggers(names, db.table_info(table), cols))
        for table, cols in joined.items()
        if db.table_exists(table)
    ]
    return wanted


def installed_triggers(db: Database, names: LogTables) -> dict[str, tuple[str, str]]:
    """Our triggers in the database: name → (table, sql)."""
    prefix = names.trigger_prefix()
    return {
        name: (table, sql)
        for name, table, sql in db.query(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'"
        )
        if name.startswith(prefix)
    }


def install(
    db: Database,
    names: LogTables,
    tables: Sequence[TableInfo],
    joined: Mapping[str, Sequence[str]] = MappingProxyType({}),
) -> list[str]:
    """Create the log and every trigger in one transaction; idempotent. Returns what changed."""
    with db.write() as conn:
        statements, changes = install_plan(db, names, tables, joined)
        for sql in statements:
            conn.execute(sql)
    return changes


def install_plan(
    db: Database,
    names: LogTables,
    tables: Sequence[TableInfo],
    joined: Mapping[str, Sequence[str]] = MappingProxyType({}),
) -> tuple[list[str], list[str]]:
    """The statements `install` runs on this database now, in order, and what they change.
    Only reads: `install --dry-run` prints the statements."""
    changes = [f"created log table {table!r}" for table in missing_log_tables(db, names)]
    statements = [
        template("log").substitute(
            log=quote_ident(names.log), dead=quote_ident(names.dead), state=quote_ident(names.state)
        )
    ]
    present = installed_triggers(db, names)
    wanted = log_guard_trigger(names)
    for _table, triggers in wanted_triggers(db, names, tables, joined):
        wanted.update(triggers)
    for name, (table, sql) in present.items():
        if wanted.get(name) != sql:
            statements.append(f"DROP TRIGGER {quote_ident(name)}")
            if name not in wanted:
                changes.append(f"removed trigger {name!r} (table {table!r} not configured)")
    for name, sql in wanted.items():
        if present.get(name, (None, None))[1] != sql:
            statements.append(sql)
            changes.append(f"installed trigger {name!r}")
    return statements, changes


def uninstall(db: Database, names: LogTables, drop_log: bool) -> list[str]:
    changes: list[str] = []
    with db.write() as conn:
        for name in installed_triggers(db, names):
            conn.execute(f"DROP TRIGGER {quote_ident(name)}")
            changes.append(f"removed trigger {name!r}")
        if drop_log and ensure_log_is_ours(db, names):
            for table in (names.log, names.dead, names.state):
                conn.execute(f"DROP TABLE IF EXISTS {quote_ident(table)}")
                changes.append(f"dropped table {table!r}")
    return changes


def trigger_problems(
    db: Database,
    names: LogTables,
    tables: Sequence[TableInfo],
    joined: Mapping[str, Sequence[str]] = MappingProxyType({}),
) -> list[str]:
    """One line per missing or outdated trigger (empty when everything is current)."""
    problems = []
    if not ensure_log_is_ours(db, names):
        problems.append(f"log table {names.log!r} is missing: run `cdc-daemon install`")
    for table, lines in problems_by_table(db, names, tables, joined).items():
        problems.extend(f"table {table!r}: {line}" for line in lines)
    return problems


def problems_by_table(
    db: Database,
    names: LogTables,
    tables: Sequence[TableInfo],
    joined: Mapping[str, Sequence[str]] = MappingProxyType({}),
) -> dict[str, list[str]]:
    """Table → one line per missing or outdated trigger; the log's own guard under the log's
    name. Empty when every trigger is current."""
    present = installed_triggers(db, names)
    wanted = [(names.log, log_guard_trigger(names)), *wanted_triggers(db, names, tables, joined)]
    problems: dict[str, list[str]] = {}
    for table, triggers in wanted:
        for name, sql in triggers.items():
            if name not in present:
                problems.setdefault(table, []).append(f"trigger {name!r} is missing")
            elif present[name][1] != sql:
                problems.setdefault(table, []).append(f"trigger {name!r} is outdated")
    return problems
