"""Documents from several tables (issue 17): computed and joined fields, a change fanned out to
many documents, and what a dependency table's triggers cost the app. All ratios within one run.

    .venv/bin/python benchmarks/dependencies.py [--quick] [--repeats 2] [--books 100000]
        [--fanout 100000] [--batch 5000] [--parts 1,2,3]

The tables (an index on books(author_id), book_tags keyed by (book_id, tag)):
    authors (id, name, country)        books (id, title, author_id, published_at, pages, summary)
    book_tags (book_id, tag)           3 tags per book, 1,000 authors (part 1)

1. Throughput with computed fields: `plain` syncs books column for column; `computed` adds
   author_name (scalar subquery on authors), tags (json_group_array over book_tags),
   published_ts (CAST(strftime('%s', published_at) AS INTEGER)) and kind ('book'), with
   depends_on authors and book_tags. Authors and tags are in the database before `install`; the
   clock starts when the app process starts committing N books (stdlib sqlite3, 1,000-row
   transactions) and stops when the collection counts N documents (as throughput.py).
   `computed+tags` has the app also write each book's 3 tags in the same transaction: 3 J
   entries per book, each re-sending the book (E entries); its clock stops when, in addition,
   the log is empty. Plain and computed runs alternate; the ratio is taken per repeat.
2. Fan-out: one author with F books, all synced (backfill). The app process commits
   `UPDATE authors SET name=... WHERE id=1`; the clock runs from its COMMIT until a search
   (`filter_by=author_name:=<new name>`, per_page=0, every 50 ms) finds all F books. Against
   the raw import of the same F documents (exported from the daemon's collection, JSON lines
   ready before the clock) into a fresh collection of the same schema, one
   `import?action=upsert` per batch of the daemon's batch size, and (for reference) the same
   documents with another name upserted over the F existing ones, and only the changed field
   (`{"id", "author_name"}` lines, action=update) over them.
3. The app's commit rate, 1-row transactions, WAL + synchronous=NORMAL (the harshest case, as
   in writer_overhead.py), into a copy of a database with 20,000 authors and books: insert,
   update and delete on authors with the 3 dependency triggers (`books` depends on it) against
   books with its root triggers; for reference authors with root triggers (the same table
   configured on its own) and each table without triggers. Runs alternate; median of repeats.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from benchlib import (
    API_KEY,
    PYTHON,
    World,
    arguments,
    cdc,
    cpu_seconds,
    machine,
    median,
    print_table,
    save,
    wait_until,
)

SCHEMA = (
    "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT)",
    "CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, author_id INTEGER,"
    " published_at TEXT, pages INTEGER, summary TEXT)",
    "CREATE INDEX books_author_id ON books (author_id)",
    "CREATE TABLE book_tags (book_id INTEGER NOT NULL, tag TEXT NOT NULL,"
    " PRIMARY KEY (book_id, tag))",
)
PLAIN: dict[str, Any] = {"table": "books"}
COMPUTED: dict[str, Any] = {
    "table": "books",
    "fields": {
        "author_name": {"type": "string", "optional": True, "facet": True,
                        "sql": "SELECT name FROM authors WHERE authors.id = books.author_id"},
        "tags": {"type": "string[]",
                 "sql": "SELECT json_group_array(tag) FROM book_tags"
                        " WHERE book_tags.book_id = books.id"},
        "published_ts": {"type": "int64", "optional": True,
                         "sql": "CAST(strftime('%s', published_at) AS INTEGER)"},
        "kind": {"type": "string", "sql": "'book'"},
    },
    "depends_on": [
        {"table": "authors", "join": {"author_id": "id"}},
        {"table": "book_tags", "join": {"id": "book_id"}},
    ],
}
AUTHORS_ROOT: dict[str, Any] = {"table": "authors"}
AUTHORS = 1000
TAGS_PER_BOOK = 3
APP_TXN = 1000
SEARCH_EVERY = 0.05

# The app: stdlib sqlite3 in its own process, nothing of cdc_daemon (run with `python -c`).
APP = r'''
import json, sqlite3, sys, time
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa")
TAGS = tuple(f"tag{k}" for k in range(40))
def book(i, authors):
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6))
    day = f"{1950 + i % 70:04d}-{1 + i % 12:02d}-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00"
    return (i, f"book {i}: {words}", 1 + i % authors, day, 50 + i % 900, f"about {words}")
def tags(i):
    return [(i, TAGS[(i * 3 + k * 7) % len(TAGS)]) for k in range(3)]
BOOK = "INSERT INTO books VALUES (?, ?, ?, ?, ?, ?)"
TAG = "INSERT INTO book_tags VALUES (?, ?)"
STATEMENTS = {
    ("insert", "authors"): ("INSERT INTO authors VALUES (?, ?, ?)",
                            lambda i, n: (n + 1 + i, f"author {n + 1 + i}", "nowhere")),
    ("insert", "books"): (BOOK, lambda i, n: book(n + 1 + i, n)),
    ("update", "authors"): ("UPDATE authors SET name = ? WHERE id = ?",
                            lambda i, n: (f"renamed {i}", 1 + i % n)),
    ("update", "books"): ("UPDATE books SET title = ? WHERE id = ?",
                          lambda i, n: (f"renamed {i}", 1 + i % n)),
    ("delete", "authors"): ("DELETE FROM authors WHERE id = ?", lambda i, n: (1 + i,)),
    ("delete", "books"): ("DELETE FROM books WHERE id = ?", lambda i, n: (1 + i,)),
}
mode, db, *rest = sys.argv[1:]
conn = sqlite3.connect(db, timeout=60, isolation_level=None)
conn.execute("PRAGMA synchronous=NORMAL")
started, cpu = time.perf_counter(), time.process_time()
if mode == "books":  # first count authors with_tags
    first, count, authors, with_tags = (int(x) for x in rest)
    for lo in range(first, first + count, 1000):
        ids = range(lo, min(lo + 1000, first + count))
        conn.execute("BEGIN")
        conn.executemany(BOOK, (book(i, authors) for i in ids))
        if with_tags:
            conn.executemany(TAG, (t for i in ids for t in tags(i)))
        conn.execute("COMMIT")
    out = {"rows": count}
elif mode == "commits":  # op table count existing
    op, table, count, existing = rest[0], rest[1], int(rest[2]), int(rest[3])
    sql, args = STATEMENTS[(op, table)]
    for i in range(count):
        conn.execute("BEGIN")
        conn.execute(sql, args(i, existing))
        conn.execute("COMMIT")
    out = {"commits": count}
elif mode == "rename":  # author_id name
    conn.execute("BEGIN")
    conn.execute("UPDATE authors SET name = ? WHERE id = ?", (rest[1], int(rest[0])))
    conn.execute("COMMIT")
    out = {"committed_at": time.monotonic()}
out.update(wall_s=time.perf_counter() - started, cpu_s=time.process_time() - cpu)
conn.close()
print(json.dumps(out))
'''


def run_app(*args: object) -> dict[str, Any]:
    done = subprocess.run([PYTHON, "-c", APP, *map(str, args)], capture_output=True, text=True,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"app {args[0]} failed: {done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def start_app(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen([PYTHON, "-c", APP, *map(str, args)], stdout=subprocess.PIPE,
                            text=True)


def app_done(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = process.communicate(timeout=3600)
    if process.returncode != 0:
        raise RuntimeError(f"app failed: rc={process.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- databases and configs ------------------------------------------------------------------------


def new_db(world: World, name: str) -> Path:
    folder = world.tmp / name
    folder.mkdir()
    path = folder / "app.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.close()
    return path


def fill(db: Path, authors: int, books: int = 0, book_authors: int | None = None,
         tag_books: int = 0) -> None:
    """Rows written before `install` (not logged): authors, books (by `book_authors` authors),
    the tags of books 1..tag_books (also of books the app writes later)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO authors VALUES (?, ?, ?)",
                     ((i, f"author{i}", "nowhere") for i in range(1, authors + 1)))
    conn.execute("COMMIT")
    conn.close()
    if books:
        run_app("books", db, 1, books, book_authors or authors, 0)
    if tag_books:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN")
        tags = tuple(f"tag{k}" for k in range(40))
        conn.executemany(
            "INSERT INTO book_tags VALUES (?, ?)",
            ((i, tags[(i * 3 + k * 7) % len(tags)])
             for i in range(1, tag_books + 1) for k in range(TAGS_PER_BOOK)),
        )
        conn.execute("COMMIT")
        conn.close()


