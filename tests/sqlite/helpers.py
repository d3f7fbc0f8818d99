"""The app process (stdlib sqlite3, its own process) and a database with cdc-daemon installed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unit.helpers import same_key as same_key  # one definition, shared
from unit.helpers import same_value as same_value

from cdc_daemon.config import TableConfig
from cdc_daemon.database import Database, TableInfo
from cdc_daemon.log_schema import LogTables
from cdc_daemon.row_keys import Key, log_key_to_key
from cdc_daemon.schema import TableMapping
from cdc_daemon.table_rows import rows_by_keys
from cdc_daemon.triggers import install
from cdc_daemon.wiring import mapping_from_config

HERE = Path(__file__).parent

Statement = str | tuple[str, list[Any]]


class AppError(Exception):
    """The app's write failed: `kind` is the sqlite3 exception class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


def _encode(value: Any) -> Any:
    return {"$blob": value.hex()} if isinstance(value, bytes) else value


def _decode(value: Any) -> Any:
    return bytes.fromhex(value["$blob"]) if isinstance(value, dict) else value


class App:
    """A long-lived process that writes like an app does, with Python's stdlib sqlite3."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "app_process.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )

    def _call(self, request: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the app process died"
        answer = json.loads(line)
        if not answer["ok"]:
            raise AppError(answer["error"], answer["message"])
        return [tuple(_decode(v) for v in row) for row in answer.get("rows", [])]

    def sqlite_version(self) -> str:
        return str(self._call({"op": "version"})[0][0])

    def tx(self, db: Path, *statements: Statement) -> list[tuple[Any, ...]]:
        """Run the statements in one transaction (BEGIN IMMEDIATE … COMMIT); rows of the last."""
        return self._call(
            {"op": "exec", "db": str(db), "tx": True, "statements": _pairs(statements)}
        )

    def each(self, db: Path, *statements: Statement) -> list[tuple[Any, ...]]:
        """Run the statements in autocommit mode, one after the other; rows of the last."""
        return self._call(
            {"op": "exec", "db": str(db), "tx": False, "statements": _pairs(statements)}
        )

    def close(self, db: Path) -> None:
        self._call({"op": "close", "db": str(db)})

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _pairs(statements: tuple[Statement, ...]) -> list[list[Any]]:
    pairs = []
    for statement in statements:
        sql, params = (statement, []) if isinstance(statement, str) else statement
        pairs.append([sql, [_encode(p) for p in params]])
    return pairs


@dataclass(frozen=True)
class Logged:
    seq: int
    table: str
    key: Key
    op: str


class World:
    """One app database: created by the app, opened by cdc-daemon (APSW), triggers installed."""

    def __init__(self, app: App, path: Path, journal_mode: str) -> None:
        self.app = app
        self.path = path
        self.names = LogTables("change_log")
        mode = app.each(path, f"PRAGMA journal_mode={journal_mode}")
        assert mode == [(journal_mode,)]
        self.db: Database | None = None

    def sql(self, *statements: Statement) -> list[tuple[Any, ...]]:
        """The app, one transaction."""
        return self.app.tx(self.path, *statements)

    def open(self) -> Database:
        if self.db is None:
            self.db = Database(self.path)
        return self.db

    def info(self, table: str) -> TableInfo:
        return self.open().table_info(table)

    def install(self, *tables: str) -> list[str]:
        db = self.open()
        return install(db, self.names, [db.table_info(t) for t in tables])

    def mapping(self, table: str) -> TableMapping:
        return mapping_from_config(self.info(table), TableConfig(table=table))

    def log(self) -> list[Logged]:
        db = self.open()
        widths: dict[str, int] = {}
        result = []
        for seq, table, pk, op in db.query("SELECT seq, tbl, pk, op FROM change_log ORDER BY seq"):
            if table not in widths:
                widths[table] = len(db.table_info(table).key)
            result.append(Logged(seq, table, log_key_to_key(pk, widths[table]), op))
        return result

    def raw_log(self) -> list[tuple[Any, ...]]:
        return self.open().query("SELECT tbl, pk, op FROM change_log ORDER BY seq")

    def keys(self, table: str | None = None) -> Counter[Key]:
        """How many times each key was logged (for one table, or all)."""
        return Counter(e.key for e in self.log() if table is None or e.table == table)

    def ops(self, table: str | None = None) -> list[tuple[Key, str]]:
        return [(e.key, e.op) for e in self.log() if table is None or e.table == table]

    def clear_log(self) -> None:
        """What the daemon does once a batch is acknowledged."""
        with self.open().write() as conn:
            conn.execute("DELETE FROM change_log")

    def rows_found(self, table: str, keys: list[Key]) -> dict[Key, tuple[Any, ...]]:
        """The daemon's own lookup: which of these keys find their row (one snapshot)."""
        db = self.open()
        with db.read() as conn:
            return rows_by_keys(conn, self.mapping(table), keys)

    def close(self) -> None:
        self.app.close(self.path)
        if self.db is not None:
            self.db.close()
            self.db = None


def same_keys(a: list[Key] | set[Key], b: list[Key] | set[Key]) -> bool:
    """Equal as key multisets, with types compared too (1 and 1.0 and '1' differ)."""

    def typed(keys: list[Key] | set[Key]) -> Counter[tuple[tuple[str, Any], ...]]:
        return Counter(tuple((type(v).__name__, v) for v in k) for k in keys)

    return typed(a) == typed(b)
