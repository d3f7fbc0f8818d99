"""Capacity of cdc-daemon against one Typesense node and a 3-node Raft cluster (README "Scaling
out"). Prints tables and writes benchmarks/results/cluster_capacity.json.

    .venv/bin/python benchmarks/cluster_capacity.py [--quick] [--only SECTION,...]

1. raw imports: docs/s and request latency at batch 100 and 1,000, into a single node, the
   cluster's leader and a follower (which forwards to the leader);
2. the daemon draining a backlog (`run --once`): changes/s, one node vs the cluster;
3. change-to-search latency with the daemon running: an app commits one row every 100 ms;
   time until the document is readable on the node written to and on every node;
4. many daemons, one cluster: K daemons (own database each) draining at once: aggregate
   changes/s, daemon CPU per 1,000 changes, Typesense CPU;
5. the fleet pattern: daemons running, each app committing one row at a time (small batches):
   Typesense CPU per change and the worst lag;
6. Typesense memory (RSS) and disk per million documents of the seed's `elements` shape.

`--only fleet,memory` runs some sections; `--quick` uses small sizes.

Everything runs on loopback from the bundled Typesense binary; other processes on the machine
(tests run by others) are recorded with the results, since they share the two cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from benchlib import ELEMENTS_DDL, ELEMENTS_TABLE, print_table

from cdc_daemon.localserver import LocalTypesense, free_port, server_binary

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
KEY = "capacity-key"
HEADERS = {"X-TYPESENSE-API-KEY": KEY}
CLK_TCK = os.sysconf("SC_CLK_TCK")
SCHEMA_FIELDS = [
    {"name": "element_type", "type": "string"},
    {"name": "element_id", "type": "int32"},
    {"name": "sequence_number", "type": "int32"},
    {"name": "version_number", "type": "int32"},
    {"name": "comment", "type": "string", "optional": True},
    {"name": "created_at", "type": "string", "facet": True, "optional": True},
    {"name": "updated_at", "type": "string", "facet": True, "optional": True},
]
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "omicron",
]


def document(i: int) -> dict[str, Any]:
    words = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(6))
    return {
        "id": str(i),
        "element_type": "note",
        "element_id": i % 100_000,
        "sequence_number": i,
        "version_number": 1,
        "comment": f"element {i}: {words}",
        "created_at": "2024-06-07 12:00:00",
        "updated_at": "2024-06-07 12:00:00",
    }


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def others() -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                for word in ("pytest", "typesense-server", "cdc_daemon"):
                    if word in cmd:
                        counts[word] = counts.get(word, 0) + 1
    return counts


# -- servers -------------------------------------------------------------------------------------


class Servers:
    """A single node, or three nodes forming one Raft cluster on 127.0.0.1."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        if size == 1:
            self.nodes = [LocalTypesense(root / "single", KEY)]
        else:
            ports = [(free_port(), free_port()) for _ in range(size)]
            nodes_file = root / "nodes"
            nodes_file.write_text(",".join(f"127.0.0.1:{p}:{a}" for p, a in ports))
            self.nodes = [
                LocalTypesense(
                    root / f"node{i}", KEY, port=a, peering_port=p, nodes_file=nodes_file
                )
                for i, (p, a) in enumerate(ports)
            ]
        self.http = httpx.Client(headers=HEADERS, timeout=120)

    def __enter__(self) -> Servers:
        server_binary()
        for node in self.nodes:
            node.start(wait=0)
        for node in self.nodes:
            node.wait_healthy(120)
        deadline = time.monotonic() + 120
        while not self._writable():
            if time.monotonic() > deadline:
                raise RuntimeError("no leader after 120 s")
            time.sleep(0.2)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()
        for node in self.nodes:
            node.stop()

    def _writable(self) -> bool:
        try:
            self.http.post(
                self.nodes[0].url + "/collections",
                json={"name": "_ready", "fields": [{"name": "n", "type": "int32"}]},
            )
            return all(
                '"success":true'
                in self.http.post(
                    f"{n.url}/collections/_ready/documents/import?action=upsert",
                    content='{"id":"1","n":1}',
                ).text
                for n in self.nodes
            )
        except httpx.HTTPError:
            return False

    def leader(self) -> LocalTypesense:
        for node in self.nodes:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if self.http.get(node.url + "/debug").json().get("state") == 1:
                    return node
        return self.nodes[0]

    def followers(self) -> list[LocalTypesense]:
        leader = self.leader()
        return [n for n in self.nodes if n is not leader]

    def cpu(self) -> float:
        return sum(cpu_of(n.process.pid) for n in self.nodes if n.process is not None)


