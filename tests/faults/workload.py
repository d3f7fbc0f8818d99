"""The app under fault: a seeded random writer, in its own process, through stdlib sqlite3.

    python workload.py DB --seed S --keys KEYS.jsonl --stats STATS.json
                          [--rate TX_PER_S] [--max-transactions N] [--bad-fraction F]

Writes transactions of 1-4 random statements over four tables (an INTEGER key, a composite TEXT
key in a WITHOUT ROWID table, a table with a UNIQUE column, a NOCASE TEXT key holding ids that
are not plain words: `.`, `..`, `*`, `search`, long URLs, ...): inserts, updates, deletes,
INSERT OR REPLACE (evicting other rows through the UNIQUE index or the key), UPDATE OR REPLACE,
primary key changes and multi-row updates. The sequence of statements depends only on the seed.

Every key a statement names is appended to KEYS (one JSON line per transaction, flushed before
the transaction starts), so the set check covers every key ever written, even if this process
dies. Rows evicted by a REPLACE or touched by a multi-row update were written before, so they are
in KEYS too. On SIGTERM, SIGINT or after --max-transactions it finishes the transaction in hand,
writes STATS (counts and commit latencies) and exits 0. A transaction that fails (disk full,
locked past the timeout) is rolled back, counted and the writer goes on.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sqlite3
import sys
import time
from typing import Any

DDL = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER NOT NULL,"
    " price REAL, note TEXT)",
    "CREATE TABLE stock (region TEXT NOT NULL, code TEXT NOT NULL, qty INTEGER NOT NULL,"
    " label TEXT, PRIMARY KEY (region, code)) WITHOUT ROWID",
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT,"
    " score INTEGER NOT NULL)",
    "CREATE TABLE tags (tag TEXT PRIMARY KEY COLLATE NOCASE, n INTEGER NOT NULL)",
)
TABLES = ("items", "stock", "users", "tags")

ITEM_IDS = 400
# Awkward key text on purpose: quotes, commas, non-ASCII, a backtick and a trailing space (ids a
# filter_by delete cannot match, so the daemon must fall back to per-id deletes).
REGIONS = ("eu", "o'q", "ü s", "a,b", "x`y", "sp ")
CODES = tuple(f"c{i}" for i in range(30))
USER_IDS = 200
EMAILS = 140  # fewer emails than ids: REPLACE evicts through the UNIQUE index
WORDS = ("alpha", "beta", "gamma", "delta", "ψ", "n'o", "", "long " * 20)
# Document ids that are not plain words (each once broke something: a path segment, a filter, a
# route, a 404's words), in a NOCASE key that INSERT OR REPLACE changes the case of.
TAGS = (".", "..", "*", "a*", "search", "export", "Collection not found", "Not Found", "x/y",
        "a]b", "+1", "tick`", "back\\", " sp", "%2E", "Alice@Example.org", "中文标识",
        "https://example.com/" + "p/" * 60 + "end")

Statement = tuple[str, list[Any]]


class Generator:
    """Random statements; `keys` collects (table, key) for every key a statement names."""

    def __init__(self, seed: int, bad_fraction: float) -> None:
        self.rng = random.Random(seed)
        self.bad_fraction = bad_fraction
        self.keys: list[tuple[str, Any]] = []

    def _qty(self) -> Any:
        if self.bad_fraction and self.rng.random() < self.bad_fraction:
            return f"bad-{self.rng.randrange(1000)}"  # text in an INTEGER column: rejected
        return self.rng.randrange(-1000, 10**6)

    def _text(self) -> str | None:
        word = self.rng.choice(WORDS)
        return None if self.rng.random() < 0.1 else f"{word}{self.rng.randrange(100)}"

    def _price(self) -> float | None:
        choice = self.rng.random()
        if choice < 0.15:
            return None
        if choice < 0.3:
            return float(self.rng.randrange(100))  # integral REAL
        return round(self.rng.uniform(0, 1000), 3)

    def _item(self) -> int:
        key = self.rng.randrange(1, ITEM_IDS + 1)
        self.keys.append(("items", key))
        return key

    def _stock(self) -> tuple[str, str]:
        key = (self.rng.choice(REGIONS), self.rng.choice(CODES))
        self.keys.append(("stock", list(key)))
        return key

    def _user(self) -> int:
        key = self.rng.randrange(1, USER_IDS + 1)
        self.keys.append(("users", key))
        return key

    def _tag(self) -> str:
        """An awkward key, in a random case (the column is NOCASE): the key of the row it names
        may be another case of it, written before."""
        tag = self.rng.choice(TAGS)
        tag = self.rng.choice((tag, tag.upper(), tag.lower()))
        self.keys.append(("tags", tag))
        return tag

    def _email(self) -> str:
        return f"user{self.rng.randrange(EMAILS)}@example.org"

    def statement(self) -> Statement:
        r = self.rng
        kind = r.choices(
            range(18), weights=(8, 6, 4, 4, 3, 2, 6, 5, 3, 3, 6, 4, 3, 3, 1, 4, 2, 2)
        )[0]
        if kind == 0:
            return ("INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?)",
                    [self._item(), f"item {r.randrange(10**6)}", self._qty(), self._price(),
                     self._text()])
        if kind == 1:
            return ("UPDATE items SET qty = ?, price = ?, note = ? WHERE id = ?",
                    [self._qty(), self._price(), self._text(), self._item()])
        if kind == 2:
            return ("DELETE FROM items WHERE id = ?", [self._item()])
        if kind == 3:
            return ("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)",
                    [self._item(), f"replaced {r.randrange(10**6)}", self._qty(), self._price(),
                     self._text()])
        if kind == 4:  # primary key change (REPLACE: may also evict the row at the new key)
            return ("UPDATE OR REPLACE items SET id = ? WHERE id = ?", [self._item(), self._item()])
        if kind == 5:  # a multi-row update: every key it touches was written before
            return ("UPDATE items SET qty = qty + 1 WHERE id % 23 = ? AND typeof(qty) = 'integer'",
                    [r.randrange(23)])
        if kind == 6:
            region, code = self._stock()
            return ("INSERT OR REPLACE INTO stock VALUES (?, ?, ?, ?)",
                    [region, code, r.randrange(10**4), self._text()])
        if kind == 7:
            region, code = self._stock()
            return ("UPDATE stock SET qty = ?, label = ? WHERE region = ? AND code = ?",
                    [r.randrange(10**4), self._text(), region, code])
        if kind == 8:
            region, code = self._stock()
            return ("DELETE FROM stock WHERE region = ? AND code = ?", [region, code])
        if kind == 9:  # composite key change
            (r1, c1), (r2, c2) = self._stock(), self._stock()
            return ("UPDATE OR REPLACE stock SET region = ?, code = ?"
                    " WHERE region = ? AND code = ?", [r2, c2, r1, c1])
        if kind == 10:  # may evict another user through the UNIQUE email, or the same id
            return ("INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?)",
                    [self._user(), self._email(), self._text(), r.randrange(100)])
        if kind == 11:  # eviction through the UNIQUE index on update
            return ("UPDATE OR REPLACE users SET email = ? WHERE id = ?",
                    [self._email(), self._user()])
        if kind == 12:
            return ("UPDATE users SET score = score + ?, name = ? WHERE id = ?",
                    [r.randrange(1, 10), self._text(), self._user()])
        if kind == 13:
            return ("DELETE FROM users WHERE id = ?", [self._user()])
        if kind == 15:  # a REPLACE in another case replaces the row through its NOCASE key
            return ("INSERT OR REPLACE INTO tags VALUES (?, ?)", [self._tag(), r.randrange(100)])
        if kind == 16:
            return ("DELETE FROM tags WHERE tag = ?", [self._tag()])
        if kind == 17:
            return ("UPDATE tags SET n = n + 1 WHERE tag = ?", [self._tag()])
        return ("UPDATE stock SET qty = qty + 1 WHERE code = ?", [r.choice(CODES)])

    def transaction(self) -> list[Statement]:
        return [self.statement() for _ in range(self.rng.choice((1, 1, 1, 2, 3, 4)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--rate", type=float, default=200.0, help="transactions per second")
    parser.add_argument("--max-transactions", type=int, default=10**9)
    parser.add_argument("--bad-fraction", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="sqlite3 busy timeout")
    args = parser.parse_args()

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    generator = Generator(args.seed, args.bad_fraction)
    conn = sqlite3.connect(args.db, timeout=args.timeout, isolation_level=None)
    stats: dict[str, Any] = {"seed": args.seed, "attempted": 0, "committed": 0, "failed": 0,
                             "statements": 0, "errors": {}, "latencies_ms": []}
    started = time.monotonic()
    with open(args.keys, "a", encoding="utf-8") as keys_file:
        while not stopping and stats["attempted"] < args.max_transactions:
            # Pace to --rate (the app's own rhythm; nothing waits on it).
            due = started + stats["attempted"] / args.rate
            if (ahead := due - time.monotonic()) > 0:
                time.sleep(ahead)
            generator.keys.clear()
            transaction = generator.transaction()
            keys_file.write(json.dumps(generator.keys) + "\n")
            keys_file.flush()
            stats["attempted"] += 1
            began = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
                for sql, params in transaction:
                    conn.execute(sql, params)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                stats["failed"] += 1
                text = str(exc)
                stats["errors"][text] = stats["errors"].get(text, 0) + 1
                time.sleep(0.01)
                continue
            stats["latencies_ms"].append(round((time.monotonic() - began) * 1000, 2))
            stats["committed"] += 1
            stats["statements"] += len(transaction)
    conn.close()
    latencies = sorted(stats.pop("latencies_ms"))
    stats["max_commit_ms"] = latencies[-1] if latencies else None
    stats["p99_commit_ms"] = latencies[int(len(latencies) * 0.99)] if latencies else None
    stats["seconds"] = round(time.monotonic() - started, 2)
    with open(args.stats, "w", encoding="utf-8") as out:
        json.dump(stats, out)
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
