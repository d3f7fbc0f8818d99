"""The app for tests/integration/test_many_databases.py: one process writing several databases
(stdlib sqlite3, BEGIN IMMEDIATE) until a stop file appears.

Usage: python fleet_writer.py STOP_FILE SEED MAX_ID DB...
Round-robin over the databases, each transaction inserts, updates or deletes a few random rows
of `books (id INTEGER PRIMARY KEY, title TEXT NOT NULL)` with ids up to MAX_ID. Prints the number
of committed transactions when it stops.
"""

import random
import sqlite3
import sys
import time
from pathlib import Path


def main() -> None:
    stop_file, seed, max_id = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    conns = [sqlite3.connect(db, timeout=30, isolation_level=None) for db in sys.argv[4:]]
    committed = 0
    while not stop_file.exists():
        for conn in conns:
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(rng.randint(1, 4)):
                key = rng.randint(1, max_id)
                op = rng.random()
                if op < 0.45:
                    conn.execute("INSERT OR REPLACE INTO books (id, title) VALUES (?, ?)",
                                 (key, f"written {committed}"))
                elif op < 0.8:
                    conn.execute("UPDATE books SET title = ? WHERE id = ?",
                                 (f"updated {committed}", key))
                else:
                    conn.execute("DELETE FROM books WHERE id = ?", (key,))
            conn.execute("COMMIT")
            committed += 1
        time.sleep(0.02)  # pacing: two cores shared with the daemon and Typesense
    for conn in conns:
        conn.close()
    print(committed, flush=True)


if __name__ == "__main__":
    main()