# -- 1. raw imports --------------------------------------------------------------------------------


def raw_imports(servers: Servers, label: str, url: str, docs: int, batch: int) -> dict[str, Any]:
    name = f"raw_{label}_{batch}"
    servers.http.post(
        f"{url}/collections",
        json={"name": name, "fields": SCHEMA_FIELDS, "default_sorting_field": "sequence_number"},
    )
    latencies = []
    started = time.perf_counter()
    for start in range(0, docs, batch):
        body = "\n".join(json.dumps(document(i)) for i in range(start, min(docs, start + batch)))
        t = time.perf_counter()
        response = servers.http.post(
            f"{url}/collections/{name}/documents/import?action=upsert", content=body
        )
        latencies.append(time.perf_counter() - t)
        assert response.status_code == 200 and '"success":false' not in response.text
    seconds = time.perf_counter() - started
    servers.http.delete(f"{servers.nodes[0].url}/collections/{name}")
    return {
        "target": label,
        "batch": batch,
        "docs": docs,
        "docs_per_s": docs / seconds,
        "p50_ms": pct(latencies, 50) * 1000,
        "p95_ms": pct(latencies, 95) * 1000,
    }


# -- the daemon ------------------------------------------------------------------------------------


def make_db(folder: Path, rows: int, start: int = 1) -> Path:
    folder.mkdir(parents=True)
    db = folder / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(ELEMENTS_DDL)
    conn.close()
    return db


def app_insert(db: Path, first: int, count: int) -> None:
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO elements (id, element_type, element_id, sequence_number, version_number,"
        " comment) VALUES (?, 'note', ?, ?, 1, ?)",
        ((i, i % 100_000, i, document(i)["comment"]) for i in range(first, first + count)),
    )
    conn.execute("COMMIT")
    conn.close()


def write_config(db: Path, nodes: list[str], collection: str, batch: int = 1000) -> Path:
    config = {
        "database": str(db),
        "typesense": {"nodes": nodes, "api_key": KEY, "timeout": 60},
        "sync": {"batch_size": batch, "poll_interval": 0.5},
        "logging": {"format": "json", "level": "info"},
        "tables": [{**ELEMENTS_TABLE, "collection": collection}],
    }
    path = db.parent / "cdc.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [sys.executable, "-m", "cdc_daemon", "--config", str(path), "install"],
        check=True,
        capture_output=True,
    )
    return path


def run_once(configs: list[Path]) -> tuple[float, list[float]]:
    """`run --once` for each config at the same moment. Returns (seconds from the first batch's
    start to the last batch's end over all daemons, from their own logs; 0.0 when nothing was
    synced) and each daemon's CPU seconds (start-up included)."""
    procs = []
    for c in configs:
        with open(c.parent / "run.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cdc_daemon", "--config", str(c), "run", "--once"],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    cpus = []
    for proc in procs:
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.returncode == 0, (proc.args, proc.returncode)
        cpus.append(usage.ru_utime + usage.ru_stime)
    starts, ends = [], []
    for c in configs:
        for line in (c.parent / "run.log").read_text().splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "batch synced":
                end = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                ends.append(end)
                starts.append(end - event["duration_ms"] / 1000)
    return (max(ends) - min(starts) if ends else 0.0), cpus


def drain(servers: Servers, root: Path, label: str, nodes: list[str], rows: int) -> dict[str, Any]:
    db = make_db(root / f"drain_{label}", rows)
    config = write_config(db, nodes, f"drain_{label}")
    run_once([config])  # creates the collection
    _, idle_cpus = run_once([config])  # start-up and shut-down alone: CPU subtracted below
    app_insert(db, 1, rows)
    ts_cpu = servers.cpu()
    seconds, cpus = run_once([config])
    return {
        "target": label,
        "changes": rows,
        "seconds": seconds,
        "changes_per_s": rows / seconds,
        "daemon_cpu_s_per_1000": max(0.0, cpus[0] - idle_cpus[0]) / rows * 1000,
        "typesense_cpu_s_per_1000": (servers.cpu() - ts_cpu) / rows * 1000,
    }