def write_config(world: World, db: Path, collection: str, tables: list[dict[str, Any]],
                 batch: int) -> Path:
    assert world.typesense is not None
    config = {
        "database": str(db),
        "typesense": {"nodes": [world.typesense.url], "api_key": API_KEY, "timeout": 120},
        "sync": {"batch_size": batch, "poll_interval": 0.5},
        "logging": {"format": "json", "level": "warning"},
        "tables": [{**table, "collection": f"{collection}_{table['table']}"} for table in tables],
    }
    path = db.parent / "cdc.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def log_backlog(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM change_log").fetchone()[0])
    finally:
        conn.close()


def physical(world: World, alias: str) -> str:
    wait_until(lambda: world.ts.get(f"/aliases/{alias}").status_code == 200, 120,
               what=f"collection {alias}")
    return str(world.ts.get(f"/aliases/{alias}").json()["collection_name"])


# -- 1. throughput --------------------------------------------------------------------------------


def throughput(world: World, variant: str, books: int, batch: int, name: str) -> dict[str, Any]:
    assert world.typesense is not None and world.typesense.process is not None
    db = new_db(world, name)
    app_tags = variant == "computed+tags"
    fill(db, AUTHORS, tag_books=0 if app_tags else books)
    config = write_config(world, db, name, [PLAIN if variant == "plain" else COMPUTED], batch)
    cdc(config, "install")
    daemon = world.daemon(config)
    collection = physical(world, f"{name}_books")
    daemon_cpu, server_cpu = daemon.cpu_seconds(), cpu_seconds(world.typesense.process.pid)
    started = time.monotonic()
    writer = start_app("books", db, 1, books, AUTHORS, int(app_tags))
    counted = wait_until(lambda: world.num_documents(collection) >= books, 3600,
                         what="all documents")
    drained = wait_until(lambda: log_backlog(db) == 0, 3600, what="an empty log")
    seconds = counted - started
    daemon_cpu = daemon.cpu_seconds() - daemon_cpu
    server_cpu = cpu_seconds(world.typesense.process.pid) - server_cpu
    written = app_done(writer)
    sample = world.ts.get(f"/collections/{collection}/documents/{books // 2}").json()
    if daemon.stop() != 0:
        raise RuntimeError(f"daemon exited with {daemon.process.returncode}; see {daemon.log}")
    if variant != "plain" and (not sample.get("tags") or "author_name" not in sample):
        raise RuntimeError(f"{variant}: a document without its joined fields: {sample}")
    world.drop_collection(f"{name}_books")
    shutil.rmtree(db.parent)
    return {
        "variant": variant,
        "seconds": seconds,
        "docs_per_s": books / seconds,
        "drained_s": drained - started,
        "app_commit_s": written["wall_s"],
        "daemon_cpu_s": daemon_cpu,
        "daemon_cpu_us_per_doc": daemon_cpu / books * 1e6,
        "server_cpu_s": server_cpu,
        "sample_document": sample if variant != "plain" else None,
    }


