"""End-to-end throughput: rows committed by an app → searchable in Typesense, against the raw
import ceiling and against one request per row, all measured in the same run.

    .venv/bin/python benchmarks/throughput.py [--quick] [--sizes 100000,1000000] [--repeats 2]

For each size N and each repeat:
- raw: the same documents (built from the rows exactly as the daemon builds them, JSON-encoded
  before the clock starts) imported straight into a fresh collection, one sequential
  `import?action=upsert` per batch, at batch sizes 100 / 1,000 / 5,000; the best is the ceiling;
- e2e: a fresh app database with the triggers installed and `cdc-daemon run` (a subprocess,
  batch_size 100 / 1,000 / 5,000, and `default`: no batch_size in the config, so adaptive
  batches below the default bound) waiting; the clock starts when the app process starts
  committing N rows (stdlib sqlite3, 1,000-row transactions, as fast as it can) and stops when
  the collection counts N documents (polled every 50 ms);
- backlog (issue 18: "on a 1M-row backlog"): `cdc-daemon run` with the default config and the
  admin API is paused (`POST /v1/pause`), the app process commits N rows as above, and the clock
  runs from `POST /v1/resume` until the collection counts N documents (polled every 20 ms): the
  daemon catching up alone, as after an outage. It runs in pairs (4 by default,
  --backlog-repeats), after the repeats above: a raw import (batch 5,000: the daemon's bound and
  the best raw batch in every run) and the backlog, each on a fresh Typesense, one right after
  the other (the raw import first in pairs 1, 3, ..., second in pairs 2, 4, ...). The figure is
  the median of the pairs' ratios; each pair's ratio against the better of its raw import and
  the ceiling (the median over repeats of each repeat's best raw batch) is kept too
  (`vs_raw_ceiling`: one noisy sample against the best of several, lower);
- naive: a sample of rows (new ids) sent one `POST .../documents?action=upsert` each over one
  keep-alive connection, into the raw collection right after its N documents were imported (so
  at the same collection size); its rate is extrapolated to N.
Raw and e2e runs of a batch size follow each other (the machine's load drifts). Ratios are taken
within a repeat (e2e vs that repeat's best raw), then the median over repeats.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
from benchlib import (
    Daemon,
    World,
    app,
    app_result,
    arguments,
    cdc,
    cpu_seconds,
    documents_of,
    machine,
    median,
    print_table,
    save,
    status_kb,
    wait_until,
)

from cdc_daemon.localserver import free_port

BATCHES = (100, 1000, 5000)
APP_TXN = 1000


def source_documents(world: World, rows: int) -> tuple[dict[str, Any], list[str]]:
    """Rows written by the app (no triggers), turned into the daemon's documents and schema."""
    db = world.app_db(f"source_{rows}")
    app_result(app("bulk", db, "--rows", str(rows), "--txn", "10000"))
    schema, lines = documents_of(world.config(db, "source"))
    shutil.rmtree(db.parent)
    return schema, lines


def raw_import(
    world: World,
    schema: dict[str, Any],
    lines: list[str],
    batch: int,
    name: str,
    naive_sample: list[str] | None = None,
) -> dict[str, Any]:
    assert world.typesense is not None and world.typesense.process is not None
    world.ts.post("/collections", json={**schema, "name": name}).raise_for_status()
    bodies = ["\n".join(lines[i : i + batch]).encode() for i in range(0, len(lines), batch)]
    server_cpu = cpu_seconds(world.typesense.process.pid)
    started = time.perf_counter()
    for body in bodies:
        response = world.ts.post(
            f"/collections/{name}/documents/import",
            params={"action": "upsert", "dirty_values": "reject"},
            content=body,
        )
        response.raise_for_status()
        lines_ok = response.text.count('"success":true')
        if lines_ok != body.count(b"\n") + 1:
            raise RuntimeError(f"raw import: failed lines: {response.text[:300]}")
    seconds = time.perf_counter() - started
    server_cpu = cpu_seconds(world.typesense.process.pid) - server_cpu
    count = world.num_documents(name)
    result = {
        "batch": batch,
        "seconds": seconds,
        "docs_per_s": len(lines) / seconds,
        "server_cpu_s": server_cpu,
    }
    if naive_sample:
        result["naive"] = naive(world, naive_sample, name, first_id=len(lines) + 1)
    world.ts.delete(f"/collections/{name}")
    if count != len(lines):
        raise RuntimeError(f"raw import: {count} documents, expected {len(lines)}")
    return result


