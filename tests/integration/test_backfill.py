"""backfill: rows that predate `install` reach Typesense only through it; it is consistent with
an app that keeps writing, and it resumes after kill -9 from its saved point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from support import (
    ELEMENTS_DDL,
    Env,
    app_exec,
    db_scalar,
    expected_elements,
    insert_many_elements,
    launcher,
    log_backlog,
    wait_for,
)

HERE = Path(__file__).parent
ELEMENTS = {
    "table": "elements",
    "fields": {"element_id": {"type": "int32"}, "sequence_number": {"type": "int32"},
               "version_number": {"type": "int32"}},
    "default_sorting_field": "sequence_number",
}


def assert_in_sync(env: Env) -> None:
    report = env.verify()
    assert report["in_sync"] is True, report
    expected = expected_elements(env.db)
    assert report["tables"]["elements"]["rows"] == len(expected)
    assert env.documents("elements") == expected


def backfill_state(db: Path) -> int | None:
    value = db_scalar(db, "SELECT value FROM change_log_state WHERE name = 'backfill:elements'")
    return None if value is None else int(str(value).split(" ")[0])


def test_backfill_with_the_app_writing_concurrently(env: Env) -> None:
    rows = 6000
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    insert_many_elements(env.db, rows, comment="before install")  # no triggers yet
    env.write_config([ELEMENTS])
    env.cli("install", check=True)
    assert log_backlog(env.db) == 0

    env.cli("run", "--once", check=True)
    assert env.documents("elements") == {}  # old rows are not in the log
    report = env.verify()
    assert report["in_sync"] is False and report["missing"] == rows

    stop_file = env.tmp / "stop-writer"
    writer = subprocess.Popen(
        [sys.executable, str(HERE / "busy_writer.py"), str(env.db), str(stop_file), "7",
         str(rows + 500)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # The app is writing (its changes are in the log) before the backfill starts.
        wait_for(lambda: log_backlog(env.db) > 20 or writer.poll() is not None, timeout=30,
                 message="the writer's first commits")
        assert writer.poll() is None
        result = env.cli("backfill", check=True)
        assert "elements: backfilled" in result.stdout, result.stdout
        assert writer.poll() is None, "the writer must have run during the whole backfill"
    finally:
        stop_file.touch()
        out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    assert int(out.strip()) > 20  # it kept committing while the backfill ran
    assert backfill_state(env.db) is None  # finished: no resume point left

    env.cli("run", "--once", check=True)
    assert_in_sync(env)


def test_backfill_resumes_after_kill_9(env: Env) -> None:
    rows = 20_000
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    insert_many_elements(env.db, rows, comment="old")
    env.write_config([ELEMENTS], logging={"format": "json", "level": "debug"},
                     sync={"batch_size": 500})
    env.cli("install", check=True)
    # Count every key a backfill writes into the log, across both runs.
    app_exec(env.db, "CREATE TABLE logged_by_backfill (n INTEGER NOT NULL)",
             "INSERT INTO logged_by_backfill VALUES (0)",
             "CREATE TRIGGER count_backfill AFTER INSERT ON change_log WHEN NEW.op = 'B'"
             " BEGIN UPDATE logged_by_backfill SET n = n + 1; END")

    log_file = env.tmp / "backfill1.log"
    with open(log_file, "w") as err:
        first = launcher.start("backfill", config=env.config_path, cwd=env.tmp,
                               stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: (backfill_state(env.db) or 0) >= 6000 or first.poll() is not None,
                 timeout=60, interval=0.01, message="a few backfill pages")
        assert first.poll() is None, log_file.read_text()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    resumed_from = backfill_state(env.db)
    assert resumed_from is not None and 6000 <= resumed_from < rows
    status = env.status()
    assert status["tables"]["elements"]["backfill_logged_rows"] == resumed_from

    second = env.cli("backfill", check=True)
    assert f"elements: backfilled {rows} rows" in second.stdout, second.stdout
    progress = [json.loads(line) for line in second.stderr.splitlines()
                if '"backfill progress"' in line]
    assert progress and progress[0]["done"] == resumed_from, progress[:2]  # not from zero
    # Each row was logged exactly once over both runs: the second started at the resume point.
    assert db_scalar(env.db, "SELECT n FROM logged_by_backfill") == rows
    assert backfill_state(env.db) is None
    assert "backfill_logged_rows" not in env.status()["tables"]["elements"]

    env.cli("run", "--once", check=True)
    assert_in_sync(env)
    assert len(env.documents("elements")) == rows