def latency(
    servers: Servers, root: Path, label: str, nodes: list[str], samples: int
) -> dict[str, Any]:
    db = make_db(root / f"lat_{label}", 0)
    config = write_config(db, nodes, f"lat_{label}")
    run_once([config])
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cdc_daemon", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first, everywhere = [], []
    try:
        time.sleep(1.0)  # let it start and go idle
        urls = [n.url for n in servers.nodes]
        for i in range(1, samples + 1):
            app_insert(db, i, 1)
            committed = time.perf_counter()
            seen: dict[str, float] = {}
            deadline = committed + 30
            while len(seen) < len(urls) and time.perf_counter() < deadline:
                for url in urls:
                    if url in seen:
                        continue
                    r = servers.http.get(f"{url}/collections/lat_{label}/documents/{i}")
                    if r.status_code == 200:
                        seen[url] = time.perf_counter() - committed
                time.sleep(0.002)
            first.append(seen.get(nodes[0], float("inf")))
            everywhere.append(max(seen.values()) if len(seen) == len(urls) else float("inf"))
            time.sleep(0.1)
    finally:
        daemon.terminate()
        daemon.wait(30)
    return {
        "target": label,
        "samples": samples,
        "written_node_p50_ms": pct(first, 50) * 1000,
        "written_node_p95_ms": pct(first, 95) * 1000,
        "all_nodes_p50_ms": pct(everywhere, 50) * 1000,
        "all_nodes_p95_ms": pct(everywhere, 95) * 1000,
    }


def many(servers: Servers, root: Path, count: int, rows: int) -> dict[str, Any]:
    urls = [n.url for n in servers.nodes]
    configs = []
    for k in range(count):
        db = make_db(root / f"many{count}_{k}", rows)
        # Each daemon prefers a different node, as hosts near different nodes would.
        order = urls[k % len(urls) :] + urls[: k % len(urls)]
        configs.append(write_config(db, order, f"many{count}_{k}"))
    run_once(configs)
    _, idle_cpus = run_once(configs)  # start-up and shut-down alone: CPU subtracted below
    for config in configs:
        app_insert(config.parent / "app.db", 1, rows)
    ts_cpu = servers.cpu()
    seconds, cpus = run_once(configs)
    cpus = [max(0.0, c - i) for c, i in zip(cpus, idle_cpus, strict=True)]
    total = rows * count
    return {
        "daemons": count,
        "changes_each": rows,
        "seconds": seconds,
        "aggregate_changes_per_s": total / seconds,
        "daemon_cpu_s_per_1000": sum(cpus) / total * 1000,
        "typesense_cpu_s_per_1000": (servers.cpu() - ts_cpu) / total * 1000,
    }


