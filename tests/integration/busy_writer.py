"""A second app process that keeps writing the elements table until a stop file appears.

Usage: python busy_writer.py DB STOP_FILE SEED MAX_ID
Each transaction (stdlib sqlite3, BEGIN IMMEDIATE) inserts, updates or deletes a few random rows
with ids up to MAX_ID. Prints the number of committed transactions when it stops.
"""

import random
import sqlite3
import sys
import time
from pathlib import Path


def main() -> None:
    db, stop_file, seed, max_id = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    committed = 0
    while not stop_file.exists():
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(rng.randint(1, 5)):
            key = rng.randint(1, max_id)
            op = rng.random()
            if op < 0.4:
                conn.execute(
                    "INSERT OR REPLACE INTO elements (id, element_type, element_id,"
                    " sequence_number, version_number, comment) VALUES (?, 'live', ?, ?, 1, ?)",
                    (key, key, key, f"live {committed}"),
                )
            elif op < 0.8:
                conn.execute(
                    "UPDATE elements SET version_number = version_number + 1, comment = ?"
                    " WHERE id = ?",
                    (f"updated {committed}", key),
                )
            else:
                conn.execute("DELETE FROM elements WHERE id = ?", (key,))
        conn.execute("COMMIT")
        committed += 1
        time.sleep(0.003)  # pacing: leave the write lock and a core to the others
    conn.close()
    print(committed, flush=True)


if __name__ == "__main__":
    main()
