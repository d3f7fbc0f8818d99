"""Crashes and signals: kill -9 of the daemon mid-batch, Typesense dying and coming back,
SIGTERM with a large backlog. After each, the documents converge to the rows and nothing is lost."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    API_KEY,
    ELEMENTS_CONFIG,
    ELEMENTS_DDL,
    Env,
    app_exec,
    expected_elements,
    insert_elements,
    insert_many_elements,
    log_backlog,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import LocalTypesense

ELEMENTS = {k: v for k, v in ELEMENTS_CONFIG.items() if k != "collection"}  # the seed


def setup_elements(env: Env, **overrides: Any) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([ELEMENTS], **overrides)
    env.cli("install", check=True)


def assert_elements_in_sync(env: Env) -> None:
    report = env.verify()
    assert report["in_sync"] is True, report
    expected = expected_elements(env.db)
    assert report["tables"]["elements"]["rows"] == len(expected)
    assert env.documents("elements") == expected
    assert env.status()["backlog"] == 0


def test_kill_9_mid_batch_loses_nothing(env: Env) -> None:
    total = 20_000
    setup_elements(env, sync={"batch_size": 50, "poll_interval": 0.2})
    insert_many_elements(env.db, total)
    assert log_backlog(env.db) == total
    rng = random.Random()
    # Kill at several (random) points of the backlog; between kills the app keeps changing rows,
    # some of them already synced, some still waiting in the log.
    thresholds = [rng.randint(18_000, 19_800), rng.randint(11_000, 14_000),
                  rng.randint(3_000, 7_000)]
    for round_number, threshold in enumerate(thresholds):
        daemon = start_daemon_logged(env, name=f"daemon{round_number}")
        before = log_backlog(env.db)
        wait_for(lambda t=threshold, d=daemon: log_backlog(env.db) <= t or d.poll() is not None,
                 timeout=60, interval=0.01, message=f"backlog below {threshold}")
        assert daemon.poll() is None, read_daemon_log(env, f"daemon{round_number}")
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        left = log_backlog(env.db)
        assert 0 < left < before, f"kill {round_number}: backlog {before} → {left}"
        assert env.status()["backlog"] == left
        app_exec(
            env.db,
            f"UPDATE elements SET version_number = version_number + 1, comment = 'r{round_number}'"
            f" WHERE id % 97 = {round_number}",
            f"DELETE FROM elements WHERE id % 101 = {round_number}",
            f"INSERT INTO elements (id, element_type, element_id, sequence_number, version_number)"
            f" VALUES ({100_000 + round_number}, 'late', 1, 1, 1)",
        )
    result = env.cli("run", "--once", check=True)
    assert result.returncode == 0
    assert_elements_in_sync(env)


def test_sigterm_with_large_backlog_exits_0_and_loses_nothing(env: Env) -> None:
    total = 20_000
    setup_elements(env, sync={"batch_size": 100, "poll_interval": 0.2})
    insert_many_elements(env.db, total)
    daemon = start_daemon_logged(env)
    wait_for(lambda: log_backlog(env.db) <= total - 500 or daemon.poll() is not None,
             timeout=60, interval=0.01, message="first batches acknowledged")
    assert daemon.poll() is None, read_daemon_log(env)
    daemon.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rc = daemon.wait(timeout=10)
    assert rc == 0, read_daemon_log(env)
    assert time.monotonic() - sent < 5
    left = log_backlog(env.db)
    assert 0 < left < total  # it really stopped in the middle of the backlog
    env.cli("run", "--once", check=True)
    assert_elements_in_sync(env)


@pytest.mark.typesense  # a server of its own
def test_typesense_killed_and_restarted_during_writes(tmp_path: Path) -> None:
    server = LocalTypesense(tmp_path / "typesense", api_key=API_KEY)
    server.start()
    env = Env(tmp_path / "world", server, "outage")
    env.tmp.mkdir()
    daemon = None
    try:
        setup_elements(env, typesense={"nodes": [server.url], "api_key": API_KEY, "timeout": 5})
        daemon = start_daemon_logged(env)
        insert_elements(env.db, range(1, 101))
        wait_for(lambda: log_backlog(env.db) == 0 and len(env.documents("elements")) == 100,
                 timeout=30, message="first rows synced")

        server.kill()
        backlogs = [env.status()["backlog"]]
        for step in range(5):
            insert_elements(env.db, range(1000 + step * 20, 1020 + step * 20), comment="outage")
            app_exec(env.db, f"UPDATE elements SET comment = 'during {step}' WHERE id = {step + 1}",
                     f"DELETE FROM elements WHERE id = {50 + step}")
            backlogs.append(env.status()["backlog"])
            assert daemon.poll() is None, read_daemon_log(env)
        assert backlogs == sorted(backlogs) and backlogs[-1] > backlogs[0] + 100, backlogs
        wait_for(lambda: "sync failed" in read_daemon_log(env), timeout=30,
                 message="the daemon noticing the outage")
        assert daemon.poll() is None, read_daemon_log(env)
        assert env.status()["backlog"] >= backlogs[-1]

        server.start()  # same port, same data directory
        insert_elements(env.db, range(5000, 5010), comment="after")
        wait_for(lambda: log_backlog(env.db) == 0, timeout=90, interval=0.1,
                 message="backlog drained after Typesense came back")
        # /health says ok before every document is loaded: wait for verify, don't trust one look.
        wait_for(lambda: env.verify()["in_sync"], timeout=30, interval=0.5,
                 message="verify in sync")
        assert daemon.poll() is None
        assert stop_process(daemon) == 0, read_daemon_log(env)
        assert_elements_in_sync(env)
    finally:
        if daemon is not None:
            stop_process(daemon)
        env.http.close()
        server.stop()
