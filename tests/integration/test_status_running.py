"""`status` says whether a daemon runs for the database (its pid) and when it last synced, and
`status --watch` reports again until Ctrl-C (issue 15, item 4). A real daemon (run as a
subprocess), the app's writes from a process of its own, real signals."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from support import Env, app_exec, app_write, launcher, stop_process, wait_for
from support.world import start_daemon_logged


def _items(env: Env) -> None:
    app_exec(env.db, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    env.write_config([{"table": "items"}])
    env.cli("install", check=True)


def _status_text(env: Env) -> str:
    return env.cli("status", check=True).stdout


def test_status_without_a_daemon_says_not_running_and_never_synced(env: Env) -> None:
    _items(env)
    status = env.status()
    assert (status["daemon_running"], status["syncing_pid"], status["syncing_command"]) == (
        False, None, None), status
    assert status["last_synced_at"] is None and status["last_synced_seconds_ago"] is None
    assert {"backlog", "oldest_age_seconds", "dead_letters", "tables"} <= set(status)
    assert "daemon: not running; never synced" in _status_text(env).splitlines()


def _synced(env: Env) -> dict[str, Any] | None:
    status = env.status()
    return status if status["last_synced_at"] is not None else None


def test_status_names_the_running_daemon_and_when_it_last_synced(env: Env) -> None:
    _items(env)
    daemon = start_daemon_logged(env)
    try:
        running = wait_for(lambda: (s := env.status())["daemon_running"] and s, 60,
                           "status to see the daemon")
        assert (running["syncing_pid"], running["syncing_command"]) == (daemon.pid, "run")
        assert running["last_synced_at"] is None  # nothing to sync yet: nothing written
        before = time.time()
        app_write(env.db, [[("INSERT INTO items VALUES (1, 'one')", [])]])
        synced = wait_for(lambda: _synced(env), 60, "a last-synced time after the write synced")
        assert before <= synced["last_synced_at"] <= time.time(), synced
        assert 0 <= synced["last_synced_seconds_ago"] < 60, synced
        assert "1" in env.documents("items")
        line = _status_text(env).splitlines()[1]
        assert line.startswith(f"daemon: running (pid {daemon.pid}); last synced "), line
        assert line.endswith(" s ago)"), line
        # Idle, the daemon writes nothing: the time stays that of the last sync. (The idle
        # stretch is what is tested; the daemon polls every 0.2 s meanwhile.)
        time.sleep(1.5)
        assert env.status()["last_synced_at"] == synced["last_synced_at"]
    finally:
        assert stop_process(daemon) == 0
    stopped = env.status()
    assert stopped["daemon_running"] is False and stopped["syncing_pid"] is None, stopped
    assert stopped["last_synced_at"] == synced["last_synced_at"]
    assert _status_text(env).splitlines()[1].startswith("daemon: not running; last synced ")


def _reports(env: Env, name: str) -> str:
    path = env.tmp / name
    return path.read_text() if path.exists() else ""


def test_watch_reports_again_until_ctrl_c(env: Env) -> None:
    _items(env)
    watches = ((["--watch", "0.2"], "text.out"), (["--json", "--watch", "0.2"], "json.out"))
    for args, name in watches:
        watch = launcher.start_logged("status", *args, config=env.config_path, cwd=env.tmp,
                                      log=env.tmp / f"{name}.err", out=env.tmp / name)
        try:
            marker = '"backlog"' if "--json" in args else "backlog:"  # one per report
            wait_for(lambda n=name, m=marker: _reports(env, n).count(m) >= 2, 60,
                     f"two reports from status {' '.join(args)}")
            watch.send_signal(signal.SIGINT)  # Ctrl-C
            assert watch.wait(timeout=30) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
        assert "Traceback" not in _reports(env, f"{name}.err"), _reports(env, f"{name}.err")
    text = _reports(env, "text.out")
    assert text.startswith("status at ") and "(every 0.2 s; Ctrl-C stops)" in text, text
    lines = [line for line in _reports(env, "json.out").splitlines() if line.strip()]
    assert all(json.loads(line)["daemon_running"] is False for line in lines), lines


def test_watch_refuses_a_period_that_is_not_above_zero(env: Env) -> None:
    _items(env)
    result = env.cli("status", "--watch", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "give a number of seconds above 0" in result.stderr.splitlines()[-1], result.stderr
