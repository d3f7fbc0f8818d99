"""Stands in for the app: applies SQL with Python's stdlib sqlite3, in a process of its own.

Usage: python app_writer.py DB  < JSON list of transactions; each transaction is a list of
[sql, params] pairs, committed together. Prints one line per committed transaction.
"""

import json
import sqlite3
import sys


def main() -> None:
    db = sys.argv[1]
    transactions = json.load(sys.stdin)
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    for transaction in transactions:
        if len(transaction) == 1 and transaction[0][0].lstrip().upper().startswith("PRAGMA"):
            # Outside a transaction: inside one, `PRAGMA journal_mode=WAL` is silently ignored.
            conn.execute(*transaction[0]).fetchall()
            print("committed", flush=True)
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in transaction:
                conn.execute(sql, params)
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        print("committed", flush=True)
    conn.close()


if __name__ == "__main__":
    main()