def part_throughput(world: World, books: int, batch: int, repeats: int) -> dict[str, Any]:
    variants = ("plain", "computed", "computed+tags")
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        run = {}
        for variant in variants:  # alternating: the machine's load drifts
            result = throughput(world, variant, books, batch,
                                f"t{rep}_{variant.replace('+', '_')}")
            run[variant] = result
            print(f"  part 1, repeat {rep + 1}, {variant}: {result['docs_per_s']:,.0f} docs/s"
                  f" (log empty after {result['drained_s']:.2f} s, daemon"
                  f" {result['daemon_cpu_us_per_doc']:.1f} us/doc)", flush=True)
        for variant in variants[1:]:
            run[variant]["vs_plain"] = run[variant]["docs_per_s"] / run["plain"]["docs_per_s"]
            run[variant]["vs_plain_drained"] = (
                run["plain"]["drained_s"] / run[variant]["drained_s"]
            )
        runs.append(run)
    summary = {
        variant: {
            "docs_per_s": median([r[variant]["docs_per_s"] for r in runs]),
            "daemon_cpu_us_per_doc": median([r[variant]["daemon_cpu_us_per_doc"] for r in runs]),
            "drained_s": median([r[variant]["drained_s"] for r in runs]),
            **({"vs_plain": median([r[variant]["vs_plain"] for r in runs]),
                "vs_plain_each_run": [round(r[variant]["vs_plain"], 3) for r in runs],
                "vs_plain_drained": median([r[variant]["vs_plain_drained"] for r in runs])}
               if variant != "plain" else {}),
        }
        for variant in variants
    }
    print_table(
        f"1. {books:,} books, batch {batch} (median of {repeats})",
        ["documents", "docs/s", "vs plain", "each run", "log empty after s",
         "daemon cpu us/doc"],
        [[v, s["docs_per_s"], f"{s['vs_plain']:.0%}" if "vs_plain" in s else "",
          " ".join(f"{x:.0%}" for x in s.get("vs_plain_each_run", [])), s["drained_s"],
          s["daemon_cpu_us_per_doc"]] for v, s in summary.items()],
    )
    return {"books": books, "batch": batch, "runs": runs, "summary": summary}