def running_daemon(world: World, config: Path, name: str) -> tuple[Daemon, str]:
    """`run` on an installed config, once its collection exists; and that collection's name."""
    cdc(config, "install")
    daemon = world.daemon(config)
    wait_until(
        lambda: world.ts.get(f"/aliases/{name}").status_code == 200, 60, what="collection"
    )
    return daemon, world.ts.get(f"/aliases/{name}").json()["collection_name"]


def stopped(world: World, daemon: Daemon, name: str, db: Path) -> None:
    """Stop the daemon (it must exit 0), drop its collection and remove the database."""
    if daemon.stop() != 0:
        raise RuntimeError(f"daemon exited with {daemon.process.returncode}; see {daemon.log}")
    world.drop_collection(name)
    shutil.rmtree(db.parent)


def end_to_end(world: World, rows: int, batch: int | None, name: str) -> dict[str, Any]:
    assert world.typesense is not None and world.typesense.process is not None
    db = world.app_db(name)
    daemon, physical = running_daemon(world, world.config(db, name, batch_size=batch), name)
    daemon_cpu, server_cpu = daemon.cpu_seconds(), cpu_seconds(world.typesense.process.pid)
    started = time.monotonic()
    writer = app("bulk", db, "--rows", str(rows), "--txn", str(APP_TXN))
    done = wait_until(
        lambda: world.num_documents(physical) >= rows, 3600, interval=0.05, what="all documents"
    )
    seconds = done - started
    daemon_cpu = daemon.cpu_seconds() - daemon_cpu
    server_cpu = cpu_seconds(world.typesense.process.pid) - server_cpu
    written = app_result(writer)
    stopped(world, daemon, name, db)
    return {
        "batch": batch,
        "seconds": seconds,
        "docs_per_s": rows / seconds,
        "app_commit_s": written["wall_s"],
        "tail_after_last_commit_s": seconds - written["wall_s"],
        "daemon_cpu_s": daemon_cpu,
        "server_cpu_s": server_cpu,
    }


def backlog(world: World, rows: int, name: str) -> dict[str, Any]:
    """The default config catching up on N rows committed while it was paused."""
    assert world.typesense is not None and world.typesense.process is not None
    db = world.app_db(name)
    port = free_port()
    config = world.config(db, name, admin={"listen": f"127.0.0.1:{port}"})
    daemon, physical = running_daemon(world, config, name)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as admin:
        admin.post("/v1/pause").raise_for_status()
        app_result(app("bulk", db, "--rows", str(rows), "--txn", str(APP_TXN)))
        daemon_cpu, server_cpu = daemon.cpu_seconds(), cpu_seconds(world.typesense.process.pid)
        started = time.monotonic()
        admin.post("/v1/resume").raise_for_status()
        done = wait_until(
            lambda: world.num_documents(physical) >= rows, 3600, interval=0.02,
            what="the backlog searchable",
        )
    seconds = done - started
    daemon_cpu = daemon.cpu_seconds() - daemon_cpu
    server_cpu = cpu_seconds(world.typesense.process.pid) - server_cpu
    peak_rss_mb = status_kb(daemon.pid, "VmHWM") / 1024  # the daemon's own peak, start included
    stopped(world, daemon, name, db)
    return {
        "seconds": seconds,
        "docs_per_s": rows / seconds,
        "daemon_cpu_s": daemon_cpu,
        "server_cpu_s": server_cpu,
        "daemon_peak_rss_mb": peak_rss_mb,
    }


def backlog_run(
    world: World, schema: dict[str, Any], lines: list[str], rep: int, ceiling: float
) -> dict[str, Any]:
    """A raw import and the default config's backlog, each on a fresh Typesense, back to back:
    the raw import first in pairs 1, 3, ... (rep 0, 2, ...), second in the others (the
    machine's speed drifts)."""
    rows = len(lines)

    def raw() -> dict[str, Any]:
        world.fresh_typesense()
        return raw_import(world, schema, lines, BATCHES[-1], f"raw_backlog_{rows}_{rep}")

    first = raw() if rep % 2 == 0 else None
    world.fresh_typesense()
    result = backlog(world, rows, f"backlog_{rows}_{rep}")
    result["raw_fresh_server"] = paired = first or raw()
    result["vs_raw"] = result["docs_per_s"] / paired["docs_per_s"]
    result["vs_raw_ceiling"] = result["docs_per_s"] / max(paired["docs_per_s"], ceiling)
    print(f"  {rows:,} rows, pair {rep + 1}, backlog: raw {paired['docs_per_s']:,.0f} docs/s,"
          f" daemon {result['docs_per_s']:,.0f} docs/s ({result['vs_raw']:.0%})", flush=True)
    return result


