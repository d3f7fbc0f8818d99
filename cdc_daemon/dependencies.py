"""Documents that read other tables (`depends_on`): which rows a dependency row's change touches.

A configured table's computed fields may read other tables (an author's name on a book). A
change there must re-send the documents joined to the changed row, but never by fanning out in
the app's transaction: the triggers a dependency table gets (triggers.py) log ONE entry per row
change (op J): the table's name and the old, then the new values of its join columns. The daemon
acknowledges that entry in a transaction that also logs, with one INSERT ... SELECT per path, an
E entry for every key of a configured table joined to either version of the row (changelog.py).
Those are then synced like any change, in batches, from the rows as they are then.

A path runs from a configured table (the root) through hops to the dependency table: each hop
joins the parent's columns to the child's (`books.author_id = authors.id`, then
`authors.country_id = countries.id`). The rows a change touches are found from the child up:
the parent rows whose join columns hold the child's values, then their parents, up to the root.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cdc_daemon.database import Database, quote_ident, quote_literal
from cdc_daemon.errors import ConfigError
from cdc_daemon.log_schema import LogTables, Op
from cdc_daemon.row_keys import affinity, log_key_sql, parse_quoted_key


@dataclass(frozen=True)
class Hop:
    """`parent.parent_columns = child.child_columns`, column by column."""

    parent: str
    parent_columns: tuple[str, ...]
    child: str
    child_columns: tuple[str, ...]
    # Per column pair, where the two columns compare values differently (None where they
    # agree): the parent column as the child's would compare it (`{}` is the column), a second
    # lookup. A computed field's `=` may compare either way: a NOCASE child column, or a number
    # in the child and its text ('01', ' 1') in the parent (SQLite converts the text first).
    compare: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class DependencyPath:
    """From the root table (hops[0].parent) down to a dependency table (hops[-1].child)."""

    root: str
    hops: tuple[Hop, ...]
    entry: str = ""  # its config key (`tables[0].depends_on[1]`), for messages

    @property
    def table(self) -> str:
        return self.hops[-1].child


def path_text(path: DependencyPath) -> str:
    """One line for a path, e.g. `authors(author_id=id) > countries(country_id=id)`: what a
    mapping's record keeps (reconfigure.py), so that a new or changed path re-sends documents."""
    hops = []
    for hop in path.hops:
        pairs = zip(hop.parent_columns, hop.child_columns, strict=True)
        hops.append(f"{hop.child}({', '.join(f'{p}={c}' for p, c in pairs)})")
    return " > ".join(hops)


def join_columns(paths: Iterable[DependencyPath]) -> dict[str, tuple[str, ...]]:
    """Dependency table → the columns its triggers log (old and new values): those every path
    ending there joins on, in a fixed order (the triggers' text must not change between runs)."""
    columns: dict[str, set[str]] = {}
    for path in paths:
        columns.setdefault(path.table, set()).update(path.hops[-1].child_columns)
    return {table: tuple(sorted(names)) for table, names in sorted(columns.items())}


def payload_sql(columns: Sequence[str], old: str | None, new: str | None) -> str:
    """SQL for a J entry's `pk`, in a trigger: the old, then the new values of `columns`, each
    side read with its prefix (`OLD.`, `NEW.`, `` for the row a SELECT reads), NULL for a side
    the change has not (None). Always two or more parts: the composite key text, which keeps
    every value's type exactly (row_keys.log_key_sql)."""
    olds = [f"{old}{quote_ident(c)}" if old is not None else "NULL" for c in columns]
    news = [f"{new}{quote_ident(c)}" if new is not None else "NULL" for c in columns]
    return log_key_sql([*olds, *news])


def parse_payload(text: Any, width: int) -> list[tuple[Any, ...]]:
    """A J entry's old and new join values (`width` columns each), without a side that is all
    NULL (an insert has no old row; NULL joins nothing) and without a repeat."""
    values = parse_quoted_key(str(text), nulls=True)
    if len(values) != 2 * width:
        raise ValueError(f"{len(values)} values where {2 * width} were logged")
    sides = [values[:width], values[width:]]
    kept = [side for side in sides if any(v is not None for v in side)]
    return [side for i, side in enumerate(kept) if side not in kept[:i]]


def expansion(
    path: DependencyPath,
    root_key: Sequence[str],
    columns: Sequence[str],
    sides: Sequence[tuple[Any, ...]],
    names: LogTables,
) -> tuple[str, list[Any]]:
    """The INSERT ... SELECT that logs an E entry for each root key (`root_key`: its columns)
    joined through `path` to a row whose join columns (`columns`, as logged) held one of
    `sides`. One common table expression per hop, from the changed row up to the root's child:
    `hN` the changed row's values, `hK` the join values of the rows of hop K's parent joined to
    `hK+1`."""
    hops = path.hops
    picked = [columns.index(c) for c in hops[-1].child_columns]
    params = [side[i] for side in sides for i in picked]
    row = "(" + ", ".join("?" * len(picked)) + ")"
    ctes = [f"h{len(hops)} AS (VALUES {', '.join([row] * len(sides))})"]
    for k in range(len(hops) - 1, 0, -1):
        hop, above = hops[k], hops[k - 1]
        ctes.append(
            f"h{k} AS (SELECT {_columns(hop.parent, above.child_columns)}"
            f" FROM {quote_ident(hop.parent)} WHERE {_joined(hop, f'h{k + 1}')})"
        )
    key = log_key_sql([f"{quote_ident(path.root)}.{quote_ident(c)}" for c in root_key])
    sql = (
        f"WITH {', '.join(ctes)} INSERT INTO {quote_ident(names.log)} (tbl, pk, op)"
        f" SELECT {quote_literal(path.root)}, {key}, {quote_literal(Op.EXPANDED)}"
        f" FROM {quote_ident(path.root)} WHERE {_joined(hops[0], 'h1')}"
    )
    return sql, params


