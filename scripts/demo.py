"""The local demo: a sample app database, the bundled Typesense, the daemon, a search.

Run through scripts/demo.sh (which sets up the virtualenv first). Everything lives in ./demo/
(`--dir` and `--port` are for the test that runs it),
left for the user to try commands on: the config names a key file, not a variable to export, and
Typesense's port (8108 when free), so `cdc-daemon local-typesense --data-dir demo/typesense`
brings the same server back. The last lines printed say how.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cdc_daemon.localserver import LocalTypesense, api_key_from, free_port, port_free

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """\
database: app.db
typesense:
  nodes: ["{url}"]
  api_key_file: typesense/api.key
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


def cdc(demo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    print(f"$ cdc-daemon {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "cdc_daemon", *args], cwd=demo, text=True,
                            capture_output=True)
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
    parser = argparse.ArgumentParser(description="the local demo")
    parser.add_argument("--dir", type=Path, default=ROOT / "demo")
    parser.add_argument("--port", type=int, help="default: 8108 when free, else any free port")
    args = parser.parse_args()
    demo = args.dir.resolve()
    port = args.port or (8108 if port_free(8108) else free_port())
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    db = demo / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute((ROOT / "config" / "elements.sql").read_text(encoding="utf-8"))
    conn.close()

    print("starting the bundled Typesense server...", flush=True)
    # The key file where `local-typesense --data-dir demo/typesense` looks for it.
    api_key = api_key_from(demo / "typesense" / "api.key")
    with LocalTypesense(demo / "typesense", api_key=api_key, port=port) as server:
        (demo / "cdc.yaml").write_text(CONFIG.format(url=server.url))
        cdc(demo, "install")
        daemon = subprocess.Popen([sys.executable, "-m", "cdc_daemon", "run"], cwd=demo,
                                  stderr=open(demo / "daemon.log", "w"))  # noqa: SIM115
        try:
            print("the app writes 5 rows, updates one, deletes one (stdlib sqlite3)...", flush=True)
            app_writes(db)
            search = httpx.Client(base_url=server.url, headers={"X-TYPESENSE-API-KEY": api_key})
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
            cdc(demo, "status")
            verified = cdc(demo, "verify")
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
    print(f"daemon exited with {daemon.returncode}; its log is in {demo / 'daemon.log'}")
    print(NEXT_STEPS.format(port=port))
    raise SystemExit(0 if hits and verified.returncode == 0 else 1)


NEXT_STEPS = """
The demo stopped its daemon and Typesense; its files stay in demo/ (app.db, cdc.yaml).
Try it yourself. The commands are in .venv/bin (`source .venv/bin/activate` puts them on PATH):

  .venv/bin/cdc-daemon local-typesense --data-dir demo/typesense --port {port}   # Typesense again

and in a second terminal:

  cd demo
  ../.venv/bin/cdc-daemon status        # what is synced, what waits
  ../.venv/bin/python -c 'import sqlite3; c = sqlite3.connect("app.db"); c.execute("UPDATE elements SET comment = ? WHERE element_id = 1", ["hello world"]); c.commit()'
  ../.venv/bin/cdc-daemon run --once    # syncs what changed, then exits (without --once it stays)
  curl -s -H "X-TYPESENSE-API-KEY: $(cat typesense/api.key)" \\
      "http://127.0.0.1:{port}/collections/service_a_collection/documents/search?q=hello&query_by=comment"
  ../.venv/bin/cdc-daemon verify        # exit 0: every row has its exact document

Your own app: README.md, "Quick start for your own app". Every command: cdc-daemon --help.
"""  # noqa: E501


if __name__ == "__main__":
    main()
