"""Reads of the app's database from the test process (stdlib sqlite3, a short read transaction
each): what a test checks, never how the app writes (that is app_writer)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def db_scalar(db: Path, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """One value read straight from the database."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        row = conn.execute(sql, params).fetchone()
        return None if row is None else row[0]
    finally:
        conn.close()


def db_rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def log_backlog(db: Path, log_table: str = "change_log") -> int:
    """Rows in the change log, counted directly (cheaper than `status` for tight polling)."""
    return int(db_scalar(db, f'SELECT COUNT(*) FROM "{log_table}"'))
