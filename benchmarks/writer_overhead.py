"""The app writer's cost of the triggers: commits/s with and without them.

    .venv/bin/python benchmarks/writer_overhead.py [--quick] [--repeats 5] [--diagnose]

The app is a separate process (benchmarks/app_writer.py: Python's stdlib sqlite3, here SQLite
3.40) inserting `elements` rows into a fresh database, as fast as it can, in one-row and in
1,000-row transactions: in WAL mode with synchronous=NORMAL (the usual WAL setting and the
harshest case: a commit is not synced, so the trigger's work weighs most) and FULL (SQLite's
default), and in rollback-journal (DELETE) mode with synchronous=FULL. No daemon runs: the log
only grows, as during an outage. "with" is exactly what `cdc-daemon install` creates. Runs
alternate (without, with, without, with, ...); the ratio is the median of the with/without
rates, by wall time and by the app's own CPU time.

--diagnose (on by default in full mode) adds, for WAL + NORMAL, what-if log tables behind the
same triggers, to show where a triggered insert's time goes: with AUTOINCREMENT (a
sqlite_sequence update per commit: the log had it before), without the `ts` default expression,
with only (seq, tbl, pk, op).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchlib import (
    World,
    app,
    app_result,
    arguments,
    machine,
    median,
    print_table,
    save,
)

from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.triggers import install

TS = "(julianday('now') - 2440587.5) * 86400.0"
REST = "tbl TEXT NOT NULL, pk, op TEXT NOT NULL"
RETRY = (
    "attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL DEFAULT 0, last_error TEXT"
)
WHAT_IF = {
    "with AUTOINCREMENT (as before)": f"seq INTEGER PRIMARY KEY AUTOINCREMENT, {REST},"
    f" ts REAL NOT NULL DEFAULT ({TS}), {RETRY}",
    "no ts default": f"seq INTEGER PRIMARY KEY, {REST}, ts REAL, {RETRY}",
    "4 columns": f"seq INTEGER PRIMARY KEY, {REST}",
}


def prepare(world: World, name: str, journal: str, variant: str) -> Path:
    db = world.app_db(name, journal_mode=journal)
    if variant == "without":
        return db
    database = Database(db)
    try:
        install(database, LogTables("change_log"), [database.table_info("elements")])
        if variant in WHAT_IF:
            with database.write() as conn:  # the same triggers, another log table behind them
                conn.execute('DROP TABLE "change_log"')
                conn.execute(f'CREATE TABLE "change_log" ({WHAT_IF[variant]})')
    finally:
        database.close()
    return db


def one_run(
    world: World, case: tuple[str, str, int], rows: int, variant: str, n: int
) -> dict[str, Any]:
    journal, synchronous, txn = case
    name = f"{journal}-{synchronous}-{txn}-{variant}-{n}".replace(" ", "_").replace(",", "")
    db = prepare(world, name, journal, variant)
    result = app_result(app("bulk", db, "--rows", str(rows), "--txn", str(txn),
                            "--synchronous", synchronous))
    shutil.rmtree(db.parent)
    return {"commits_per_s": result["commits"] / result["wall_s"],
            "rows_per_s": rows / result["wall_s"],
            "cpu_us_per_row": result["cpu_s"] / rows * 1e6}


def main() -> None:
    args = arguments(__doc__ or "", diagnose={"action": "store_true", "help": "what-if logs"})
    repeats = args.repeats or (3 if args.quick else 5)
    diagnose = args.diagnose or not args.quick
    variants = ["with", *(WHAT_IF if diagnose else ())]
    sizes = {  # (journal, synchronous, rows per transaction) -> rows per run
        ("wal", "NORMAL", 1): 3000 if args.quick else 20000,
        ("wal", "NORMAL", 1000): 30_000 if args.quick else 300_000,
        ("wal", "FULL", 1): 1000 if args.quick else 5000,
        ("wal", "FULL", 1000): 30_000 if args.quick else 300_000,
        ("delete", "FULL", 1): 500 if args.quick else 3000,
        ("delete", "FULL", 1000): 30_000 if args.quick else 300_000,
    }
    report: dict[str, Any] = {
        "benchmark": "writer_overhead",
        "command": "benchmarks/writer_overhead.py" + (" --quick" if args.quick else ""),
        "machine": machine(),
        "repeats": repeats,
        "cases": [],
    }
    table = []
    with World("writer") as world:
        for case, rows in sizes.items():
            journal, synchronous, txn = case
            harsh = case[:2] == ("wal", "NORMAL")
            names = ["without", *(variants if harsh else ["with"])]
            runs: dict[str, list[dict[str, Any]]] = {v: [] for v in names}
            for n in range(repeats):
                for variant in runs:
                    runs[variant].append(one_run(world, case, rows, variant, n))
            base = runs["without"]
            for variant in names[1:]:
                ratios = [
                    w["rows_per_s"] / b["rows_per_s"]
                    for w, b in zip(runs[variant], base, strict=True)
                ]
                without_cpu = median([b["cpu_us_per_row"] for b in base])
                with_cpu = median([w["cpu_us_per_row"] for w in runs[variant]])
                result = {
                    "journal": journal,
                    "synchronous": synchronous,
                    "rows_per_transaction": txn,
                    "rows": rows,
                    "variant": variant,
                    "without_commits_per_s": median([b["commits_per_s"] for b in base]),
                    "with_commits_per_s": median([w["commits_per_s"] for w in runs[variant]]),
                    "ratio_wall": median(ratios),
                    "ratio_each_run": [round(r, 3) for r in ratios],
                    "ratio_cpu": without_cpu / with_cpu,
                    "without_cpu_us_per_row": without_cpu,
                    "with_cpu_us_per_row": with_cpu,
                }
                report["cases"].append(result)
                label = "cdc-daemon triggers" if variant == "with" else f"what-if: {variant}"
                table.append([
                    journal, synchronous, txn, label, result["without_commits_per_s"],
                    result["with_commits_per_s"], f"{result['ratio_wall']:.0%}",
                    " ".join(f"{r:.0%}" for r in ratios), f"{result['ratio_cpu']:.0%}",
                    without_cpu, with_cpu,
                ])
                kept, kept_cpu = result["ratio_wall"], result["ratio_cpu"]
                print(f"  {journal} {synchronous} {txn}-row txns, {label}:"
                      f" {kept:.0%} of trigger-free (cpu {kept_cpu:.0%})", flush=True)
        report["load"] = world.load.read()
    print_table(
        f"app commits with triggers vs without (median of {repeats} alternating runs)",
        ["journal", "sync", "rows/txn", "log", "commits/s without", "commits/s with",
         "kept (wall)", "each run", "kept (cpu)", "cpu us/row without", "cpu us/row with"],
        table,
    )
    print(f"\nload during the run: {report['load']}")
    save("writer_overhead", report)


if __name__ == "__main__":
    main()
