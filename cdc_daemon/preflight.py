"""What `check` (and start-up) can find before anything is synced: a table's row query that does
not compile, and sampled rows Typesense would reject (what else `run` refuses at start:
startup_checks.py).

The value rules are Typesense 0.24.1's with `dirty_values=reject` (how the daemon imports),
measured on the bundled server (tests/integration/test_check_finds.py compares every field type
and value kind with it); the reasons are its own words.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import apsw
import apsw.ext

from cdc_daemon.database import Database, quote_ident
from cdc_daemon.documents import (
    build_document,
    field_value,
    row_is_live,
    row_key,
    size_problem,
)
from cdc_daemon.errors import DocumentError
from cdc_daemon.schema import TableMapping, in_parentheses
from cdc_daemon.sink import encode_document
from cdc_daemon.table_rows import ROW_QUERY_ERRORS, page_after, row_query

SAMPLE_ROWS = 100  # per table: the first rows by key, one short read
_ARTICLE = {"int32": "an", "int64": "an"}  # Typesense: "must be an int32", "must be a float"


# -- a table's row query ---------------------------------------------------------------------


def _compile_problem(db: Database, sql: str) -> str | None:
    """Why SQLite can't compile `sql` as one statement (None: it can). Nothing is run."""
    try:
        details = apsw.ext.query_info(db.conn, sql)
    except apsw.Error as exc:
        return str(exc)
    if (details.query_remaining or "").strip():
        return "it ends the row filter and starts another statement"
    return None


def expression_problem(conn: apsw.Connection, table: str, sql: str) -> str | None:
    """Why a computed field's expression can't be one in `table`'s row query (None: it can):
    it does not compile, could write, or is not exactly one expression (`1), (2` or a comment
    that hides the rest of the query). Nothing is run."""
    try:
        query = f"SELECT {in_parentheses(sql)}, NULL FROM {quote_ident(table)}"
        details = apsw.ext.query_info(conn, query)
    except apsw.Error as exc:
        return str(exc)
    if (details.query_remaining or "").strip():
        return "it ends the expression and starts another statement"
    if not details.is_readonly:
        return "it could write to the database"
    if len(details.description or ()) != 2:
        return "it is not exactly one expression (a comma, or a comment hiding the rest)"
    return None


def tables_read(conn: apsw.Connection, table: str, sql: str) -> set[str]:
    """The tables (views: the tables they read) a computed field's expression in `table`'s row
    query reads, but `table` itself: those whose changes can change the field's value. Table-
    valued functions (json_each) and SQLite's own tables are left out. The expression must
    compile (expression_problem)."""
    details = apsw.ext.query_info(
        conn, f"SELECT {in_parentheses(sql)} FROM {quote_ident(table)}", actions=True
    )
    read = {
        action.table_name
        for action in details.actions or ()
        if action.action_name == "SQLITE_READ" and action.table_name
    }
    real = {
        name
        for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
        if not name.startswith("sqlite_")
    }
    return (read & real) - {table}


def unwatched_reads(
    db: Database, mapping: TableMapping, entry: str, watched: Collection[str]
) -> list[str]:
    """One line per computed field that reads a table outside `watched` (the table's
    depends_on): a change there would leave its documents stale."""
    problems = []
    for field in mapping.computed_fields:
        assert field.sql is not None
        for other in sorted(tables_read(db.conn, mapping.table, field.sql) - set(watched)):
            problems.append(
                f"{entry}.fields.{field.name}.sql reads {other!r}, which is not in"
                f" {entry}.depends_on: its changes will not re-send these documents"
            )
    return problems


def row_query_problem(db: Database, mapping: TableMapping, entry: str) -> str | None:
    """Why the query that reads this table's rows (its columns, computed fields, `where` and
    `soft_delete`, as sync, backfill and verify use them) does not compile, naming the config
    key under `entry` (the table's `tables[N]`, as the root numbers them:
    wiring.table_entries); None when it does."""
    for field in mapping.computed_fields:
        assert field.sql is not None
        problem = expression_problem(db.conn, mapping.table, field.sql)
        if problem is not None:
            usable = f"is not a usable expression for {mapping.table!r}"
            return f"{entry}.fields.{field.name}.sql: {field.sql!r} {usable}: {problem}"
    problem = _compile_problem(db, f"{row_query(mapping, filtered=False)} LIMIT 0")
    if problem is not None:
        return f"{entry}.table: cannot read table {mapping.table!r}: {problem}"
    if mapping.where is None:
        return None
    problem = _compile_problem(db, f"{row_query(mapping)} LIMIT 0")
    if problem is None:
        return None
    usable = f"is not a usable row filter for {mapping.table!r}"
    return f"{entry}.where: {mapping.where!r} {usable}: {problem}"


def row_failure_problem(db: Database, mapping: TableMapping, entry: str, error: str) -> str:
    """One line for a row query that failed while running (SQLite's `error`), naming the config
    key: its compile problem when it no longer compiles (the table dropped or altered since),
    else the `where` failing on some row (`json_extract` of text that is not JSON)."""
    problem = row_query_problem(db, mapping, entry)
    if problem is not None:
        return problem
    if mapping.where is not None:
        return f"{entry}.where: {mapping.where!r} fails on rows of {mapping.table!r}: {error}"
    return f"{entry}.table: cannot read table {mapping.table!r}: {error}"


