"""The app, in its own process: Python's stdlib sqlite3 (SQLite 3.40 here, older than APSW's).

Reads one JSON request per line on stdin and answers one JSON line on stdout:
  {"op": "exec", "db": PATH, "statements": [[sql, params], ...], "tx": true}
      → {"ok": true, "rows": [...]} (rows of the last statement) or
        {"ok": false, "error": "IntegrityError", "message": "..."} (the transaction rolled back)
  {"op": "close", "db": PATH}  → {"ok": true}
  {"op": "version"}            → {"ok": true, "rows": [["3.40.1"]]}
Blobs travel as {"$blob": "hex"}; floats (and ±Infinity) as JSON numbers, exactly.
"""

import json
import sqlite3
import sys


def decode(value):
    if isinstance(value, dict):
        return bytes.fromhex(value["$blob"])
    return value


def encode(value):
    if isinstance(value, bytes):
        return {"$blob": value.hex()}
    return value


def handle(connections, request):
    op = request["op"]
    if op == "version":
        return {"ok": True, "rows": [[sqlite3.sqlite_version]]}
    db = request["db"]
    if op == "close":
        conn = connections.pop(db, None)
        if conn is not None:
            conn.close()
        return {"ok": True}
    conn = connections.get(db)
    if conn is None:
        conn = connections[db] = sqlite3.connect(db, timeout=30, isolation_level=None)
    rows = []
    in_tx = bool(request.get("tx"))
    try:
        if in_tx:
            conn.execute("BEGIN IMMEDIATE")
        for sql, params in request["statements"]:
            cursor = conn.execute(sql, [decode(p) for p in params])
            rows = [[encode(v) for v in row] for row in cursor.fetchall()]
        if in_tx:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    return {"ok": True, "rows": rows}


def main():
    connections = {}
    for line in sys.stdin:
        answer = handle(connections, json.loads(line))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    for conn in connections.values():
        conn.close()


if __name__ == "__main__":
    main()
