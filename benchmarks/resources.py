"""The daemon's footprint: idle CPU, peak memory of a large backfill, the log during an outage.

    .venv/bin/python benchmarks/resources.py [--quick] [--backfill-rows N] [--idle-seconds S]

- idle CPU: `cdc-daemon run` (poll_interval 0.5, inotify) on a synced database nobody writes;
  utime + stime from /proc/PID/stat over the window, as a share of one core.
- backfill memory: N rows written by the app before `install`, then `cdc-daemon backfill`
  (the default sync settings: adaptive batches up to 5,000; pages of 2,000 keys); peak RSS =
  VmHWM from /proc/PID/status (sampled every 0.1 s) and ru_maxrss from wait4() (exact, after
  exit).
- outage: the daemon runs, Typesense is killed (kill -9), the app commits one row per
  transaction at R commits/s for S seconds; the log's rows and the database's files (db + -wal)
  are sampled every second. Then Typesense is started again (same data, same port) and the time
  until the log is empty is measured (it includes the daemon's backoff, capped at 30 s).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from benchlib import (
    API_KEY,
    CLK_TCK,
    PYTHON,
    World,
    app,
    app_result,
    arguments,
    cdc,
    file_bytes,
    machine,
    print_table,
    save,
    status_kb,
    wait_until,
)

from cdc_daemon.localserver import LocalTypesense


def log_rows(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute('SELECT COUNT(*) FROM "change_log"').fetchone()[0])
    finally:
        conn.close()


def log_bytes(db: Path) -> int:
    """The pages the log table holds (dbstat), wherever they are (database file or -wal)."""
    conn = sqlite3.connect(db, timeout=30)
    try:
        sql = "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name = 'change_log'"
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def ready(world: World, alias: str) -> None:
    wait_until(lambda: world.ts.get(f"/aliases/{alias}").status_code == 200, 60, what="collection")


def idle_cpu(world: World, seconds: float) -> dict[str, Any]:
    db = world.app_db("idle")
    config = world.config(db, "idle")
    cdc(config, "install")
    app_result(app("bulk", db, "--rows", "1000", "--txn", "1000"))
    daemon = world.daemon(config)
    ready(world, "idle")
    wait_until(lambda: log_rows(db) == 0, 60, what="synced")
    time.sleep(2)  # settle: the first batch and start-up are not idle
    cpu, started = daemon.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    share = (daemon.cpu_seconds() - cpu) / elapsed
    rss = status_kb(daemon.pid, "VmRSS")
    daemon.stop()
    return {
        "seconds": elapsed,
        "cpu_share_of_one_core": share,
        "resolution": 1 / CLK_TCK / elapsed,  # one clock tick
        "rss_kb": rss,
    }


def backfill_memory(world: World, rows: int) -> dict[str, Any]:
    db = world.app_db("backfill")
    app_result(app("bulk", db, "--rows", str(rows), "--txn", "10000"))
    config = world.config(db, "backfill")
    cdc(config, "install")
    with open(db.parent / "backfill.log", "wb") as log:
        process = subprocess.Popen(
            [PYTHON, "-m", "cdc_daemon", "--config", str(config), "backfill"],
            stdout=log, stderr=log, cwd=db.parent,
        )
    world.callback(lambda: process.returncode is None and process.kill())
    started = time.monotonic()
    hwm, samples = 0, []
    while True:  # wait4, not poll(): its rusage has the exact peak RSS of this one child
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        try:
            hwm = max(hwm, status_kb(process.pid, "VmHWM"))
            samples.append((round(time.monotonic() - started, 1), status_kb(process.pid, "VmRSS")))
        except (OSError, KeyError):
            pass  # exiting
        time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"backfill failed ({process.returncode}); see {db.parent}/backfill.log")
    physical = world.ts.get("/aliases/backfill").json()["collection_name"]
    documents = world.num_documents(physical)
    world.drop_collection("backfill")
    return {
        "rows": rows,
        "documents": documents,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "peak_rss_mb_vmhwm": hwm / 1024,
        "peak_rss_mb_wait4": usage.ru_maxrss / 1024,
        "rss_samples_kb": samples[:: max(1, len(samples) // 50)],
    }


def outage(world: World, rate: float, seconds: float) -> dict[str, Any]:
    assert world.typesense is not None
    name = f"outage_{int(rate)}"
    db = world.app_db(name)
    config = world.config(db, name)
    cdc(config, "install")
    daemon = world.daemon(config)
    ready(world, name)
    before_bytes = file_bytes(db)
    world.typesense.kill()
    writer = app("steady", db, "--rate", str(rate), "--seconds", str(seconds),
                 "--start", "1", "--out", str(db.parent / "commits.json"))
    started = time.monotonic()
    samples: list[dict[str, float]] = []

    def sample() -> None:
        samples.append({"t": round(time.monotonic() - started, 1), "rows": log_rows(db),
                        "log_bytes": log_bytes(db), "file_bytes": file_bytes(db)})

    while writer.poll() is None:
        sample()
        time.sleep(1.0)
    app_result(writer)
    sample()
    rows, table_bytes, grown = log_rows(db), log_bytes(db), file_bytes(db) - before_bytes
    restarted = time.monotonic()
    server = LocalTypesense(world.typesense.data_dir, api_key=API_KEY, port=world.typesense.port,
                            peering_port=world.typesense.peering_port)
    world.callback(server.stop)
    server.start()
    world.typesense = server
    up = time.monotonic() - restarted
    drained = wait_until(lambda: log_rows(db) == 0, 600, interval=0.2, what="backlog drained")
    daemon.stop()
    return {
        "rate": rate,
        "seconds": seconds,
        "log_rows": rows,
        "log_table_bytes": table_bytes,
        "log_bytes_per_change": table_bytes / rows if rows else None,
        "files_grown_bytes": grown,  # database + -wal, the app's own rows included
        "typesense_restart_s": up,
        "drained_after_restart_s": drained - restarted,
        "file_bytes_after": file_bytes(db),
        "samples": samples,
    }


def main() -> None:
    args = arguments(
        __doc__ or "",
        backfill_rows={"type": int, "default": None},
        idle_seconds={"type": float, "default": None},
    )
    rows = args.backfill_rows or (50_000 if args.quick else 1_000_000)
    idle_seconds = args.idle_seconds or (6.0 if args.quick else 20.0)
    outages = [(200.0, 5.0)] if args.quick else [(200.0, 60.0), (1000.0, 30.0)]
    report: dict[str, Any] = {
        "benchmark": "resources",
        "command": "benchmarks/resources.py" + (" --quick" if args.quick else ""),
        "machine": machine(),
    }
    with World("resources") as world:
        world.start_typesense()
        report["idle"] = idle_cpu(world, idle_seconds)
        print(f"  idle: {report['idle']['cpu_share_of_one_core']:.2%} of a core", flush=True)
        report["backfill"] = backfill_memory(world, rows)
        peak = report["backfill"]["peak_rss_mb_wait4"]
        print(f"  backfill {rows:,} rows: peak RSS {peak:.0f} MB", flush=True)
        report["outage"] = [outage(world, rate, seconds) for rate, seconds in outages]
        report["load"] = world.load.read()
    idle, backfill = report["idle"], report["backfill"]
    print_table("idle daemon", ["window s", "cpu (% of one core)", "resolution", "RSS MB"], [[
        idle["seconds"], f"{idle['cpu_share_of_one_core']:.3%}", f"{idle['resolution']:.3%}",
        idle["rss_kb"] / 1024,
    ]])
    print_table("backfill", ["rows", "documents", "seconds", "rows/s", "peak RSS MB (VmHWM)",
                             "peak RSS MB (wait4)"], [[
        backfill["rows"], backfill["documents"], backfill["seconds"], backfill["rows_per_s"],
        backfill["peak_rss_mb_vmhwm"], backfill["peak_rss_mb_wait4"],
    ]])
    print_table("Typesense down: the log grows", ["commits/s", "seconds", "log rows",
                "log table bytes", "bytes/change", "db+wal grown", "drained after restart s"], [[
        o["rate"], o["seconds"], o["log_rows"], o["log_table_bytes"], o["log_bytes_per_change"],
        o["files_grown_bytes"], o["drained_after_restart_s"],
    ] for o in report["outage"]])
    print(f"\nload during the run: {report['load']}")
    save("resources", report)


if __name__ == "__main__":
    main()