def end_to_end_default(world: World, rows: int, rep: int) -> dict[str, Any]:
    """end_to_end with the default sync settings (no batch_size in the config)."""
    e2e = end_to_end(world, rows, None, f"e2e_{rows}_default_{rep}")
    print(f"  {rows:,} rows, repeat {rep + 1}, default config: e2e"
          f" {e2e['docs_per_s']:,.0f} docs/s", flush=True)
    return e2e


def naive(world: World, lines: list[str], name: str, first_id: int) -> dict[str, Any]:
    """One request per row into `name`, with ids from `first_id` on (new documents)."""
    bodies = [
        json.dumps({**json.loads(line), "id": str(first_id + i)}, ensure_ascii=False).encode()
        for i, line in enumerate(lines)
    ]
    started = time.perf_counter()
    for body in bodies:
        response = world.ts.post(
            f"/collections/{name}/documents",
            params={"action": "upsert", "dirty_values": "reject"},
            content=body,
        )
        if response.status_code not in (200, 201):
            raise RuntimeError(f"naive upsert: HTTP {response.status_code}: {response.text}")
    seconds = time.perf_counter() - started
    return {"docs": len(lines), "seconds": seconds, "docs_per_s": len(lines) / seconds}


def main() -> None:
    args = arguments(
        __doc__ or "",
        sizes={"default": None, "help": "comma-separated row counts"},
        backlog_repeats={"type": int, "default": None, "help": "backlog pairs (default 4)"},
    )
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([10_000] if args.quick else [100_000, 1_000_000])
    )
    repeats = args.repeats or 2
    backlog_repeats = args.backlog_repeats if args.backlog_repeats is not None else (
        2 if args.quick else 4)
    naive_rows = 300 if args.quick else 2000
    report: dict[str, Any] = {
        "benchmark": "throughput",
        "command": "benchmarks/throughput.py" + (" --quick" if args.quick else ""),
        "repeats": repeats,
        "backlog_pairs": backlog_repeats,
        "machine": machine(),
        "app_transaction_rows": APP_TXN,
        "naive_sample": naive_rows,
        "sizes": {},
    }
    with World("throughput") as world:
        world.start_typesense()
        report["machine"]["typesense"] = world.ts.get("/debug").json().get("version")
        for rows in sizes:
            schema, lines = source_documents(world, rows)
            runs: list[dict[str, Any]] = []
            for rep in range(repeats):
                world.fresh_typesense()  # each repeat starts on an empty server
                run: dict[str, Any] = {"raw": [], "e2e": []}
                # The default config's run first in one repeat, last in the next: each run
                # leaves the server a little different (3 x N documents imported and dropped).
                default = end_to_end_default(world, rows, rep) if rep % 2 == 0 else None
                for batch in BATCHES:  # raw and e2e back to back: the load drifts
                    sample = lines[:naive_rows] if batch == BATCHES[-1] else None
                    raw = raw_import(world, schema, lines, batch, f"raw_{rows}_{batch}", sample)
                    e2e = end_to_end(world, rows, batch, f"e2e_{rows}_{batch}_{rep}")
                    run["raw"].append(raw)
                    run["e2e"].append(e2e)
                    print(f"  {rows:,} rows, repeat {rep + 1}, batch {batch}: raw"
                          f" {raw['docs_per_s']:,.0f} docs/s, e2e {e2e['docs_per_s']:,.0f} docs/s",
                          flush=True)
                run["e2e"].append(default or end_to_end_default(world, rows, rep))
                run["naive"] = run["raw"][-1].pop("naive")
                ceiling = max(r["docs_per_s"] for r in run["raw"])
                for e2e in run["e2e"]:
                    same = [r for r in run["raw"] if r["batch"] == e2e["batch"]]
                    e2e["vs_raw_ceiling"] = e2e["docs_per_s"] / ceiling
                    e2e["vs_raw_same_batch"] = e2e["docs_per_s"] / (same or run["raw"])[-1][
                        "docs_per_s"]
                    e2e["vs_naive"] = e2e["docs_per_s"] / run["naive"]["docs_per_s"]
                run["raw_ceiling_docs_per_s"] = ceiling
                runs.append(run)
            ceiling = median([r["raw_ceiling_docs_per_s"] for r in runs])
            backlogs = [backlog_run(world, schema, lines, rep, ceiling)
                        for rep in range(backlog_repeats)]
            report["sizes"][str(rows)] = {
                "runs": runs, "backlogs": backlogs, "summary": summarize(runs, backlogs)}
            table(rows, report["sizes"][str(rows)]["summary"])
        report["load"] = world.load.read()
    report["machine"]["other_processes_end"] = machine()["other_processes"]
    print(f"\nload during the run: {report['load']}")
    save("throughput", report)