def _joined(hop: Hop, rows: str) -> str:
    """The hop's parent rows whose join columns hold one of `rows`' values: as the parent's
    columns compare them, and as the child's do where they differ (Hop.compare)."""
    match = f"{_tuple(hop.parent, hop.parent_columns)} IN {rows}"
    if not any(hop.compare):
        return match
    columns = [
        (how or "{}").format(f"{quote_ident(hop.parent)}.{quote_ident(c)}")
        for c, how in zip(hop.parent_columns, hop.compare, strict=True)
    ]
    other = columns[0] if len(columns) == 1 else f"({', '.join(columns)})"
    return f"({match} OR {other} IN {rows})"


def with_comparisons(db: Database, path: DependencyPath) -> DependencyPath:
    """The path with each hop's Hop.compare, from the columns' declared types and collations."""
    hops = []
    for hop in path.hops:
        pairs = zip(hop.parent_columns, hop.child_columns, strict=True)
        compare = [_second_lookup(db, hop.parent, p, hop.child, c) for p, c in pairs]
        hops.append(dataclasses.replace(hop, compare=tuple(compare)))
    return dataclasses.replace(path, hops=tuple(hops))


def _second_lookup(db: Database, parent: str, ours: str, child: str, theirs: str) -> str | None:
    our_type, our_collation = db.conn.column_metadata("main", parent, ours)[:2]
    their_type, their_collation = db.conn.column_metadata("main", child, theirs)[:2]
    numeric = ("INTEGER", "REAL", "NUMERIC")
    if affinity(their_type or "") in numeric and affinity(our_type or "") not in numeric:
        return "CAST({} AS NUMERIC)"
    if their_collation.upper() != our_collation.upper():
        return "{} COLLATE " + quote_ident(their_collation).replace("{", "{{").replace("}", "}}")
    return None


def _columns(table: str, columns: Sequence[str]) -> str:
    return ", ".join(f"{quote_ident(table)}.{quote_ident(c)}" for c in columns)


def _tuple(table: str, columns: Sequence[str]) -> str:
    text = _columns(table, columns)
    return text if len(columns) == 1 else f"({text})"


def roots_reading(
    tables: Iterable[str], paths: Iterable[DependencyPath], configured: Iterable[str]
) -> list[str]:
    """`tables`, each dependency table among them replaced by the configured tables whose
    documents read it (one that is also configured itself stays), once each."""
    paths, configured = list(paths), set(configured)
    found: list[str] = []
    for table in tables:
        own = [table] if table in configured else []
        for name in own + [path.root for path in paths if path.table == table]:
            if name not in found:
                found.append(name)
    return found


def path_problem(db: Database, path: DependencyPath) -> ConfigError | None:
    """Why the path's last hop can't be followed (its table or a join column is missing), with
    the key relative to the path's entry; None when it can. Names are matched exactly, as for
    configured tables; one that differs only in ASCII case is named in the message."""
    hop = path.hops[-1]
    if not db.table_exists(hop.child):
        tables = [
            name for (name,) in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        return ConfigError(
            f"table {hop.child!r} does not exist (or is not a table){_spelled(hop.child, tables)}",
            key="table",
        )
    sides = ((hop.parent, hop.parent_columns, "a parent"), (hop.child, hop.child_columns, "its"))
    for table, columns, side in sides:
        names = [c.name for c in db.table_info(table).columns]
        for column, mapped in zip(columns, hop.parent_columns, strict=True):
            if column not in names:
                return ConfigError(
                    f"no column {column!r} in {table!r} ({side} join column)"
                    + _spelled(column, names),
                    key=f"join.{mapped}",
                )
    return None


def _spelled(name: str, names: Iterable[str]) -> str:
    """`; it is spelled 'x'` when a name differs from `name` only in ASCII case."""
    fold = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
    same = [other for other in names if other.translate(fold) == name.translate(fold)]
    return f"; it is spelled {same[0]!r} (names are matched exactly)" if same else ""


def missing_indexes(db: Database, paths: Iterable[DependencyPath]) -> list[str]:
    """The lookups of the paths no index serves: finding the rows a change touches then reads
    the whole parent table, once per change. One line per lookup, naming the index to create."""
    problems = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for path in paths:
        for hop in path.hops:
            lookup = (hop.parent, hop.parent_columns)
            if lookup in seen or _indexed(db, *lookup):
                continue
            seen.add(lookup)
            name = quote_ident("_".join((hop.parent, *hop.parent_columns)))
            columns = ", ".join(quote_ident(c) for c in hop.parent_columns)
            problems.append(
                f"{path.entry}: no index on {hop.parent!r} ({', '.join(hop.parent_columns)}):"
                f" each change in {hop.child!r} reads all of {hop.parent!r}; create one:"
                f" CREATE INDEX {name} ON {quote_ident(hop.parent)} ({columns})"
            )
    return problems


def _indexed(db: Database, table: str, columns: Sequence[str]) -> bool:
    """An index (or the rowid) finds the table's rows by `columns`: its leading columns are
    those columns, in any order."""
    info = db.table_info(table)
    rowid = len(info.key) == 1 and info.column(info.key[0]).declared_type.upper() == "INTEGER"
    if rowid and list(columns) == list(info.key):
        return True  # INTEGER PRIMARY KEY: the rowid itself
    wanted = set(columns)
    for (index,) in db.query("SELECT name FROM pragma_index_list(?)", (table,)):
        leading = [
            name
            for (name,) in db.query(
                "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (index,)
            )
        ][: len(wanted)]
        if set(leading) == wanted:
            return True
    return False
