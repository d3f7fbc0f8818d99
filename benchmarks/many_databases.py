"""Many databases in one daemon (`databases:`, issue 18): memory, idle CPU, latency under a
steady write load, catch-up throughput, and the same databases as single-database daemons.

    .venv/bin/python benchmarks/many_databases.py [--quick] [--databases 1000] [--idle-seconds 60]
        [--load-seconds 60] [--catchup 100] [--catchup-rows 10000] [--catchup-rounds 3]
        [--singles 50]
        [--phases catchup,capacity,one,shared,singles]

Every database is a small SQLite file with the seed's `elements` table (stdlib sqlite3, WAL),
installed with `cdc-daemon install` once and then copied (an installed file that never ran
holds no file token, so the copies are independent databases). One Typesense, one run:

1. catch-up (first, while the server holds nothing else): a template is installed, then the app
   commits R rows into it (1,000-row transactions; the log holds R entries, no daemon running)
   and it is copied K times into a folder. `cdc-daemon run` on a `databases:` config for that
   folder (default sync settings and workers) starts; the clock runs from its start until
   `GET /collections` (polled every 0.2 s) counts R documents in each of the K collections
   (for reference, also from the first document seen: the daemon's start left out).
   Raw ceiling, the same run, before: the same K x R documents (built from the template's rows
   as the daemon builds them, JSON-encoded before the clock starts) imported into K fresh
   collections with `import?action=upsert` in batches of 5,000, (a) one request at a time from
   one client, as throughput.py measures its ceiling (once), and (b) from 4 threads (the daemon
   reads 4 backlogs at once: fleet.HEAVY_WORKERS), each taking the next collection; the faster
   is the ceiling. (b) and the daemon are measured `--catchup-rounds` times (3), alternating,
   each on a fresh server; each round's ratio is against its own ceiling, and the median round
   is the figure (the server's CPU for the same documents varies by ~15% from run to run).
1b. capacity (on a fresh server): what Typesense alone takes of the load phase's one-document
   imports into N collections of their own, round robin, from 4 and from 16 client threads of
   a client that costs little (cdc_daemon's plain_http.py), 10 s each: the ceiling of any
   daemon for collections of their own.
2. N databases in one daemon: N copies of the empty installed template; `cdc-daemon run` on a
   `databases:` config (default sync settings and workers); start-up until the log says
   "database syncing" N times. Peak RSS = VmHWM of /proc/PID/status (the process's own peak,
   read at the end of each phase).
3. idle: nothing written for the window; utime + stime from /proc/PID/stat over it.
4. load: W writer processes (stdlib sqlite3, separate from the daemon; this same file with
   `--writer`) each own N/W databases and commit one row per database per second, round robin,
   evenly spaced (the W processes offset from each other). Each row carries the time before its
   INSERT (comment `t=...`, CLOCK_MONOTONIC); for every S-th commit the writer prints the
   database, the id and the time its COMMIT returned. A poller in this process GETs each sampled
   document by id (`GET /collections/<physical>/documents/<id>`) every 20 ms until it answers
   200: latency = answer time - COMMIT returned (an upper bound, coarse by up to 20 ms plus a
   round trip). At the end every commit must be in Typesense (document counts).
4b. the same load on N other databases sharing one collection (`databases.collection` without
   `{stem}`, the first database its manager): documents `<stem>/<id>`.
5. singles: M copies of the template, each with its own `database:` config and its own
   `cdc-daemon run` process; after all are syncing, total RSS (VmRSS and VmHWM summed) and
   total CPU over the same idle window; extrapolated linearly to N (x N/M), said so.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from benchlib import (
    API_KEY,
    CLK_TCK,
    ELEMENTS_DDL,
    ELEMENTS_TABLE,
    PYTHON,
    Daemon,
    LoadMeter,
    World,
    app,
    app_result,
    cdc,
    cpu_seconds,
    documents_of,
    machine,
    percentile,
    print_table,
    save,
    status_kb,
    wait_until,
)

TARGET_RSS_MB = 300
TARGET_IDLE_SHARE = 0.01
TARGET_P99_MS = 200
TARGET_CATCHUP = 0.80
RAW_BATCH = 5000
RAW_THREADS = 4  # the daemon's databases catching up at once (fleet.HEAVY_WORKERS)
WRITERS = 4
SAMPLES = 400  # sampled commits in the load phase (about)
POLL = 0.02  # seconds between the poller's rounds
SHARED = "z0_elements"  # the shared collection of shared_load()
PHASES = ("catchup", "capacity", "one", "shared", "singles")
CAPACITY_THREADS = (4, 16)  # client threads sending one-document imports
CAPACITY_SECONDS = 10.0

INSERT = (
    "INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
    " comment) VALUES (?, 'note', ?, ?, 1, ?)"
)


# -- the writer process (`--writer`): stdlib only, knows nothing of cdc_daemon ------------------


def writer(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writer", action="store_true")
    parser.add_argument("--dbs", required=True, help="a file: one database path a line")
    parser.add_argument("--rate", type=float, default=1.0, help="commits/s per database")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--offset", type=float, default=0.0, help="share of one interval")
    parser.add_argument("--sample-every", type=int, required=True)
    parser.add_argument("--sample-phase", type=int, default=0)
    args = parser.parse_args(argv)
    paths = Path(args.dbs).read_text().split()
    conns = []
    for path in paths:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        conns.append(conn)
    interval = 1 / (args.rate * len(conns))
    total = int(args.seconds * args.rate) * len(conns)
    print("ready", flush=True)
    sys.stdin.readline()  # go: every writer starts at the same moment
    started = time.monotonic() + args.offset * interval
    late = 0.0
    for n in range(total):
        due = started + n * interval
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            late = max(late, -pause)
        k, i = n % len(conns), n // len(conns) + 1
        conn = conns[k]
        conn.execute("BEGIN")
        conn.execute(INSERT, (i, i, i, f"t={time.monotonic():.6f}"))
        conn.execute("COMMIT")
        if (n + args.sample_phase) % args.sample_every == 0:
            print(f"{Path(paths[k]).stem} {i} {time.monotonic():.6f}", flush=True)
    wall = time.monotonic() - started
    for conn in conns:
        conn.close()
    print(json.dumps({"commits": total, "wall_s": wall, "achieved_rate": total / wall,
                      "max_late_s": late}), flush=True)


# -- databases -----------------------------------------------------------------------------------


def template(world: World, name: str, rows: int) -> Path:
    """An installed `elements` database; `rows` rows committed after install (a log backlog)."""
    folder = world.tmp / name
    folder.mkdir()
    db = folder / "template.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(ELEMENTS_DDL)
    conn.close()
    cdc(single_config(world, db, "template"), "install")
    if rows:
        app_result(app("bulk", db, "--rows", str(rows), "--txn", "1000"))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file: copies are whole
    conn.close()
    return db


def copies(source: Path, folder: Path, stems: list[str]) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"{stem}.db" for stem in stems]
    for path in paths:
        shutil.copyfile(source, path)
    return paths


def typesense_section(world: World) -> dict[str, Any]:
    assert world.typesense is not None
    return {"nodes": [world.typesense.url], "api_key": API_KEY, "timeout": 60}


def single_config(world: World, db: Path, collection: str) -> Path:
    config = {
        "database": str(db),
        "typesense": typesense_section(world),
        "logging": {"format": "json", "level": "info"},
        "tables": [{**ELEMENTS_TABLE, "collection": collection}],
    }
    path = db.parent / "cdc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fleet_config(
    world: World, folder: Path, workers: int | None = None, shared: str | None = None
) -> Path:
    """`databases:` for every *.db of `folder` (collections `<stem>_elements`; `shared`: one
    collection of that name, managed by the first database), defaults else (`workers` None:
    the default)."""
    databases: dict[str, Any] = {"glob": f"{folder.name}/*.db"}
    if shared is not None:
        first = min(path.stem for path in folder.glob("*.db"))
        databases.update(collection=shared, manager=first)
    if workers is not None:
        databases["workers"] = workers
    config = {
        "databases": databases,
        "typesense": typesense_section(world),
        "logging": {"format": "json", "level": "info"},
        "tables": [ELEMENTS_TABLE],
    }
    path = folder.parent / "cdc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def log_count(daemon: Daemon, text: str) -> int:
    return daemon.log.read_text(errors="replace").count(text)


def ours(name: str, prefix: str) -> bool:
    """A collection or alias of this benchmark's databases `<prefix><digits>_elements...`
    (not the daemon's own `cdc_daemon_owners`)."""
    return re.match(rf"{prefix}\d+_elements", name) is not None


def aliases(world: World, prefix: str) -> dict[str, str]:
    """Alias → physical collection, for the databases named `<prefix><digits>`."""
    listed = world.ts.get("/aliases").json()["aliases"]
    return {a["name"]: a["collection_name"] for a in listed if ours(a["name"], prefix)}


def documents_by_collection(world: World, prefix: str) -> dict[str, int]:
    listed = world.ts.get("/collections").json()
    return {c["name"]: int(c["num_documents"]) for c in listed if ours(c["name"], prefix)}


def drop_all(world: World, prefix: str) -> None:
    for alias, physical in aliases(world, prefix).items():
        world.ts.delete(f"/aliases/{alias}")
        world.ts.delete(f"/collections/{physical}")


class Peak:
    """The daemon's VmHWM and the largest VmRSS seen (sampled every 0.5 s) on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_kb = 0
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.halt.wait(0.5):
            try:
                self.rss_kb = max(self.rss_kb, status_kb(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return

    def hwm_mb(self) -> float:
        return status_kb(self.pid, "VmHWM") / 1024


# -- 1. catch-up ---------------------------------------------------------------------------------


def source_lines(world: World, db: Path) -> tuple[dict[str, Any], list[str]]:
    """The template's rows as the daemon's documents (JSON lines) and its collection schema."""
    return documents_of(single_config(world, db, "source"))


def raw_import(
    world: World, schema: dict[str, Any], lines: list[str], count: int, threads: int
) -> dict[str, Any]:
    assert world.typesense is not None and world.typesense.process is not None
    names = [f"raw{threads}{k:03d}_elements" for k in range(count)]
    # Not in the import's clock (the daemon's clock has its own collections, and aliases), but
    # timed: the same server work, for the comparison with it included.
    began, server_cpu = time.perf_counter(), cpu_seconds(world.typesense.process.pid)
    for name in names:
        world.ts.post("/collections", json={**schema, "name": name}).raise_for_status()
    collections_s = time.perf_counter() - began
    collections_cpu = cpu_seconds(world.typesense.process.pid) - server_cpu
    bodies = ["\n".join(lines[i : i + RAW_BATCH]).encode() for i in range(0, len(lines), RAW_BATCH)]
    work: queue.SimpleQueue[str] = queue.SimpleQueue()
    for name in names:
        work.put(name)
    errors: list[str] = []

    def client() -> None:
        assert world.typesense is not None
        with httpx.Client(base_url=world.typesense.url, timeout=120,
                          headers={"X-TYPESENSE-API-KEY": API_KEY}) as http:
            while True:
                try:
                    name = work.get_nowait()
                except queue.Empty:
                    return
                for body in bodies:
                    response = http.post(
                        f"/collections/{name}/documents/import",
                        params={"action": "upsert", "dirty_values": "reject"},
                        content=body,
                    )
                    ok = response.text.count('"success":true')
                    if response.status_code != 200 or ok != body.count(b"\n") + 1:
                        errors.append(response.text[:300])
                        return

    server_cpu = cpu_seconds(world.typesense.process.pid)
    started = time.perf_counter()
    pool = [threading.Thread(target=client) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - started
    server_cpu = cpu_seconds(world.typesense.process.pid) - server_cpu
    counts = documents_by_collection(world, "raw")
    for name in names:
        world.ts.delete(f"/collections/{name}")
    if errors or any(counts.get(name) != len(lines) for name in names):
        raise RuntimeError(f"raw import failed: {errors[:1]}")
    docs = count * len(lines)
    return {"threads": threads, "batch": RAW_BATCH, "documents": docs, "seconds": seconds,
            "docs_per_s": docs / seconds, "server_cpu_s": server_cpu,
            "creating_collections_s": collections_s,
            "creating_collections_server_cpu_s": collections_cpu}


def catch_up(
    world: World, count: int, rows: int, workers: int | None, rounds: int
) -> dict[str, Any]:
    """`rounds` times a raw import from 4 threads and then the daemon, each on a fresh server:
    each round's ratio is against the raw imports of its own minutes (the server's CPU for the
    same million documents varied from 26 to 32 s between runs). Reported: the median round."""
    db = template(world, "catchup_template", rows)
    schema, lines = source_lines(world, db)
    world.fresh_typesense()  # one client thread: slower in every run so far, measured once
    one_thread = raw_import(world, schema, lines, count, 1)
    print(f"  raw import, {count} x {rows:,} documents, 1 client thread:"
          f" {one_thread['docs_per_s']:,.0f} docs/s", flush=True)
    measured = []
    for r in range(rounds):
        world.fresh_typesense()
        raw = raw_import(world, schema, lines, count, RAW_THREADS)
        ceiling = max(one_thread["docs_per_s"], raw["docs_per_s"])
        run = daemon_catch_up(world, db, count, rows, workers, f"round{r}")
        run.update(raw=[one_thread, raw], raw_ceiling_docs_per_s=ceiling,
                   vs_raw_ceiling=run["docs_per_s"] / ceiling)
        measured.append(run)
        print(f"  round {r + 1}: raw {RAW_THREADS} threads {raw['docs_per_s']:,.0f} docs/s,"
              f" daemon {run['docs_per_s']:,.0f} docs/s: {run['vs_raw_ceiling']:.0%}", flush=True)
    ranked = sorted(measured, key=lambda m: m["vs_raw_ceiling"])
    median_round = ranked[(len(ranked) - 1) // 2]  # the lower middle one of an even count
    return {
        "databases": count,
        "rows_each": rows,
        **median_round,
        "rounds": measured,
        "vs_raw_ceiling_rounds": [m["vs_raw_ceiling"] for m in measured],
    }


def daemon_catch_up(
    world: World, db: Path, count: int, rows: int, workers: int | None, name: str
) -> dict[str, Any]:
    """`count` copies of the template caught up by one daemon on a fresh server."""
    folder = world.tmp / "catchup" / name / "backlog"
    copies(db, folder, [f"c{k:03d}" for k in range(count)])
    world.fresh_typesense()
    assert world.typesense is not None and world.typesense.process is not None
    config = fleet_config(world, folder, workers)
    server_cpu = cpu_seconds(world.typesense.process.pid)
    started = time.monotonic()
    daemon = world.daemon(config)
    peak = Peak(daemon.pid)
    first: list[float] = []

    def done() -> bool:
        counts = list(documents_by_collection(world, "c").values())
        if not first and any(counts):
            first.append(time.monotonic())
        return len(counts) == count and all(n >= rows for n in counts)

    finished = wait_until(done, 1800, interval=0.2, what="every backlog searchable")
    seconds = finished - started
    daemon_cpu = daemon.cpu_seconds()
    server_cpu = cpu_seconds(world.typesense.process.pid) - server_cpu
    hwm = peak.hwm_mb()
    peak.halt.set()
    if daemon.stop() != 0:
        raise RuntimeError(f"daemon exited with {daemon.process.returncode}; see {daemon.log}")
    drop_all(world, "c")
    shutil.rmtree(folder.parent)
    return {
        "seconds_from_daemon_start": seconds,
        "first_document_after_s": (first[0] - started) if first else None,
        # After the daemon's start (the Python start, opening the files, their collections):
        # from the first document seen (polled every 0.2 s) to the last, for reference only.
        "docs_per_s_after_first_document": (
            count * rows / (finished - first[0]) if first and finished > first[0] else None
        ),
        "docs_per_s": count * rows / seconds,
        "daemon_cpu_s": daemon_cpu,
        "daemon_cpu_us_per_doc": daemon_cpu / (count * rows) * 1e6,
        "server_cpu_s": server_cpu,
        "daemon_peak_rss_mb": hwm,
    }


# -- 2-4. N databases in one daemon ---------------------------------------------------------------


class Poller(threading.Thread):
    """GETs each sampled document until it is there; records when."""

    def __init__(self, url: str, path_of: Callable[[str, int], str]) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers={"X-TYPESENSE-API-KEY": API_KEY},
                                   timeout=30)
        self.path_of = path_of  # (database, row id) → its document's GET path
        self.incoming: queue.SimpleQueue[tuple[str, int, float]] = queue.SimpleQueue()
        self.pending: list[tuple[str, int, float]] = []
        self.found: list[dict[str, Any]] = []
        self.requests = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            while True:
                try:
                    self.pending.append(self.incoming.get_nowait())
                except queue.Empty:
                    break
            still = []
            for stem, i, committed in self.pending:
                response = self.client.get(self.path_of(stem, i))
                arrived = time.monotonic()
                self.requests += 1
                if response.status_code == 200:
                    stamp = float(response.json()["comment"].removeprefix("t="))
                    self.found.append({"database": stem, "id": i, "committed": committed,
                                       "latency_ms": (arrived - committed) * 1000,
                                       "row_stamp_before_commit_ms": (committed - stamp) * 1000})
                else:
                    still.append((stem, i, committed))
            self.pending = still
            self.halt.wait(POLL)
        self.client.close()


def start_writers(
    world: World, paths: list[Path], seconds: float, sample_every: int
) -> list[Any]:
    import subprocess

    per = [paths[w::WRITERS] for w in range(WRITERS)]
    processes = []
    for w, mine in enumerate(per):
        listing = world.tmp / f"writer{w}.txt"
        listing.write_text("\n".join(str(p) for p in mine))
        processes.append(subprocess.Popen(
            [PYTHON, __file__, "--writer", "--dbs", str(listing), "--seconds", str(seconds),
             "--offset", str(w / WRITERS), "--sample-every", str(sample_every),
             "--sample-phase", str(w * sample_every // WRITERS)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ))
        world.callback(_kill_if_running, processes[-1])
    for process in processes:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("writer did not start")
    return processes


def _kill_if_running(process: Any) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def one_daemon(
    world: World, count: int, idle_seconds: float, load_seconds: float, workers: int | None
) -> dict[str, Any]:
    assert world.typesense is not None and world.typesense.process is not None
    db = template(world, "fleet_template", 0)
    folder = world.tmp / "fleet" / "tenants"
    stems = [f"t{k:04d}" for k in range(count)]
    paths = copies(db, folder, stems)
    config = fleet_config(world, folder, workers)
    started = time.monotonic()
    daemon = world.daemon(config)
    peak = Peak(daemon.pid)
    wait_until(lambda: log_count(daemon, '"database syncing"') >= count, 900, interval=0.5,
               what="every database syncing")
    startup = time.monotonic() - started
    startup_cpu = daemon.cpu_seconds()
    physical = {a.removesuffix("_elements"): c for a, c in aliases(world, "t").items()}
    if len(physical) != count:
        raise RuntimeError(f"{len(physical)} collections for {count} databases")
    hwm_startup = peak.hwm_mb()
    print(f"  {count} databases syncing after {startup:.1f} s ({startup_cpu:.1f} s CPU),"
          f" peak RSS {hwm_startup:.0f} MB", flush=True)
    time.sleep(3)  # settle: the first iterations and start-up are not idle
    # -- idle
    cpu, server_cpu, began = (daemon.cpu_seconds(), cpu_seconds(world.typesense.process.pid),
                              time.monotonic())
    time.sleep(idle_seconds)
    elapsed = time.monotonic() - began
    idle = {
        "seconds": elapsed,
        "cpu_share_of_one_core": (daemon.cpu_seconds() - cpu) / elapsed,
        "resolution": 1 / CLK_TCK / elapsed,
        "typesense_cpu_share": (cpu_seconds(world.typesense.process.pid) - server_cpu) / elapsed,
        "rss_mb": status_kb(daemon.pid, "VmRSS") / 1024,
        "threads": status_kb(daemon.pid, "Threads"),
    }
    print(f"  idle {elapsed:.0f} s: {idle['cpu_share_of_one_core']:.3%} of a core,"
          f" RSS {idle['rss_mb']:.0f} MB", flush=True)
    # -- load: 1 commit/s in each database
    load = steady_load(world, daemon, paths, load_seconds,
                       lambda stem, i: f"/collections/{physical[stem]}/documents/{i}",
                       lambda: sum(documents_by_collection(world, "t").values()))
    hwm = peak.hwm_mb()
    peak.halt.set()
    if daemon.stop() != 0:
        raise RuntimeError(f"daemon exited with {daemon.process.returncode}; see {daemon.log}")
    log_lines = len(daemon.log.read_text(errors="replace").splitlines())
    drop_all(world, "t")  # the next phase on a server holding only its own collections
    return {
        "databases": count,
        "startup_s": startup,
        "startup_cpu_s": startup_cpu,
        "peak_rss_mb_after_startup": hwm_startup,
        "peak_rss_mb": hwm,
        "largest_rss_sampled_mb": peak.rss_kb / 1024,
        "idle": idle,
        "load": load,
        "log_lines": log_lines,
    }


def steady_load(
    world: World,
    daemon: Daemon,
    paths: list[Path],
    load_seconds: float,
    path_of: Callable[[str, int], str],
    documents: Callable[[], int],
    label: str = "",
) -> dict[str, Any]:
    """1 commit/s in each database (writer processes), sampled commits polled until searchable
    at `path_of(database, id)`; at the end `documents()` must count every commit."""
    assert world.typesense is not None and world.typesense.process is not None
    count = len(paths)
    total = int(load_seconds) * count
    sample_every = max(1, total // SAMPLES)
    poller = Poller(world.typesense.url, path_of)
    poller.start()
    world.callback(poller.halt.set)
    writers = start_writers(world, paths, load_seconds, sample_every)

    def read_samples(process: Any, out: list[dict[str, Any]]) -> None:
        for line in process.stdout:
            if line.startswith("{"):
                out.append(json.loads(line))
            else:
                stem, i, committed = line.split()
                poller.incoming.put((stem, int(i), float(committed)))

    results: list[dict[str, Any]] = []
    readers = [threading.Thread(target=read_samples, args=(p, results), daemon=True)
               for p in writers]
    for reader in readers:
        reader.start()
    cpu, server_cpu, began = (daemon.cpu_seconds(), cpu_seconds(world.typesense.process.pid),
                              time.monotonic())
    machine_load = LoadMeter()
    for process in writers:
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in writers:
        if process.wait(timeout=load_seconds * 3 + 120) != 0:
            raise RuntimeError("writer failed")
    for reader in readers:
        reader.join()
    last_commit = time.monotonic()
    machine_busy = machine_load.read()["machine_busy_cores"]
    committed = int(sum(r["commits"] for r in results))

    def all_in() -> bool:
        return documents() >= committed

    drained = wait_until(all_in, 600, interval=0.5, what="every commit searchable")
    wait_until(lambda: poller.incoming.empty() and not poller.pending, 120,
               what="every sampled commit found")
    poller.halt.set()
    poller.join()
    elapsed = time.monotonic() - began
    latencies = [f["latency_ms"] for f in poller.found]
    first = min(f["committed"] for f in poller.found)
    thirds: list[list[float]] = [[], [], []]
    for f in poller.found:
        third = min(2, int((f["committed"] - first) / (load_seconds / 3)))
        thirds[third].append(f["latency_ms"])
    load = {
        "seconds": load_seconds,
        "writers": WRITERS,
        "commits": committed,
        "achieved_rate": sum(r["achieved_rate"] for r in results),
        "writer_max_late_s": max(r["max_late_s"] for r in results),
        "all_searchable_after_last_commit_s": drained - last_commit,
        "sampled": len(latencies),
        "sample_every": sample_every,
        "poll_interval_s": POLL,
        "poll_requests": poller.requests,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "p50_by_third_of_the_phase_ms": [percentile(t, 50) for t in thirds],
        "daemon_cpu_share": (daemon.cpu_seconds() - cpu) / elapsed,
        "typesense_cpu_share": (cpu_seconds(world.typesense.process.pid) - server_cpu) / elapsed,
        "machine_busy_cores_while_writing": machine_busy,
        "row_stamp_before_commit_ms_max": max(f["row_stamp_before_commit_ms"]
                                              for f in poller.found),
        "latencies_ms": sorted(round(x, 1) for x in latencies),
    }
    print(f"  load{label} {load['achieved_rate']:,.0f} commits/s: p50 {load['p50_ms']:.0f} ms,"
          f" p99 {load['p99_ms']:.0f} ms, daemon {load['daemon_cpu_share']:.0%} of a core",
          flush=True)
    return load


def shared_load(
    world: World, count: int, load_seconds: float, workers: int | None
) -> dict[str, Any]:
    """The same load, on N other databases sharing one collection (ids `<stem>/<id>`)."""
    db = template(world, "shared_template", 0)
    folder = world.tmp / "shared" / "tenants"
    paths = copies(db, folder, [f"t{k:04d}" for k in range(count)])
    daemon = world.daemon(fleet_config(world, folder, workers, shared=SHARED))
    wait_until(lambda: log_count(daemon, '"database syncing"') >= count, 900, interval=0.5,
               what="every database syncing")
    [physical] = aliases(world, "z").values()
    time.sleep(3)  # settle: the first iterations and start-up are not idle
    load = steady_load(world, daemon, paths, load_seconds,
                       lambda stem, i: f"/collections/{physical}/documents/{stem}%2F{i}",
                       lambda: sum(documents_by_collection(world, "z").values()),
                       label=" (one shared collection)")
    load["peak_rss_mb"] = status_kb(daemon.pid, "VmHWM") / 1024
    if daemon.stop() != 0:
        raise RuntimeError(f"daemon exited with {daemon.process.returncode}; see {daemon.log}")
    return load


# -- 5. single-database daemons -----------------------------------------------------------------


def capacity(world: World, count: int) -> dict[str, Any]:
    """What Typesense alone takes: one-document imports into `count` collections, round robin,
    from a client that costs little (plain_http.py's requests), for the load phase's 1,000
    imports a second with collections of their own. On a fresh server."""
    from cdc_daemon.typesense.plain_http import PlainHttp

    server = world.fresh_typesense()
    assert server.process is not None
    for k in range(count):
        world.ts.post("/collections", json={"name": f"cap{k}", "fields": [
            {"name": "t", "type": "string"}]}).raise_for_status()
    plain = PlainHttp(60, 5)
    runs = []
    for threads in CAPACITY_THREADS:
        server_cpu, client_cpu = cpu_seconds(server.process.pid), time.process_time()
        imports = _one_document_imports(plain, server.url, count, threads)
        runs.append({"client_threads": threads, "imports_per_s": imports / CAPACITY_SECONDS,
                     "typesense_cores": (cpu_seconds(server.process.pid) - server_cpu)
                     / CAPACITY_SECONDS,
                     "client_cores": (time.process_time() - client_cpu) / CAPACITY_SECONDS})
        print(f"  Typesense alone, one-document imports into {count:,} collections,"
              f" {threads} client threads: {runs[-1]['imports_per_s']:,.0f}/s", flush=True)
    plain.close()
    world.fresh_typesense()  # the next phase starts on an empty server
    return {"collections": count, "seconds_each": CAPACITY_SECONDS, "runs": runs,
            "imports_per_s": max(r["imports_per_s"] for r in runs)}


def _one_document_imports(plain: Any, url: str, count: int, threads: int) -> int:
    """Imports done in CAPACITY_SECONDS by `threads` clients, each to the next collection."""
    headers = {"Content-Type": "application/json", "X-TYPESENSE-API-KEY": API_KEY}
    counts = [0] * threads
    errors: list[str] = []
    until = time.monotonic() + CAPACITY_SECONDS

    def client(t: int) -> None:
        n = 0
        while time.monotonic() < until and not errors:
            path = f"/collections/cap{(t + n * threads) % count}/documents/import?action=upsert"
            response = plain.request("POST", url, path, headers, b'{"id":"%d","t":"x"}' % n)
            if response.status_code != 200 or '"success":true' not in response.text:
                errors.append(response.text[:200])
            n += 1
        counts[t] = n

    pool = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise RuntimeError(f"capacity: import failed: {errors[0]}")
    return sum(counts)


def singles(world: World, count: int, idle_seconds: float) -> dict[str, Any]:
    db = template(world, "singles_template", 0)
    daemons = []
    started = time.monotonic()
    for k in range(count):
        folder = world.tmp / "singles" / f"s{k:02d}"
        [path] = copies(db, folder, ["app"])
        daemons.append(world.daemon(single_config(world, path, f"s{k:02d}_elements")))
    wait_until(lambda: len(aliases(world, "s")) >= count, 900,
               interval=0.5, what="every single daemon's collection")
    startup = time.monotonic() - started
    startup_cpu = sum(d.cpu_seconds() for d in daemons)
    time.sleep(3)
    cpu, began = sum(d.cpu_seconds() for d in daemons), time.monotonic()
    time.sleep(idle_seconds)
    elapsed = time.monotonic() - began
    cpu = sum(d.cpu_seconds() for d in daemons) - cpu
    rss = sum(status_kb(d.pid, "VmRSS") for d in daemons) / 1024
    hwm = sum(status_kb(d.pid, "VmHWM") for d in daemons) / 1024
    for d in daemons:
        d.stop()
    return {
        "daemons": count,
        "startup_s": startup,
        "startup_cpu_s": startup_cpu,
        "idle_seconds": elapsed,
        "rss_mb_total": rss,
        "peak_rss_mb_total": hwm,
        "rss_mb_each": rss / count,
        "idle_cpu_share_total": cpu / elapsed,
        "idle_cpu_share_each": cpu / elapsed / count,
    }


# -- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, ~2 minutes")
    parser.add_argument("--databases", type=int, default=None)
    parser.add_argument("--idle-seconds", type=float, default=None)
    parser.add_argument("--load-seconds", type=float, default=None)
    parser.add_argument("--catchup", type=int, default=None, help="databases catching up")
    parser.add_argument("--catchup-rows", type=int, default=None)
    parser.add_argument("--catchup-rounds", type=int, default=None,
                        help="raw import, then the daemon, this many times (the median counts)")
    parser.add_argument("--singles", type=int, default=None, help="single-database daemons")
    parser.add_argument("--workers", type=int, default=None,
                        help="databases.workers (default: the daemon's default)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, of {','.join(PHASES)} (all: the figures)")
    args = parser.parse_args()
    phases = args.phases.split(",")
    quick = args.quick
    count = args.databases or (200 if quick else 1000)
    idle_seconds = args.idle_seconds or (10.0 if quick else 60.0)
    load_seconds = args.load_seconds or (15.0 if quick else 60.0)
    catchup_count = args.catchup or (20 if quick else 100)
    catchup_rows = args.catchup_rows or (2000 if quick else 10_000)
    catchup_rounds = args.catchup_rounds or (1 if quick else 3)
    single_count = args.singles or (10 if quick else 50)
    report: dict[str, Any] = {
        "benchmark": "many_databases",
        "command": " ".join(["benchmarks/many_databases.py", *sys.argv[1:]]),
        "databases_workers": args.workers or "default (4)",
        "machine": machine(),
        "targets": {"peak_rss_mb": TARGET_RSS_MB, "idle_cpu_share": TARGET_IDLE_SHARE,
                    "p99_ms": TARGET_P99_MS, "catchup_vs_raw": TARGET_CATCHUP},
    }
    run_started = time.monotonic()
    with World("many_databases") as world:
        world.start_typesense()
        report["machine"]["typesense"] = world.ts.get("/debug").json().get("version")
        if "catchup" in phases:
            report["catchup"] = catch_up(world, catchup_count, catchup_rows, args.workers,
                                         catchup_rounds)
            c = report["catchup"]
            print(f"  catch-up {catchup_count} x {catchup_rows:,}: {c['docs_per_s']:,.0f}"
                  f" docs/s, {c['vs_raw_ceiling']:.0%} of the raw ceiling (median of"
                  f" {catchup_rounds})", flush=True)
        if "capacity" in phases:
            report["capacity"] = capacity(world, count)
        if "one" in phases:
            report["one_daemon"] = one_daemon(world, count, idle_seconds, load_seconds,
                                              args.workers)
        if "shared" in phases:
            report["shared_load"] = shared_load(world, count, load_seconds, args.workers)
        if "singles" in phases:
            report["singles"] = singles(world, single_count, idle_seconds)
            s = report["singles"]
            print(f"  {single_count} single daemons: {s['rss_mb_total']:.0f} MB RSS,"
                  f" idle {s['idle_cpu_share_total']:.2%} of a core", flush=True)
        report["load"] = world.load.read()
    report["machine"]["other_processes_end"] = machine()["other_processes"]
    report["wall_s"] = time.monotonic() - run_started
    loads = [report.get("one_daemon", {}).get("load"), report.get("shared_load")]
    for load in filter(None, loads):
        load["histogram_ms"] = histogram(load.pop("latencies_ms"))
    if set(phases) >= set(PHASES):
        tables(report, count)
    else:
        print("\nsome phases only: no table of the targets")
    print(f"\nload during the run: {report['load']}; wall {report['wall_s']:.0f} s")
    save("many_databases", report)


def histogram(latencies_ms: list[float]) -> dict[str, int]:
    counts: dict[int, int] = {}
    for x in latencies_ms:
        low = int(x // 25) * 25
        counts[low] = counts.get(low, 0) + 1
    return {f"{low}-{low + 25}": counts[low] for low in sorted(counts)}


def tables(report: dict[str, Any], count: int) -> None:
    one, c, s = report["one_daemon"], report["catchup"], report["singles"]
    idle, load, shared = one["idle"], one["load"], report["shared_load"]
    scale = count / s["daemons"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print_table(f"{count:,} databases in one daemon (targets of issue 18)",
                ["", "measured", "target", ""], [
        ["peak RSS (VmHWM)", f"{one['peak_rss_mb']:.0f} MB", f"<= {TARGET_RSS_MB} MB",
         verdict(one["peak_rss_mb"] <= TARGET_RSS_MB)],
        [f"idle CPU, {idle['seconds']:.0f} s", f"{idle['cpu_share_of_one_core']:.2%}",
         f"<= {TARGET_IDLE_SHARE:.0%}", verdict(idle["cpu_share_of_one_core"]
                                                 <= TARGET_IDLE_SHARE)],
        [f"p99 commit->searchable, {load['achieved_rate']:,.0f} commits/s",
         f"{load['p99_ms']:.0f} ms", f"<= {TARGET_P99_MS} ms",
         verdict(load["p99_ms"] <= TARGET_P99_MS)],
        [f"  Typesense alone: one-document imports into {report['capacity']['collections']:,}"
         " collections (a cheap client)", f"{report['capacity']['imports_per_s']:,.0f}/s",
         f">= {load['achieved_rate']:,.0f}/s needed", "reference"],
        [f"  the same, one shared collection ({shared['achieved_rate']:,.0f} commits/s)",
         f"{shared['p99_ms']:.0f} ms", f"<= {TARGET_P99_MS} ms",
         verdict(shared["p99_ms"] <= TARGET_P99_MS)],
        [f"catch-up, {c['databases']} x {c['rows_each']:,} rows (median of"
         f" {len(c['rounds'])} rounds)", f"{c['vs_raw_ceiling']:.0%}",
         f">= {TARGET_CATCHUP:.0%}", verdict(c["vs_raw_ceiling"] >= TARGET_CATCHUP)],
    ])
    print_table("one daemon", ["phase", "seconds", "daemon CPU", "RSS MB", "notes"], [
        ["start-up", one["startup_s"], f"{one['startup_cpu_s']:.1f} s",
         one["peak_rss_mb_after_startup"], "peak after start-up"],
        ["idle", idle["seconds"], f"{idle['cpu_share_of_one_core']:.2%}", idle["rss_mb"],
         f"resolution {idle['resolution']:.3%}; Typesense {idle['typesense_cpu_share']:.2%}"],
        ["load", load["seconds"], f"{load['daemon_cpu_share']:.0%}", one["peak_rss_mb"],
         f"p50 {load['p50_ms']:.0f} ms, p95 {load['p95_ms']:.0f}, p99 {load['p99_ms']:.0f},"
         f" max {load['max_ms']:.0f} ({load['sampled']} sampled);"
         f" Typesense {load['typesense_cpu_share']:.0%};"
         f" machine {load['machine_busy_cores_while_writing']:.1f} of"
         f" {report['machine']['cpus']} cores busy"],
    ])
    print_table("catch-up (docs/s), each round against its own raw import",
                ["", "docs/s", "seconds", "vs ceiling"], [
        ["raw, 1 client thread (once)", c["raw"][0]["docs_per_s"], c["raw"][0]["seconds"], ""],
        *[row for i, m in enumerate(c["rounds"]) for row in (
            [f"round {i + 1}: raw, {m['raw'][1]['threads']} client threads",
             m["raw"][1]["docs_per_s"], m["raw"][1]["seconds"], ""],
            [f"round {i + 1}: daemon, from its start", m["docs_per_s"],
             m["seconds_from_daemon_start"], f"{m['vs_raw_ceiling']:.0%}"],
        )],
        ["median round, daemon from the first document seen (reference)",
         c["docs_per_s_after_first_document"] or "",
         c["seconds_from_daemon_start"] - (c["first_document_after_s"] or 0),
         f"{(c['docs_per_s_after_first_document'] or 0) / c['raw_ceiling_docs_per_s']:.0%}"],
    ])
    print_table(f"single-database daemons (x {scale:.0f} extrapolated to {count:,})",
                ["", "RSS MB", "idle CPU"], [
        [f"{s['daemons']} daemons, measured", s["rss_mb_total"],
         f"{s['idle_cpu_share_total']:.2%}"],
        [f"{count:,} daemons, extrapolated", s["rss_mb_total"] * scale,
         f"{s['idle_cpu_share_total'] * scale:.1%}"],
        [f"one daemon, {count:,} databases", one["peak_rss_mb"],
         f"{idle['cpu_share_of_one_core']:.2%}"],
    ])


if __name__ == "__main__":
    if "--writer" in sys.argv[1:]:
        writer(sys.argv[1:])
    else:
        main()
