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
