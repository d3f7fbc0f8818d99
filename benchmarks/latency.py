"""Commit → searchable latency at steady app write rates.

    .venv/bin/python benchmarks/latency.py [--quick] [--rates 50,200,1000] [--seconds 30]

One app database with the triggers, one `cdc-daemon run` subprocess with the default sync
settings (adaptive batches up to batch_size 5,000, poll_interval 0.5). For each rate R (and each
repeat) the app process commits one row per transaction at R commits/s for the given seconds
(stdlib sqlite3, WAL, synchronous=NORMAL) and records when each COMMIT returned
(CLOCK_MONOTONIC). Meanwhile a watcher searches the collection every 10 ms for documents with
`sequence_number >=` the lowest one not yet seen, and records when each first appears (the time
the answer arrived). Latency = first seen - committed: an upper bound, coarse by up to one poll
interval plus a search round trip (both reported). The first second of each phase is left out as
warm-up.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from benchlib import (
    API_KEY,
    World,
    app,
    app_result,
    arguments,
    cdc,
    machine,
    median,
    percentile,
    print_table,
    save,
    wait_until,
)

POLL_INTERVAL = 0.01
WARMUP = 1.0


class Watcher(threading.Thread):
    """Records when each sequence_number first shows up in a search."""

    def __init__(self, url: str, collection: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=url, headers={"X-TYPESENSE-API-KEY": API_KEY})
        self.path = f"/collections/{collection}/documents/search"
        self.low = 0
        self.seen: dict[int, float] = {}
        self.round_trips: list[float] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def watch_from(self, low: int) -> None:
        with self.lock:
            self.low = low
            self.seen = {}
            self.round_trips = []

    def run(self) -> None:
        while not self.halt.is_set():
            with self.lock:
                low = self.low
            sent = time.monotonic()
            response = self.client.get(
                self.path,
                params={
                    "q": "*",
                    "query_by": "comment",
                    "filter_by": f"sequence_number:>={low}",
                    "sort_by": "sequence_number:asc",
                    "per_page": 250,
                    "include_fields": "sequence_number",
                },
            )
            arrived = time.monotonic()
            if response.status_code == 200:
                with self.lock:
                    self.round_trips.append(arrived - sent)
                    for hit in response.json()["hits"]:
                        self.seen.setdefault(hit["document"]["sequence_number"], arrived)
                    while self.low in self.seen:
                        self.low += 1
            self.halt.wait(POLL_INTERVAL)
        self.client.close()


def phase(
    world: World, db: Path, watcher: Watcher, daemon_cpu: Any, rate: float, seconds: float,
    start: int,
) -> dict[str, Any]:
    out = db.parent / f"commits-{start}.json"
    watcher.watch_from(start)
    cpu = daemon_cpu()
    began = time.monotonic()
    result = app_result(
        app("steady", db, "--rate", str(rate), "--seconds", str(seconds), "--start", str(start),
            "--out", str(out))
    )
    commits: list[tuple[int, float]] = json.loads(out.read_text())
    last = commits[-1][0]
    wait_until(lambda: watcher.low > last, 120, what="every committed row searchable")
    cpu = daemon_cpu() - cpu
    elapsed = time.monotonic() - began
    with watcher.lock:
        seen = dict(watcher.seen)
        trips = list(watcher.round_trips)
    first = commits[0][1]
    latencies = [seen[i] - t for i, t in commits if t - first >= WARMUP]
    return {
        "rate": rate,
        "achieved_rate": result["achieved_rate"],
        "commits": len(commits),
        "measured": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
        "daemon_cpu_share": cpu / elapsed,
        "search_rtt_p50_ms": percentile(trips, 50) * 1000,
        "latencies_ms": [round(x * 1000, 2) for x in latencies],
    }


def histogram(latencies_ms: list[float]) -> dict[str, int]:
    """Counts per 5 ms bucket ("0-5": ...), instead of every sample in the JSON."""
    counts: dict[int, int] = {}
    for x in latencies_ms:
        counts[int(x // 5) * 5] = counts.get(int(x // 5) * 5, 0) + 1
    return {f"{low}-{low + 5}": counts[low] for low in sorted(counts)}


def main() -> None:
    args = arguments(
        __doc__ or "",
        rates={"default": "50,200,1000", "help": "comma-separated commits/s"},
        seconds={"type": float, "default": None, "help": "per phase"},
    )
    rates = [float(r) for r in args.rates.split(",")]
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    repeats = args.repeats or (1 if args.quick else 2)
    report: dict[str, Any] = {
        "benchmark": "latency",
        "command": "benchmarks/latency.py" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "seconds_per_phase": seconds,
        "poll_interval_s": POLL_INTERVAL,
        "warmup_s": WARMUP,
        "daemon": {"batch_size": "default", "poll_interval": 0.5},
        "rates": {},
    }
    with World("latency") as world:
        server = world.start_typesense()
        db = world.app_db("latency")
        config = world.config(db, "latency")
        cdc(config, "install")
        daemon = world.daemon(config)
        wait_until(lambda: world.ts.get("/aliases/latency").status_code == 200, 60,
                   what="collection")
        physical = world.ts.get("/aliases/latency").json()["collection_name"]
        watcher = Watcher(server.url, physical)
        watcher.start()
        world.callback(watcher.halt.set)
        start = 1
        phases: dict[float, list[dict[str, Any]]] = {rate: [] for rate in rates}
        for rep in range(repeats):
            for rate in rates:
                result = phase(world, db, watcher, daemon.cpu_seconds, rate, seconds, start)
                start += result["commits"] + 1
                phases[rate].append(result)
                print(f"  {rate:.0f}/s repeat {rep + 1}: p50 {result['p50_ms']:.1f} ms,"
                      f" p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms", flush=True)
        report["load"] = world.load.read()
        if daemon.stop() != 0:
            raise RuntimeError(f"daemon exited with {daemon.process.returncode}; see {daemon.log}")
    rows = []
    for rate, runs in phases.items():
        pooled = [x for r in runs for x in r.pop("latencies_ms")]
        summary = {
            "achieved_rate": median([r["achieved_rate"] for r in runs]),
            "p50_ms": percentile(pooled, 50),
            "p95_ms": percentile(pooled, 95),
            "p99_ms": percentile(pooled, 99),
            "max_ms": max(pooled),
            "p99_each_run_ms": [round(r["p99_ms"], 1) for r in runs],
            "daemon_cpu_share": median([r["daemon_cpu_share"] for r in runs]),
            "search_rtt_p50_ms": median([r["search_rtt_p50_ms"] for r in runs]),
            "histogram_ms": histogram(pooled),
        }
        report["rates"][str(int(rate))] = {"summary": summary, "runs": runs}
        rows.append([
            int(rate), summary["achieved_rate"], summary["p50_ms"], summary["p95_ms"],
            summary["p99_ms"], summary["max_ms"],
            " ".join(f"{x:.0f}" for x in summary["p99_each_run_ms"]),
            f"{summary['daemon_cpu_share']:.0%}",
        ])
    print_table(
        f"commit -> searchable latency (ms; pooled over {repeats} run(s) of {seconds:.0f} s;"
        f" search every {POLL_INTERVAL * 1000:.0f} ms)",
        ["commits/s", "achieved", "p50", "p95", "p99", "max", "p99 each run", "daemon cpu"],
        rows,
    )
    print(f"\nload during the run: {report['load']}")
    save("latency", report)


if __name__ == "__main__":
    main()
