"""What the benchmark scripts share: a private Typesense, app databases, the daemon as a
subprocess, /proc readings, tables and JSON results. Not a test helper; never imported by
cdc_daemon."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from cdc_daemon.localserver import LocalTypesense

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
PYTHON = sys.executable
API_KEY = "bench-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The seed's table and collection overrides (as tests/conftest.py's elements_env).
ELEMENTS_DDL = (ROOT / "config" / "elements.sql").read_text(encoding="utf-8")
EXAMPLE_CONFIG = yaml.safe_load((ROOT / "config" / "cdc.yaml").read_text(encoding="utf-8"))
ELEMENTS_TABLE = {k: v for k, v in EXAMPLE_CONFIG["tables"][0].items() if k != "collection"}


def arguments(description: str, **extra: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each configuration")
    for name, kwargs in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", **kwargs)
    return parser.parse_args()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


# -- machine and load -----------------------------------------------------------------------------


def _busy_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts) - idle, sum(parts)


class LoadMeter:
    """Machine-wide CPU use (all processes, ours included) between start and read."""

    def __init__(self) -> None:
        self.busy, self.total = _busy_jiffies()
        self.loadavg = os.getloadavg()[0]

    def read(self) -> dict[str, float]:
        busy, total = _busy_jiffies()
        cores = os.cpu_count() or 1
        share = (busy - self.busy) / max(1, total - self.total)
        return {
            "machine_busy_cores": round(share * cores, 2),
            "loadavg_1m_start": round(self.loadavg, 2),
            "loadavg_1m_end": round(os.getloadavg()[0], 2),
        }


def other_load() -> dict[str, Any]:
    """Processes not started by this benchmark that use CPU now (other engineers' tests)."""
    mine = {os.getpid()}
    counts: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for word in ("pytest", "typesense-server", "cdc_daemon"):
            if word in cmd:
                counts[word] = counts.get(word, 0) + 1
    return counts


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import apsw

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "sqlite3_stdlib": sqlite3.sqlite_version,
        "sqlite_apsw": apsw.sqlite_lib_version(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "other_processes": other_load(),
    }


# -- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


# -- the world: a scratch folder, Typesense, databases, the daemon -------------------------------


class World(contextlib.ExitStack):
    """Everything one benchmark starts, stopped on exit (also on Ctrl-C and SIGTERM)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        signal.signal(signal.SIGTERM, _interrupt)
        self.tmp = Path(self.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
        self.load = LoadMeter()
        self.typesense: LocalTypesense | None = None
        self.http: httpx.Client | None = None

    def start_typesense(self) -> LocalTypesense:
        server = LocalTypesense(self.tmp / "typesense", api_key=API_KEY)
        self.callback(server.stop)
        server.start()
        self.typesense = server
        self.http = self.enter_context(
            httpx.Client(base_url=server.url, headers={"X-TYPESENSE-API-KEY": API_KEY}, timeout=120)
        )
        return server

    def fresh_typesense(self) -> LocalTypesense:
        """A new, empty server in place of the running one: a measurement is not slowed by
        what earlier ones left in the server's memory (collections imported and dropped)."""
        if self.typesense is not None:
            self.typesense.stop()
            shutil.rmtree(self.typesense.data_dir, ignore_errors=True)
        return self.start_typesense()

    @property
    def ts(self) -> httpx.Client:
        assert self.http is not None, "start_typesense() first"
        return self.http

    def app_db(self, name: str, journal_mode: str = "wal") -> Path:
        folder = self.tmp / name
        folder.mkdir()
        path = folder / "app.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute(ELEMENTS_DDL)
        conn.close()
        return path

    def config(
        self,
        db: Path,
        collection: str,
        batch_size: int | None = None,
        poll_interval: float = 0.5,
        **sections: Any,
    ) -> Path:
        """`batch_size` None: the default (adaptive batches below its default bound); `sections`
        are more top-level config sections (`admin={...}`)."""
        assert self.typesense is not None
        sync: dict[str, Any] = {"poll_interval": poll_interval}
        if batch_size is not None:
            sync["batch_size"] = batch_size
        config = {
            "database": str(db),
            "typesense": {"nodes": [self.typesense.url], "api_key": API_KEY, "timeout": 60},
            "sync": sync,
            "logging": {"format": "json", "level": "warning"},
            "tables": [{**ELEMENTS_TABLE, "collection": collection}],
            **sections,
        }
        path = db.parent / "cdc.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def daemon(self, config: Path, *args: str) -> Daemon:
        process = Daemon(config, *args)
        self.callback(process.stop)
        return process

    def drop_collection(self, alias: str) -> None:
        """Drop a collection (and its alias) to give the server its memory back."""
        response = self.ts.get(f"/aliases/{alias}")
        if response.status_code == 200:
            physical = response.json()["collection_name"]
            self.ts.delete(f"/aliases/{alias}")
            self.ts.delete(f"/collections/{physical}")
        else:
            self.ts.delete(f"/collections/{alias}")

    def num_documents(self, collection: str) -> int:
        response = self.ts.get(f"/collections/{collection}")
        return int(response.json()["num_documents"]) if response.status_code == 200 else -1


def cdc(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [PYTHON, "-m", "cdc_daemon", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.parent,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cdc-daemon {' '.join(args)}: rc={result.returncode}\n{result.stderr}")
    return result


class Daemon:
    """`cdc-daemon run` as a subprocess; its log goes to daemon.log beside the config."""

    def __init__(self, config: Path, *args: str) -> None:
        self.log = config.parent / "daemon.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "cdc_daemon", "--config", str(config), "run", *args],
                stdout=log,
                stderr=log,
                cwd=config.parent,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def app(mode: str, db: Path, *args: str) -> subprocess.Popen[str]:
    """The app writer (benchmarks/app_writer.py) as a separate process; stdout is its JSON line."""
    return subprocess.Popen(
        [PYTHON, str(BENCH / "app_writer.py"), mode, str(db), *args],
        stdout=subprocess.PIPE,
        text=True,
    )


def app_result(process: subprocess.Popen[str], timeout: float = 3600) -> dict[str, Any]:
    out, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"app writer failed: rc={process.returncode}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def documents_of(config: Path, table: str = "elements") -> tuple[dict[str, Any], list[str]]:
    """A table's rows as the daemon's documents (JSON lines, key order) and its collection
    schema, built by cdc_daemon itself: what a raw import of the same documents sends."""
    from cdc_daemon.config import load_config
    from cdc_daemon.documents import build_document
    from cdc_daemon.wiring import open_tables

    database, _infos, mappings = open_tables(load_config(config))
    try:
        mapping = mappings[table]
        columns = ", ".join(mapping.select_list())
        lines = [
            json.dumps(build_document(mapping, row), ensure_ascii=False, allow_nan=False)
            for row in database.query(f"SELECT {columns} FROM {table} ORDER BY id")
        ]
        schema = mapping.collection_schema("")
    finally:
        database.close()
    return schema, lines


def wait_until(
    condition: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition"
) -> float:
    """Poll until truthy; returns the time.monotonic() at which it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- numbers and output ---------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return float("nan")
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    if not rows:
        return
    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in text:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - started