# -- 2. fan-out -----------------------------------------------------------------------------------


def found(world: World, collection: str, name: str) -> int:
    response = world.ts.get(
        f"/collections/{collection}/documents/search",
        params={"q": "*", "filter_by": f"author_name:={name}", "per_page": 0},
    )
    response.raise_for_status()
    return int(response.json()["found"])


def rename(world: World, db: Path, collection: str, daemon_pid: int, fanout: int,
           name: str) -> dict[str, Any]:
    assert world.typesense is not None and world.typesense.process is not None
    daemon_cpu, server_cpu = cpu_seconds(daemon_pid), cpu_seconds(world.typesense.process.pid)
    committed = run_app("rename", db, 1, name)["committed_at"]
    first = wait_until(lambda: found(world, collection, name) > 0, 600, SEARCH_EVERY,
                       what="the first renamed document")
    done = wait_until(lambda: found(world, collection, name) >= fanout, 600, SEARCH_EVERY,
                      what="all renamed documents")
    return {
        "name": name,
        "seconds": done - committed,
        "first_seen_s": first - committed,
        "daemon_cpu_s": cpu_seconds(daemon_pid) - daemon_cpu,
        "server_cpu_s": cpu_seconds(world.typesense.process.pid) - server_cpu,
    }


def raw_import(world: World, schema: dict[str, Any], bodies: list[bytes],
               name: str, into_existing: bool = False, action: str = "upsert") -> dict[str, Any]:
    assert world.typesense is not None and world.typesense.process is not None
    if not into_existing:
        world.ts.post("/collections", json={**schema, "name": name}).raise_for_status()
    server_cpu = cpu_seconds(world.typesense.process.pid)
    started = time.perf_counter()
    for body in bodies:
        response = world.ts.post(f"/collections/{name}/documents/import",
                                 params={"action": action, "dirty_values": "reject"},
                                 content=body)
        response.raise_for_status()
        if response.text.count('"success":true') != body.count(b"\n") + 1:
            raise RuntimeError(f"raw import: failed lines: {response.text[:300]}")
    return {"seconds": time.perf_counter() - started,
            "server_cpu_s": cpu_seconds(world.typesense.process.pid) - server_cpu}


def collection_schema(world: World, collection: str) -> dict[str, Any]:
    info = world.ts.get(f"/collections/{collection}").json()
    keep = ("fields", "default_sorting_field", "token_separators", "symbols_to_index",
            "enable_nested_fields")
    return {k: info[k] for k in keep if k in info}