# -- values Typesense rejects ------------------------------------------------------------------


def _fits(base: str, value: Any) -> bool:
    """A scalar for a field of type `base`, as Typesense 0.24.1 accepts it without coercion."""
    if base in ("string", "string*"):
        return isinstance(value, str)
    if type(value) is bool:  # JSON true/false: only a bool field takes them
        return base == "bool"
    if base in ("int32", "int64"):
        return isinstance(value, int)  # int32 overflow is accepted (documents.py refuses it)
    if base == "float":
        return isinstance(value, int | float)
    return base != "bool"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and type(value) is not bool


def value_problem(name: str, field_type: str, value: Any) -> str | None:
    """Typesense's reason for rejecting `value` in field `name` of `field_type`, None if it
    takes it. Types whose rules are Typesense's own business (auto, object, object[]) pass."""
    reason = f"Field `{name}` must be"
    if field_type in ("auto", "object", "object[]"):
        return None  # auto: typed by the first document; objects: checked by documents.py
    if field_type == "geopoint":
        if not isinstance(value, list) or len(value) != 2:
            return f"{reason} a 2 element array: [lat, lng]."
        return None if all(map(_is_number, value)) else f"{reason} a geopoint."
    if field_type.endswith("[]"):
        base = field_type[:-2]
        if not isinstance(value, list):
            return f"{reason} an array."
        if all(_fits(base, item) for item in value):
            return None
        article = "an" if base in ("string", "int32", "int64") else "a"  # sic, as Typesense
        return f"{reason} {article} array of {base}."
    if _fits(field_type, value):
        return None
    return f"{reason} {_ARTICLE.get(field_type, 'a')} {field_type.rstrip('*')}."


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Finding:
    """Sampled rows one problem hits, and the first of them."""

    count: int
    example: str


def _document_findings(
    mapping: TableMapping, key: tuple[Any, ...], row: Sequence[Any], findings: dict[str, _Finding]
) -> None:
    """Add what is wrong with one row's document to `findings` (key: the config key path's
    tail, `fields.<column>` or the row-level problem)."""
    shown_key = _shown(key[0] if len(key) == 1 else key)
    if _field_findings(mapping, shown_key, row, findings):
        return  # the row's document can't be built: nothing more to say about it
    try:
        document = build_document(mapping, row)
        oversize = size_problem(encode_document(document))
    except (DocumentError, ValueError, TypeError) as exc:  # as the sync step catches them
        _add(findings, f":{str(exc).split(':')[0]}", f"key {shown_key}: {exc}")
        return
    if oversize is not None:
        _add(findings, ":size", f"key {shown_key}: {oversize}")


def _field_findings(
    mapping: TableMapping, shown_key: str, row: Sequence[Any], findings: dict[str, _Finding]
) -> bool:
    """Add each field of the row that documents.py refuses (a value that doesn't fit, a NULL
    that is not optional, a computed field's failing expression) or Typesense would reject, at
    its own key; whether documents.py refused one (then the row has no document)."""
    refused = False
    for field, value in zip(mapping.fields, row[len(mapping.key) :], strict=False):
        where = f"fields.{field.column}"
        try:
            sent = field_value(field, value)
        except DocumentError as exc:
            _add(findings, where, f"key {shown_key}: {exc}")
            refused = True
            continue
        problem = None if sent is None else value_problem(field.name, field.type, sent)
        if problem is not None:
            _add(findings, where, f"key {shown_key}: {_shown(value)} ({problem})")
    return refused


def _add(findings: dict[str, _Finding], where: str, example: str) -> None:
    finding = findings.get(where)
    if finding is None:
        findings[where] = _Finding(1, example)
    else:
        finding.count += 1


def sample_problems(
    db: Database, mapping: TableMapping, entry: str, limit: int = SAMPLE_ROWS
) -> list[str]:
    """Build the documents of the table's first `limit` rows (by key, matching `where`, not
    soft-deleted) and say, per field, how many Typesense would reject and why, with an example
    key and value. `entry`: the table's config key path from the root (`tables[N]`)."""
    with db.read() as conn:
        try:
            rows = page_after(conn, mapping, None, limit)
        except ROW_QUERY_ERRORS as exc:  # the running daemon skips this table: say why
            return [row_failure_problem(db, mapping, entry, str(exc))]
    live = [row for row in rows if row_is_live(mapping, row)]
    findings: dict[str, _Finding] = {}
    for row in live:
        _document_findings(mapping, row_key(mapping, row), row, findings)
    problems = []
    types = {f"fields.{f.column}": f for f in mapping.fields}
    for where_key, finding in findings.items():
        field = types.get(where_key)
        what = f"field {field.name!r} ({field.type})" if field else "documents"
        path = f"{entry}.{where_key}" if field else entry
        problems.append(
            f"{path}: table {mapping.table!r}, {what}: Typesense will reject {finding.count} of"
            f" {len(live)} sampled rows, e.g. {finding.example}"
        )
    return problems
