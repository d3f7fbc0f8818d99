"""The local demo: a sample app database, the bundled Typesense, the daemon, a search.

Run through scripts/demo.sh (which sets up the virtualenv first). Everything lives in ./demo/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cdc_daemon.localserver import LocalTypesense

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
API_KEY = "demo-key"

CONFIG = """\
database: app.db
typesense:
  nodes: ["{url}"]
  api_key_env: DEMO_TYPESENSE_KEY
tables:
  - table: elements
    collection: service_a_collection
    fields:
      element_id: {{type: int32}}
      sequence_number: {{type: int32}}
      version_number: {{type: int32}}
      created_at: {{facet: true}}
      updated_at: {{facet: true}}
    default_sorting_field: sequence_number
"""


def cdc(*args: str) -> subprocess.CompletedProcess[str]:
    print(f"$ cdc-daemon {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "cdc_daemon", *args], cwd=DEMO, text=True,
                            capture_output=True, env={**os.environ, "DEMO_TYPESENSE_KEY": API_KEY})
    print(result.stdout, end="")
    if result.returncode not in (0, 1):
        print(result.stderr, file=sys.stderr)
        raise SystemExit(f"cdc-daemon {args[0]} failed with exit code {result.returncode}")
    return result


def app_writes(db: Path) -> None:
    """The app: plain stdlib sqlite3, knowing nothing about cdc-daemon."""
    conn = sqlite3.connect(db)
    rows = [("note", i, i, 1, f"demo element {i}: {word}") for i, word in
            enumerate(["apple", "banana", "cherry", "damson", "elderberry"], start=1)]
    conn.executemany("INSERT INTO elements (element_type, element_id, sequence_number,"
                     " version_number, comment) VALUES (?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.execute("UPDATE elements SET comment = 'demo element 2: blueberry', version_number = 2"
                 " WHERE element_id = 2")
    conn.execute("DELETE FROM elements WHERE element_id = 5")
    conn.commit()
    conn.close()


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    db = DEMO / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute((ROOT / "config" / "elements.sql").read_text(encoding="utf-8"))
    conn.close()

    print("starting the bundled Typesense server...", flush=True)
    with LocalTypesense(DEMO / "typesense", api_key=API_KEY) as server:
        (DEMO / "cdc.yaml").write_text(CONFIG.format(url=server.url))
        cdc("install")
        daemon = subprocess.Popen([sys.executable, "-m", "cdc_daemon", "run"], cwd=DEMO,
                                  env={**os.environ, "DEMO_TYPESENSE_KEY": API_KEY},
                                  stderr=open(DEMO / "daemon.log", "w"))  # noqa: SIM115
        try:
            print("the app writes 5 rows, updates one, deletes one (stdlib sqlite3)...", flush=True)
            app_writes(db)
            search = httpx.Client(base_url=server.url, headers={"X-TYPESENSE-API-KEY": API_KEY})
            params = {"q": "blueberry", "query_by": "comment"}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                response = search.get("/collections/service_a_collection/documents/search",
                                      params=params)
                if response.status_code == 200 and response.json()["found"]:
                    break
                time.sleep(0.05)
            hits = response.json()["hits"]
            print(f"search 'blueberry' → {len(hits)} hit(s):")
            for hit in hits:
                print("  " + json.dumps(hit["document"], ensure_ascii=False))
            cdc("status")
            verified = cdc("verify")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    print(f"daemon exited with {daemon.returncode}; its log is in demo/daemon.log")
    raise SystemExit(0 if hits and verified.returncode == 0 else 1)


if __name__ == "__main__":
    main()