def part_fanout(world: World, fanout: int, batch: int, repeats: int) -> dict[str, Any]:
    assert world.typesense is not None
    name = "fanout"
    db = new_db(world, name)
    fill(db, 10, books=fanout, book_authors=1, tag_books=fanout)  # every book by author 1
    config = write_config(world, db, name, [COMPUTED], batch)
    cdc(config, "install")
    with_backfill = time.monotonic()
    cdc(config, "backfill", timeout=1800)
    backfill_s = time.monotonic() - with_backfill
    daemon = world.daemon(config)
    collection = physical(world, f"{name}_books")
    if world.num_documents(collection) != fanout or found(world, collection, "author1") != fanout:
        raise RuntimeError("fan-out: the backfill did not sync every book")
    schema = collection_schema(world, collection)
    runs: list[dict[str, Any]] = []
    for rep in range(repeats):
        new_name = f"Renamed{rep}"
        run: dict[str, Any] = {"daemon": rename(world, db, collection, daemon.pid, fanout,
                                                new_name)}
        exported = world.ts.get(f"/collections/{collection}/documents/export").content
        lines = exported.strip().split(b"\n")
        if len(lines) != fanout or not all(new_name.encode() in line for line in lines[:10]):
            raise RuntimeError("fan-out: export does not hold the renamed documents")
        bodies = [b"\n".join(lines[i:i + batch]) for i in range(0, len(lines), batch)]
        raw = f"raw_{rep}"
        run["raw"] = raw_import(world, schema, bodies, raw)
        other = [body.replace(new_name.encode(), b"Other" + new_name.encode())
                 for body in bodies]
        run["raw_over_existing"] = raw_import(world, schema, other, raw, into_existing=True)
        partial = [  # only the changed field (action=update): what Typesense needs at least
            "\n".join(json.dumps({"id": str(i), "author_name": f"Partial{new_name}"})
                      for i in range(lo + 1, min(lo + batch, fanout) + 1)).encode()
            for lo in range(0, fanout, batch)
        ]
        run["raw_partial_update"] = raw_import(world, schema, partial, raw, into_existing=True,
                                               action="update")
        world.ts.delete(f"/collections/{raw}")
        run["daemon_vs_raw"] = run["daemon"]["seconds"] / run["raw"]["seconds"]
        run["daemon_vs_raw_over_existing"] = (
            run["daemon"]["seconds"] / run["raw_over_existing"]["seconds"]
        )
        runs.append(run)
        print(f"  part 2, repeat {rep + 1}: daemon {run['daemon']['seconds']:.2f} s (first"
              f" {run['daemon']['first_seen_s']:.2f} s), raw import {run['raw']['seconds']:.2f}"
              f" s, raw upsert over existing {run['raw_over_existing']['seconds']:.2f} s,"
              f" raw partial update {run['raw_partial_update']['seconds']:.2f} s:"
              f" {run['daemon_vs_raw']:.2f}x raw", flush=True)
    if daemon.stop() != 0:
        raise RuntimeError(f"daemon exited with {daemon.process.returncode}; see {daemon.log}")
    world.drop_collection(f"{name}_books")
    shutil.rmtree(db.parent)
    summary = {
        "daemon_s": median([r["daemon"]["seconds"] for r in runs]),
        "first_seen_s": median([r["daemon"]["first_seen_s"] for r in runs]),
        "raw_s": median([r["raw"]["seconds"] for r in runs]),
        "raw_over_existing_s": median([r["raw_over_existing"]["seconds"] for r in runs]),
        "raw_partial_update_s": median([r["raw_partial_update"]["seconds"] for r in runs]),
        "daemon_vs_raw": median([r["daemon_vs_raw"] for r in runs]),
        "daemon_vs_raw_each_run": [round(r["daemon_vs_raw"], 3) for r in runs],
        "daemon_vs_raw_over_existing": median([r["daemon_vs_raw_over_existing"] for r in runs]),
        "daemon_cpu_us_per_doc": median([r["daemon"]["daemon_cpu_s"] for r in runs]) / fanout
        * 1e6,
    }
    print_table(
        f"2. one author with {fanout:,} books renamed, batch {batch} (median of {repeats};"
        f" backfill took {backfill_s:.1f} s)",
        ["daemon s", "first seen s", "raw import s", "daemon / raw", "each run",
         "raw over existing s", "raw partial update s", "daemon cpu us/doc"],
        [[summary["daemon_s"], summary["first_seen_s"], summary["raw_s"],
          f"{summary['daemon_vs_raw']:.2f}x",
          " ".join(f"{x:.2f}x" for x in summary["daemon_vs_raw_each_run"]),
          summary["raw_over_existing_s"], summary["raw_partial_update_s"],
          summary["daemon_cpu_us_per_doc"]]],
    )
    return {"books": fanout, "batch": batch, "backfill_s": backfill_s, "runs": runs,
            "summary": summary}


# -- 3. the app's commit rate ---------------------------------------------------------------------

# variant → (table the app writes, the tables configured when installing; None: no install)
WRITERS: dict[str, tuple[str, list[dict[str, Any]] | None]] = {
    "authors, dependency triggers": ("authors", [COMPUTED]),
    "books, root triggers": ("books", [COMPUTED]),
    "authors, root triggers": ("authors", [AUTHORS_ROOT]),
    "authors, no triggers": ("authors", None),
    "books, no triggers": ("books", None),
}


def templates(world: World, rows: int) -> dict[str, Path]:
    """One database per trigger set, filled and installed once, copied for every run."""
    found_dbs: dict[str, Path] = {}
    for tables in (None, [COMPUTED], [AUTHORS_ROOT]):
        label = "none" if tables is None else tables[0]["table"] + str(len(found_dbs))
        db = new_db(world, f"template_{label}")
        fill(db, rows, books=rows, tag_books=0)
        if tables is not None:
            cdc(write_config(world, db, "writer", tables, 1000), "install")
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        found_dbs[json.dumps(tables)] = db
    return found_dbs


