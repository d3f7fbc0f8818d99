"""An admin resume wakes a single-database daemon's loop at once: a backlog written while it was
paused moves no file afterwards, so without the wake it would wait for sync.poll_interval (60 s
here, longer than the test waits)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from support import (
    ELEMENTS_DDL,
    Env,
    app_exec,
    expected_elements,
    insert_elements,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import LocalTypesense, free_port


def test_resume_syncs_the_backlog_without_waiting_for_the_poll(
    tmp_path: Path, typesense: LocalTypesense
) -> None:
    env = Env(tmp_path, typesense, "rsm" + str(int(time.time() * 1000) % 10**9))
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    port = free_port()
    env.write_config([{"table": "elements"}], sync={"poll_interval": 60},
                     admin={"listen": f"127.0.0.1:{port}"})
    env.cli("install", check=True)
    insert_elements(env.db, range(1, 6))
    daemon = start_daemon_logged(env)
    admin = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_for(lambda: env.documents("elements") == expected_elements(env.db), 30,
                 message=f"first rows synced\n{read_daemon_log(env)}")
        assert admin.post("/v1/pause").json() == {"paused": True}
        insert_elements(env.db, range(6, 500), comment="while paused")

        def sleeping() -> bool:  # past the insert's events: in the 60 s wait
            status = admin.get("/v1/status").json()
            return bool(status["daemon"]["loop_idle_seconds"] > 1.0)

        wait_for(sleeping, 30, message="the paused loop asleep")
        assert "6" not in env.documents("elements")
        assert admin.post("/v1/resume").json() == {"paused": False}
        wait_for(lambda: env.documents("elements") == expected_elements(env.db), 20,
                 message="synced after resume, before the next poll")
    finally:
        admin.close()
        assert stop_process(daemon) == 0
        env.drop_collection("elements")
        env.close()
