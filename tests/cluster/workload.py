"""The app for the cluster tests: stdlib sqlite3 in a process of its own.

    python workload.py DB run SEED LOW HIGH   # random inserts/updates/deletes until SIGTERM
    python workload.py DB burst FIRST COUNT   # COUNT new rows in one transaction, then exit

(Single statements go through tests/support/app_writer.py.)

Rows of `items(id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER NOT NULL, note TEXT)`;
`run` keeps ids in [LOW, HIGH) and prints how many transactions it committed when it stops.
"""

import random
import signal
import sqlite3
import sys
import time

DDL = (
    "CREATE TABLE IF NOT EXISTS items ("
    "id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER NOT NULL, note TEXT)"
)


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def run(conn: sqlite3.Connection, seed: int, low: int, high: int) -> None:
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    rng = random.Random(seed)
    committed = 0
    counter = 0
    while not stop:
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(rng.randint(1, 8)):
            counter += 1
            key = rng.randrange(low, high)
            roll = rng.random()
            if roll < 0.55:
                note = None if rng.random() < 0.3 else f"note {counter}"
                conn.execute(
                    "INSERT INTO items (id, name, n, note) VALUES (?, ?, ?, ?) ON CONFLICT (id)"
                    " DO UPDATE SET name = excluded.name, n = excluded.n, note = excluded.note",
                    (key, f"item {key} v{counter}", counter, note),
                )
            elif roll < 0.85:
                conn.execute("UPDATE items SET n = ?, note = NULL WHERE id = ?", (counter, key))
            else:
                conn.execute("DELETE FROM items WHERE id = ?", (key,))
        conn.execute("COMMIT")
        committed += 1
        time.sleep(rng.uniform(0.02, 0.06))
    print(committed, flush=True)


def main() -> None:
    conn = connect(sys.argv[1])
    conn.execute(DDL)
    mode = sys.argv[2]
    if mode == "run":
        run(conn, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "burst":
        first, count = int(sys.argv[3]), int(sys.argv[4])
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO items (id, name, n, note) VALUES (?, ?, 1, ?)",
            ((i, f"item {i}", f"burst row {i}") for i in range(first, first + count)),
        )
        conn.execute("COMMIT")
    conn.close()


if __name__ == "__main__":
    main()