def triggers_on(db: Path, table: str) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,))]
    finally:
        conn.close()


def part_writer(world: World, commits: int, rows: int, repeats: int) -> dict[str, Any]:
    dbs = templates(world, rows)
    triggers = {variant: triggers_on(dbs[json.dumps(tables)], table)
                for variant, (table, tables) in WRITERS.items()}
    results: dict[str, dict[str, Any]] = {}
    for op in ("insert", "update", "delete"):
        runs: dict[str, list[float]] = {v: [] for v in WRITERS}
        cpu: dict[str, list[float]] = {v: [] for v in WRITERS}
        for n in range(repeats):
            for variant, (table, tables) in WRITERS.items():
                folder = world.tmp / f"writer-{op}-{n}-{list(WRITERS).index(variant)}"
                folder.mkdir()
                db = folder / "app.db"
                shutil.copy(dbs[json.dumps(tables)], db)
                result = run_app("commits", db, op, table, commits, rows)
                runs[variant].append(commits / result["wall_s"])
                cpu[variant].append(result["cpu_s"] / commits * 1e6)
                shutil.rmtree(folder)
        dep, root = "authors, dependency triggers", "books, root triggers"
        ratios = [d / r for d, r in zip(runs[dep], runs[root], strict=True)]
        same_table = [d / r for d, r in
                      zip(runs[dep], runs["authors, root triggers"], strict=True)]
        results[op] = {
            "commits_per_s": {v: median(rates) for v, rates in runs.items()},
            "cpu_us_per_commit": {v: median(c) for v, c in cpu.items()},
            "each_run": {v: [round(r) for r in rates] for v, rates in runs.items()},
            "dependency_vs_root": median(ratios),
            "dependency_vs_root_each_run": [round(r, 3) for r in ratios],
            "dependency_vs_root_same_table": median(same_table),
        }
        print(f"  part 3, {op}: authors (dependency) {median(runs[dep]):,.0f} commits/s,"
              f" books (root) {median(runs[root]):,.0f}: {median(ratios):.0%}", flush=True)
    print_table(
        f"3. app commits/s, 1-row transactions, WAL + NORMAL (median of {repeats})",
        ["op", *WRITERS, "dependency / root", "each run", "vs authors as root"],
        [[op, *(r["commits_per_s"][v] for v in WRITERS), f"{r['dependency_vs_root']:.0%}",
          " ".join(f"{x:.0%}" for x in r["dependency_vs_root_each_run"]),
          f"{r['dependency_vs_root_same_table']:.0%}"] for op, r in results.items()],
    )
    return {"commits_per_run": commits, "rows_before": rows, "triggers": triggers,
            "ops": results}


def main() -> None:
    args = arguments(
        __doc__ or "",
        books={"type": int, "default": None, "help": "books synced in part 1"},
        fanout={"type": int, "default": None, "help": "books of the renamed author (part 2)"},
        batch={"type": int, "default": 5000, "help": "sync.batch_size (and the raw batch)"},
        parts={"default": "1,2,3", "help": "which parts to run"},
    )
    repeats = args.repeats or (1 if args.quick else 2)
    books = args.books or (10_000 if args.quick else 100_000)
    fanout = args.fanout or (10_000 if args.quick else 100_000)
    parts = {int(p) for p in args.parts.split(",")}
    report: dict[str, Any] = {
        "benchmark": "dependencies",
        "command": "benchmarks/dependencies.py" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "repeats": repeats,
    }
    with World("dependencies") as world:
        world.start_typesense()
        report["machine"]["typesense"] = world.ts.get("/debug").json().get("version")
        if 3 in parts:
            report["writer"] = part_writer(world, 2000 if args.quick else 20_000,
                                           5000 if args.quick else 20_000,
                                           3 if args.quick else 5)
        if 1 in parts:
            report["throughput"] = part_throughput(world, books, args.batch, repeats)
        if 2 in parts:
            report["fanout"] = part_fanout(world, fanout, args.batch, repeats)
        report["load"] = world.load.read()
    report["machine"]["other_processes_end"] = machine()["other_processes"]
    print(f"\nload during the run: {report['load']}")
    save("dependencies", report)


if __name__ == "__main__":
    main()
