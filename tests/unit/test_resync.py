"""resync.py's driver on a real SQLite file (written by the app's own process) and FakeSink:
a table's resync goes backfill → sweep → done between batches, and a failed sweep is retried
only after its backoff, without holding back anything else. The real-server paths (a file
replaced, triggers back, a mapping changed) run in tests/integration."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from support import app_exec
from support.fake_sink import FakeSink

from cdc_daemon.config import parse_config
from cdc_daemon.errors import TargetUnavailable
from cdc_daemon.kms import StaticKey
from cdc_daemon.resync import Resync
from cdc_daemon.runtime import Runtime, Services
from cdc_daemon.sweep import AFTER_BACKFILL, START_BACKFILL, ResyncState, owed_resyncs
from cdc_daemon.triggers import install
from cdc_daemon.wiring import build_runtime


class FlakySink(FakeSink):
    """Its export fails `failures` times (Typesense unreachable), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.exports = 0

    def export(self, collection: str) -> Iterator[dict[str, Any]]:
        self.exports += 1
        if self.failures:
            self.failures -= 1
            raise TargetUnavailable("connection refused")
        return super().export(collection)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """The composition root's tables half, on FlakySink instead of a Typesense client."""
    path = tmp_path / "app.db"
    app_exec(path, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    config = parse_config(
        {
            "database": str(path),
            "typesense": {"nodes": ["http://127.0.0.1:8108"], "api_key": "test-key"},
            "tables": [{"table": "items"}],
        },
        base_dir=tmp_path,
    )
    runtime = build_runtime(config, Services(StaticKey("test-key"), FlakySink()))
    install(runtime.db, runtime.names, runtime.tables)
    runtime.syncer.ensure_collections()
    yield runtime
    runtime.close()


def _drive(runtime: Runtime, resync: Resync) -> None:
    """The loop's order between batches, until nothing is owed (bounded)."""
    for _ in range(20):
        runtime.syncer.step_collections()
        if resync.owed:
            resync.step(runtime)
        runtime.syncer.sync_once()
        if not resync.owed:
            runtime.syncer.sync_once()  # the last batch's acknowledgement
            return
    raise AssertionError(f"still owed: {resync.owed}")


def test_a_resync_backfills_then_sweeps_then_is_done(runtime: Runtime) -> None:
    app_exec(runtime.db.path, "INSERT INTO items VALUES (1, 'one')",
             "INSERT INTO items VALUES (2, 'two')")
    runtime.syncer.sync_once()
    runtime.syncer.sync_once()
    sink = runtime.sink
    physical = sink.get_alias("items")
    assert physical is not None
    sink.documents[physical]["7"] = {"id": "7", "name": "of the replaced file"}  # no row makes it
    resync = Resync(threading.Event(), lambda: None)
    resync.begin(runtime, ["items"])
    resync.reread(runtime)
    assert resync.owed == {"items": START_BACKFILL}

    assert resync.step(runtime) is True  # the backfill is started first
    assert resync.owed == {"items": AFTER_BACKFILL}
    assert owed_resyncs(runtime.db, runtime.names) == {"items": AFTER_BACKFILL}
    with structlog.testing.capture_logs() as logs:
        _drive(runtime, resync)
    assert [e["event"] for e in logs if e["event"] == "sweep finished"] == ["sweep finished"]
    assert set(sink.documents[physical]) == {"1", "2"}  # the stray document is gone
    assert owed_resyncs(runtime.db, runtime.names) == {}


def test_a_failed_sweep_waits_its_backoff_then_is_retried(runtime: Runtime) -> None:
    sink = runtime.sink
    sink.failures = 1
    ResyncState(runtime.db, runtime.names).set_phase("items", AFTER_BACKFILL)
    clock = Clock()
    resync = Resync(threading.Event(), lambda: None, clock=clock)
    resync.reread(runtime)

    with structlog.testing.capture_logs() as logs:
        assert resync.step(runtime) is False
    failed = [e for e in logs if e["event"] == "sweep failed"]
    assert len(failed) == 1 and failed[0]["table"] == "items" and failed[0]["retry_in_s"] > 0
    assert sink.exports == 1

    assert resync.step(runtime) is False  # backing off: not tried again yet
    assert sink.exports == 1 and resync.owed == {"items": AFTER_BACKFILL}

    clock.now += 60  # past any backoff (capped at 30 s)
    with structlog.testing.capture_logs() as logs:
        assert resync.step(runtime) is True
    assert sink.exports == 2
    assert [e["event"] for e in logs] == ["sweep finished"]
    assert resync.owed == {} and owed_resyncs(runtime.db, runtime.names) == {}
