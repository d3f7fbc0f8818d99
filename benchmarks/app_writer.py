"""The benchmarks' app: writes `elements` rows with Python's stdlib sqlite3, in its own process.

    app_writer.py bulk DB --rows N --txn K [--start S]
        N rows in transactions of K rows, as fast as it can; prints one JSON line
        {"rows", "commits", "wall_s", "cpu_s"}.
    app_writer.py steady DB --rate R --seconds D --start S --out FILE
        one row per commit at R commits/s for D seconds; writes [[id, commit_time], ...] to
        FILE (time.monotonic(), which is CLOCK_MONOTONIC: comparable across processes) and
        prints {"commits", "wall_s", "achieved_rate"}.

Stands apart from cdc_daemon on purpose: it imports nothing of it (an app knows nothing of us).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time

INSERT = (
    "INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
    " comment) VALUES (?, ?, ?, ?, ?, ?)"
)
TYPES = ("note", "task", "image", "link", "section")
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")


def row(i: int) -> tuple[object, ...]:
    """A deterministic row: ~60-80 bytes of comment, a few ints, two timestamps by default."""
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6))
    return (i, TYPES[i % len(TYPES)], i % 100_000, i, 1 + i % 3, f"element {i}: {words}")


def connect(db: str, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def bulk(args: argparse.Namespace) -> None:
    conn = connect(args.db, args.synchronous)
    started, cpu = time.perf_counter(), time.process_time()
    commits = 0
    for first in range(args.start, args.start + args.rows, args.txn):
        last = min(first + args.txn, args.start + args.rows)
        conn.execute("BEGIN")
        if last - first == 1:
            conn.execute(INSERT, row(first))
        else:
            conn.executemany(INSERT, (row(i) for i in range(first, last)))
        conn.execute("COMMIT")
        commits += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    print(json.dumps({"rows": args.rows, "commits": commits, "wall_s": wall, "cpu_s": cpu}))


def steady(args: argparse.Namespace) -> None:
    conn = connect(args.db, args.synchronous)
    commits: list[tuple[int, float]] = []
    total = int(args.rate * args.seconds)
    started = time.monotonic()
    for n in range(total):
        due = started + n / args.rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        i = args.start + n
        conn.execute("BEGIN")
        conn.execute(INSERT, row(i))
        conn.execute("COMMIT")
        commits.append((i, time.monotonic()))
    wall = time.monotonic() - started
    conn.close()
    with open(args.out, "w") as out:
        json.dump(commits, out)
    print(json.dumps({"commits": total, "wall_s": wall, "achieved_rate": total / wall}))


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("bulk")
    b.add_argument("db")
    b.add_argument("--rows", type=int, required=True)
    b.add_argument("--txn", type=int, default=1000)
    b.add_argument("--start", type=int, default=1)
    s = sub.add_parser("steady")
    s.add_argument("db")
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--start", type=int, default=1)
    s.add_argument("--out", required=True)
    for p in (b, s):
        p.add_argument("--synchronous", default="NORMAL")
    args = parser.parse_args()
    {"bulk": bulk, "steady": steady}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