def fleet(servers: Servers, root: Path, count: int, rate: float, seconds: float) -> dict[str, Any]:
    """The fleet pattern: `count` daemons running, each app committing one row at a time at
    `rate` commits/s: small batches. Typesense and daemon CPU, worst lag seen."""
    urls = [n.url for n in servers.nodes]
    configs = []
    for k in range(count):
        db = make_db(root / f"fleet{count}_{rate:.0f}_{k}", 0)
        order = urls[k % len(urls) :] + urls[: k % len(urls)]
        configs.append(write_config(db, order, f"fleet{count}_{rate:.0f}_{k}"))
    run_once(configs)
    daemons = [
        subprocess.Popen(
            [sys.executable, "-m", "cdc_daemon", "--config", str(c), "run"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for c in configs
    ]
    lag = 0.0
    try:
        time.sleep(2)  # started and idle
        daemon_cpu = sum(cpu_of(d.pid) for d in daemons)
        ts_cpu = servers.cpu()
        started = time.monotonic()
        # One writer process per app (stdlib sqlite3), one row per commit at `rate`.
        writer = (
            "import sqlite3,sys,time\n"
            "db,rate,seconds=sys.argv[1],float(sys.argv[2]),float(sys.argv[3])\n"
            "c=sqlite3.connect(db,timeout=30,isolation_level=None)\n"
            "t0=time.monotonic();i=0\n"
            "while time.monotonic()-t0<seconds:\n"
            "  i+=1\n"
            '  c.execute("INSERT INTO elements (id,element_type,element_id,sequence_number,'
            "version_number,comment) VALUES (?,'note',?,?,1,'fleet row')\",(i,i,i))\n"
            "  time.sleep(max(0.0,t0+i/rate-time.monotonic()))\n"
            "print(i)\n"
        )
        apps = [
            subprocess.Popen(
                [sys.executable, "-c", writer, str(c.parent / "app.db"), str(rate), str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for c in configs
        ]
        while any(a.poll() is None for a in apps):
            for c in configs:
                conn = sqlite3.connect(c.parent / "app.db", timeout=30)
                oldest = conn.execute("SELECT MIN(ts) FROM change_log").fetchone()[0]
                conn.close()
                if oldest is not None:
                    lag = max(lag, time.time() - oldest)
            time.sleep(0.25)
        written = sum(int(a.communicate()[0].strip() or 0) for a in apps)
        wall = time.monotonic() - started
        ts_cores = (servers.cpu() - ts_cpu) / wall
        daemon_cores = (sum(cpu_of(d.pid) for d in daemons) - daemon_cpu) / wall
    finally:
        for d in daemons:
            d.terminate()
            d.wait(30)
    return {
        "daemons": count,
        "commits_per_s_each": rate,
        "changes_per_s": written / wall,
        "typesense_cores": ts_cores,
        "daemon_cores": daemon_cores,
        "typesense_ms_per_change": ts_cores / (written / wall) * 1000,
        "worst_lag_s": lag,
    }


def memory(servers: Servers, docs: int) -> dict[str, Any]:
    """Marginal RSS and disk per document: the slope from docs/4 to docs documents, so the
    collection's fixed cost and the allocator's first arenas are left out."""
    node = servers.nodes[0]
    assert node.process is not None
    name = "mem_elements"
    servers.http.post(
        f"{node.url}/collections",
        json={"name": name, "fields": SCHEMA_FIELDS, "default_sorting_field": "sequence_number"},
    )

    def load(first: int, last: int) -> tuple[float, float]:
        for start in range(first, last, 5000):
            body = "\n".join(json.dumps(document(i)) for i in range(start, min(last, start + 5000)))
            servers.http.post(
                f"{node.url}/collections/{name}/documents/import?action=upsert", content=body
            )
        time.sleep(2)
        disk = sum(f.stat().st_size for f in node.data_dir.rglob("*") if f.is_file())
        assert node.process is not None
        return rss_mb(node.process.pid), disk / 2**20

    disk0 = sum(f.stat().st_size for f in node.data_dir.rglob("*") if f.is_file()) / 2**20
    points = [(0, rss_mb(node.process.pid), disk0)]
    step = docs // 4
    for k in range(4):
        rss, disk = load(k * step, (k + 1) * step)
        points.append(((k + 1) * step, rss, disk))
    (n1, r1, d1), (n2, r2, d2) = points[1], points[-1]
    per = 1_000_000 / (n2 - n1)
    return {
        "docs": docs,
        "points": [{"docs": n, "rss_mb": r, "disk_mb": d} for n, r, d in points],
        "rss_mb_per_million": (r2 - r1) * per,
        "disk_mb_per_million": (d2 - d1) * per,
    }


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    sections = ("raw", "drain", "latency", "many", "fleet", "memory")
    parser.add_argument("--only", default=",".join(sections), help="comma-separated sections")
    args = parser.parse_args()
    only = set(args.only.split(","))
    raw_docs, drain_rows, samples, many_rows, mem_docs, fleet_seconds = (
        (4000, 4000, 15, 1000, 40_000, 5.0)
        if args.quick
        else (20_000, 20_000, 40, 5000, 400_000, 15.0)
    )
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
            "other_processes": others(),
        },
        "raw": [],
        "drain": [],
        "latency": [],
        "many": [],
        "fleet": [],
        "memory": {},
    }
    root = Path(tempfile.mkdtemp(prefix="cluster-capacity-"))
    try:
        with Servers(root / "one", 1) as single:
            url = single.nodes[0].url
            if "raw" in only:
                for batch in (100, 1000):
                    results["raw"].append(raw_imports(single, "1 node", url, raw_docs, batch))
            if "drain" in only:
                results["drain"].append(drain(single, root, "1_node", [url], drain_rows))
            if "latency" in only:
                results["latency"].append(latency(single, root, "1_node", [url], samples))
            if "memory" in only:
                results["memory"] = memory(single, mem_docs)
        with Servers(root / "three", 3) as cluster:
            leader, follower = cluster.leader(), cluster.followers()[0]
            urls = [n.url for n in cluster.nodes]
            for batch in (100, 1000) if "raw" in only else ():
                results["raw"].append(raw_imports(cluster, "leader", leader.url, raw_docs, batch))
                results["raw"].append(
                    raw_imports(cluster, "follower", follower.url, raw_docs, batch)
                )
            by_leader = [leader.url] + [u for u in urls if u != leader.url]
            by_follower = [follower.url] + [u for u in urls if u != follower.url]
            if "drain" in only:
                results["drain"].append(drain(cluster, root, "3_leader", by_leader, drain_rows))
                results["drain"].append(drain(cluster, root, "3_follower", by_follower, drain_rows))
            if "latency" in only:
                results["latency"].append(latency(cluster, root, "3_leader", by_leader, samples))
                results["latency"].append(
                    latency(cluster, root, "3_follower", by_follower, samples)
                )
            for count in (1, 2, 4, 8) if "many" in only else ():
                results["many"].append(many(cluster, root, count, many_rows))
            for count, rate in ((4, 25.0), (8, 25.0), (8, 50.0)) if "fleet" in only else ():
                results["fleet"].append(fleet(cluster, root, count, rate, fleet_seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["machine"]["max_rss_self_mb"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )

    print_table(
        "raw imports (one client, sequential requests)",
        ["target", "batch", "docs/s", "p50 ms", "p95 ms"],
        [
            [r["target"], r["batch"], r["docs_per_s"], r["p50_ms"], r["p95_ms"]]
            for r in results["raw"]
        ],
    )
    print_table(
        "daemon draining a backlog (run --once, batch 1,000)",
        ["target", "changes", "s", "changes/s", "daemon CPU s/1k", "Typesense CPU s/1k"],
        [
            [
                r["target"],
                r["changes"],
                r["seconds"],
                r["changes_per_s"],
                r["daemon_cpu_s_per_1000"],
                r["typesense_cpu_s_per_1000"],
            ]
            for r in results["drain"]
        ],
    )
    print_table(
        "change → search latency (one row per commit, daemon running)",
        ["target", "samples", "written p50 ms", "written p95 ms", "all p50 ms", "all p95 ms"],
        [
            [
                r["target"],
                r["samples"],
                r["written_node_p50_ms"],
                r["written_node_p95_ms"],
                r["all_nodes_p50_ms"],
                r["all_nodes_p95_ms"],
            ]
            for r in results["latency"]
        ],
    )
    print_table(
        "many daemons, one 3-node cluster (each drains its own backlog at once)",
        [
            "daemons",
            "changes each",
            "s",
            "changes/s total",
            "daemon CPU s/1k",
            "Typesense CPU s/1k",
        ],
        [
            [
                r["daemons"],
                r["changes_each"],
                r["seconds"],
                r["aggregate_changes_per_s"],
                r["daemon_cpu_s_per_1000"],
                r["typesense_cpu_s_per_1000"],
            ]
            for r in results["many"]
        ],
    )
    print_table(
        "the fleet pattern: daemons running, each app committing one row at a time",
        [
            "daemons",
            "commits/s each",
            "changes/s",
            "Typesense cores",
            "daemon cores",
            "Typesense ms/change",
            "worst lag s",
        ],
        [
            [
                r["daemons"],
                r["commits_per_s_each"],
                r["changes_per_s"],
                r["typesense_cores"],
                r["daemon_cores"],
                r["typesense_ms_per_change"],
                r["worst_lag_s"],
            ]
            for r in results["fleet"]
        ],
    )
    m = results["memory"] or {"points": [], "rss_mb_per_million": 0, "disk_mb_per_million": 0}
    print_table(
        "Typesense memory and disk (elements-shaped documents, one node)",
        ["docs", "RSS MB", "disk MB"],
        [[p["docs"], p["rss_mb"], p["disk_mb"]] for p in m["points"]],
    )
    if results["memory"]:
        print(
            f"marginal: {m['rss_mb_per_million']:,.0f} MB RSS and"
            f" {m['disk_mb_per_million']:,.0f} MB disk per million documents"
        )
    print(f"\nload: {results['machine']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "cluster_capacity" + ("_quick" if args.quick else "")
    if only != set(sections):
        name += "_" + "_".join(sorted(only))
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