def summarize(runs: list[dict[str, Any]], backlogs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "raw_ceiling_docs_per_s": median([r["raw_ceiling_docs_per_s"] for r in runs]),
        "naive_docs_per_s": median([r["naive"]["docs_per_s"] for r in runs]),
        "raw": {},
        "e2e": {},
    }
    summary["backlog"] = {
        "docs_per_s": median([b["docs_per_s"] for b in backlogs]),
        "raw_docs_per_s": median([b["raw_fresh_server"]["docs_per_s"] for b in backlogs]),
        "vs_raw": median([b["vs_raw"] for b in backlogs]),
        "all_vs_raw": [round(b["vs_raw"], 3) for b in backlogs],
        "vs_raw_ceiling": median([b["vs_raw_ceiling"] for b in backlogs]),
        "all_vs_raw_ceiling": [round(b["vs_raw_ceiling"], 3) for b in backlogs],
        "daemon_cpu_s": median([b["daemon_cpu_s"] for b in backlogs]),
        "daemon_peak_rss_mb": max(b["daemon_peak_rss_mb"] for b in backlogs),
    }
    for i, batch in enumerate(BATCHES):
        summary["raw"][str(batch)] = median([r["raw"][i]["docs_per_s"] for r in runs])
    for i, batch in enumerate((*BATCHES, "default")):
        summary["e2e"][str(batch)] = {
            key: median([r["e2e"][i][key] for r in runs])
            for key in ("docs_per_s", "vs_raw_ceiling", "vs_raw_same_batch", "vs_naive",
                        "tail_after_last_commit_s", "daemon_cpu_s", "server_cpu_s")
        }
        summary["e2e"][str(batch)]["all_vs_raw_ceiling"] = [
            round(r["e2e"][i]["vs_raw_ceiling"], 3) for r in runs
        ]
    return summary


def table(rows: int, summary: dict[str, Any]) -> None:
    lines = []
    for batch in (*BATCHES, "default"):
        e2e = summary["e2e"][str(batch)]
        lines.append([
            batch,
            summary["raw"].get(str(batch), ""),
            e2e["docs_per_s"],
            f"{e2e['vs_raw_ceiling']:.0%}",
            " ".join(f"{x:.0%}" for x in e2e["all_vs_raw_ceiling"]),
            f"{e2e['vs_naive']:.0f}x",
            e2e["daemon_cpu_s"] * 1000 / rows * 1000,
        ])
    backlog = summary["backlog"]
    lines.append([
        "default, backlog (vs its raw import)",
        backlog["raw_docs_per_s"],
        backlog["docs_per_s"],
        f"{backlog['vs_raw']:.0%}",
        " ".join(f"{x:.0%}" for x in backlog["all_vs_raw"]),
        "",
        backlog["daemon_cpu_s"] * 1000 / rows * 1000,
    ])
    print(f"backlog: the daemon's peak RSS {backlog['daemon_peak_rss_mb']:.0f} MB; against the"
          f" better of its raw import and the ceiling: {backlog['vs_raw_ceiling']:.0%}"
          f" ({' '.join(f'{x:.0%}' for x in backlog['all_vs_raw_ceiling'])})")
    print_table(
        f"{rows:,} rows (median of runs): raw ceiling {summary['raw_ceiling_docs_per_s']:,.0f}"
        f" docs/s, naive {summary['naive_docs_per_s']:,.0f} docs/s",
        ["batch", "raw docs/s", "e2e docs/s", "e2e/ceiling", "each run", "e2e/naive",
         "daemon cpu us/doc"],
        lines,
    )


if __name__ == "__main__":
    Path(__file__).parent.joinpath("results").mkdir(exist_ok=True)
    main()
