"""The app holding a lock for seconds: a write transaction (BEGIN IMMEDIATE, one update) or a
read transaction (BEGIN, one SELECT; in rollback-journal mode that SHARED lock keeps every
writer from committing), held HOLD seconds, then COMMIT.

    python lock_holder.py DB HOLD_SECONDS write|read

Prints {"event": "locked", "wait_ms": ...} once it has the lock (how long the app waited for it,
e.g. behind the daemon's acknowledgement) and {"event": "committed"} at the end. stdlib sqlite3
with a 30 s busy timeout, in its own process, like the workload.
"""

import json
import sqlite3
import sys
import time


def main() -> None:
    db, hold, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    began = time.monotonic()
    if mode == "write":
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE users SET score = score + 1 WHERE id = (SELECT MIN(id) FROM users)")
    else:
        conn.execute("BEGIN")
        conn.execute("SELECT COUNT(*) FROM users").fetchall()
    waited = time.monotonic() - began
    print(json.dumps({"event": "locked", "wait_ms": round(waited * 1000, 1)}), flush=True)
    time.sleep(hold)  # the fault itself: an app transaction that keeps its lock for seconds
    conn.execute("COMMIT")
    conn.close()
    print(json.dumps({"event": "committed"}), flush=True)


if __name__ == "__main__":
    main()
