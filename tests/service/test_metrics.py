"""The metrics of a real daemon process, scraped over HTTP: idle, backlog while Typesense is down
(a separate server killed with -9), recovery after it restarts, and triggers dropped by the app."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import API_KEY, ELEMENTS_DDL, Env, app_exec, insert_elements

from cdc_daemon.localserver import LocalTypesense
from service.helpers import (
    ELEMENTS_TABLE,
    DaemonProcess,
    Scrape,
    free_port,
    insert_rows,
    scrape,
    wait_scrape,
)

ROOT = Path(__file__).resolve().parents[2]

# The metrics docs/operations.md lists, and their types (a counter's family name has no _total).
CONTRACT = {
    "cdc_lag_seconds": "gauge",
    "cdc_backlog_changes": "gauge",
    "cdc_last_success_timestamp_seconds": "gauge",
    "cdc_dead_letters": "gauge",
    "cdc_changes_synced": "counter",
    "cdc_sync_errors": "counter",
    "cdc_batch_duration_seconds": "histogram",
    "cdc_typesense_up": "gauge",
}
EXTRA = {
    "cdc_database_up": "gauge",
    "cdc_triggers_installed": "gauge",
    "cdc_table_backlog_changes": "gauge",
    "cdc_table_dead_letters": "gauge",
    "cdc_dead_lettered": "counter",
    "cdc_start_time_seconds": "gauge",
}
# Labels allowed per family: low cardinality only (never a key). Families not listed here may
# use only these bounded labels (a configured node, a KMS fetch's reason and result).
LABELS = {"cdc_changes_synced": {"table", "op"}, "cdc_sync_errors": {"kind"},
          "cdc_triggers_installed": {"table"}, "cdc_table_backlog_changes": {"table"},
          "cdc_table_dead_letters": {"table"}, "cdc_dead_lettered": {"table"},
          "cdc_batch_duration_seconds": {"le"}}
BOUNDED_LABELS = {"table", "op", "kind", "le", "node", "reason", "result"}


def with_metrics(env: Env, **overrides: object) -> int:
    port = free_port()
    env.write_config([ELEMENTS_TABLE], metrics={"listen": f"127.0.0.1:{port}"}, **overrides)
    return port


def test_idle_metrics_names_types_and_values(elements_env: Env) -> None:
    env = elements_env
    port = with_metrics(env)
    insert_elements(env.db, range(1, 51))
    app_exec(env.db, "UPDATE elements SET comment = 'x' WHERE id <= 5",
             "DELETE FROM elements WHERE id > 45")
    daemon = DaemonProcess(env)
    try:
        m = wait_scrape(
            port,
            lambda m: m.value("cdc_backlog_changes") == 0
            and (m.value("cdc_changes_synced_total", table="elements", op="delete") or 0) >= 5,
            message="the backlog synced", daemon=daemon,
        )
        for name, kind in {**CONTRACT, **EXTRA}.items():
            assert name in m.families, f"{name} missing"
            assert m.families[name].type == kind, (name, m.families[name].type)
        for name, family in m.families.items():
            allowed = LABELS.get(name, BOUNDED_LABELS)
            for sample in family.samples:
                assert set(sample.labels) <= allowed, (sample.name, sample.labels)
        assert m.get("cdc_lag_seconds") == 0
        assert m.get("cdc_backlog_changes") == 0
        assert m.get("cdc_typesense_up") == 1
        assert m.get("cdc_database_up") == 1
        assert m.get("cdc_dead_letters") == 0
        assert m.get("cdc_triggers_installed", table="elements") == 1
        assert m.get("cdc_table_backlog_changes", table="elements") == 0
        # 50 inserts and 5 updates of rows that stayed coalesce or not, but 45 live rows were
        # upserted at least once, and the 5 deleted rows deleted.
        assert m.get("cdc_changes_synced_total", table="elements", op="upsert") >= 45
        assert m.get("cdc_changes_synced_total", table="elements", op="delete") == 5
        for kind in ("target_unavailable", "auth_error", "document"):
            assert m.get("cdc_sync_errors_total", kind=kind) == 0
        assert m.get("cdc_batch_duration_seconds_count") >= 1
        assert m.get("cdc_batch_duration_seconds_sum") > 0
        assert abs(m.get("cdc_last_success_timestamp_seconds") - time.time()) < 10
        # Idle: the loop keeps succeeding (the stall alert depends on it).
        first = m.get("cdc_last_success_timestamp_seconds")
        wait_scrape(port, lambda m: m.get("cdc_last_success_timestamp_seconds") > first,
                    message="last success to move while idle", daemon=daemon)
        # Several scrapes at once (two Prometheus servers) all read the database.
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _i: scrape(port), range(16)))
        assert all(r.get("cdc_database_up") == 1 for r in results)
        # Every cdc_ metric the alerts and the dashboard use exists.
        exposed = {s.name for f in m.families.values() for s in f.samples} | set(m.families)
        for path in ("config/prometheus/alerts.yml", "config/grafana/cdc-daemon.json"):
            used = set(re.findall(r"\bcdc_[a-z_]+", (ROOT / path).read_text()))
            used -= {"cdc_daemon"}
            assert used, path
            assert used <= exposed, (path, used - exposed)
    finally:
        assert daemon.stop() == 0


def test_triggers_dropped_by_the_app(elements_env: Env) -> None:
    env = elements_env
    port = with_metrics(env)
    daemon = DaemonProcess(env)
    try:
        wait_scrape(port, lambda m: m.value("cdc_triggers_installed", table="elements") == 1,
                    message="triggers present", daemon=daemon)
        app_exec(env.db, 'DROP TRIGGER "change_log:elements:update"')  # a careless migration
        m = wait_scrape(port, lambda m: m.value("cdc_triggers_installed", table="elements") == 0,
                        message="cdc_triggers_installed 0", daemon=daemon)
        assert m.get("cdc_database_up") == 1
        check = env.cli("check")
        assert check.returncode == 1, check.stdout + check.stderr
        assert "change_log:elements:update" in check.stdout, check.stdout
        # `install` puts it back; the metric follows.
        env.cli("install", check=True)
        wait_scrape(port, lambda m: m.value("cdc_triggers_installed", table="elements") == 1,
                    message="triggers back", daemon=daemon)
        assert env.cli("check").returncode == 0
    finally:
        assert daemon.stop() == 0


@pytest.mark.typesense  # a server of its own
def test_backlog_while_typesense_is_down_and_recovery(tmp_path: Path) -> None:
    server = LocalTypesense(tmp_path / "typesense", api_key=API_KEY).start()
    env = Env(tmp_path, server, "outage")
    daemon = None
    try:
        app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
        port = with_metrics(env, typesense={"timeout": 5})
        env.cli("install", check=True)
        insert_rows(env.db, 20)
        daemon = DaemonProcess(env)
        up = wait_scrape(
            port,
            lambda m: m.value("cdc_backlog_changes") == 0 and m.value("cdc_typesense_up") == 1
            and m.value("cdc_changes_synced_total", table="elements", op="upsert") == 20,
            message="first rows synced", daemon=daemon,
        )
        errors_before = up.get("cdc_sync_errors_total", kind="target_unavailable")

        server.kill()  # kill -9
        insert_rows(env.db, 30, start=21)

        def down(m: Scrape) -> bool:
            return (m.value("cdc_typesense_up") == 0
                    and m.get("cdc_sync_errors_total", kind="target_unavailable") > errors_before)

        first = wait_scrape(port, down, message="Typesense seen down", daemon=daemon)
        assert first.get("cdc_backlog_changes") == 30
        assert first.get("cdc_table_backlog_changes", table="elements") == 30
        lag = first.get("cdc_lag_seconds")
        assert lag > 0
        # Lag is computed at scrape: it grows while nothing syncs, and no iteration succeeds.
        second = wait_scrape(port, lambda m: m.get("cdc_lag_seconds") >= lag + 0.5,
                             message="lag to grow", daemon=daemon)
        assert second.get("cdc_backlog_changes") == 30
        assert second.get("cdc_typesense_up") == 0
        assert (second.get("cdc_last_success_timestamp_seconds")
                == first.get("cdc_last_success_timestamp_seconds"))
        assert (second.get("cdc_sync_errors_total", kind="target_unavailable")
                >= first.get("cdc_sync_errors_total", kind="target_unavailable"))
        assert env.status()["backlog"] == 30  # nothing acknowledged, nothing dead-lettered
        assert second.get("cdc_dead_letters") == 0

        server.start()  # same port, same data directory
        recovered = wait_scrape(
            port,
            lambda m: m.value("cdc_backlog_changes") == 0 and m.value("cdc_typesense_up") == 1,
            timeout=60, message="recovery", daemon=daemon,
        )
        assert recovered.get("cdc_lag_seconds") == 0
        assert recovered.get("cdc_changes_synced_total", table="elements", op="upsert") == 50
        assert (recovered.get("cdc_last_success_timestamp_seconds")
                > second.get("cdc_last_success_timestamp_seconds"))
        assert len(env.documents("elements")) == 50
    finally:
        if daemon is not None:
            assert daemon.stop() == 0
        env.http.close()
        server.stop()
