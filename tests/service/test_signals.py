"""Signals as a server handles them (signals.py), on a real daemon process: the first SIGTERM or
SIGINT asks for a graceful stop, which waits for the request in flight; a second one ends the
process at once, by that signal (what systemd and shells expect of an interrupted process)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ELEMENTS_DDL, Env, app_exec, wait_for
from support.launcher import start, start_logged

from cdc_daemon.database import Database
from cdc_daemon.log_schema import LogTables
from cdc_daemon.triggers import install
from service.helpers import NotifySocket


class SilentNode:
    """A 'Typesense node' that accepts connections and never answers: a request to it lasts
    until the daemon's typesense.timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_node() -> Iterator[SilentNode]:
    node = SilentNode()
    yield node
    node.close()


@pytest.fixture(scope="module")
def installed_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's database with the elements table and the change log installed, by the install()
    `cdc-daemon install` runs (these tests are about `run` and `backfill`), once for the module:
    each test starts from a copy."""
    path = tmp_path_factory.mktemp("installed") / "app.db"
    app_exec(path, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    db = Database(path)
    try:
        install(db, LogTables("change_log"), [db.table_info("elements")])
    finally:
        db.close()
    return path


def installed_env(tmp_path: Path, node: SilentNode, installed_db: Path, timeout: float) -> Env:
    """A copy of the installed database, configured against `node` with this typesense.timeout."""
    env = Env(tmp_path, node.url, "signals")
    shutil.copyfile(installed_db, env.db)  # closed, so the file holds it all (no -wal)
    env.write_config([{"table": "elements"}], typesense={"timeout": timeout})
    return env


class SlowStop:
    """`run` whose first request hangs on a silent node of its own (typesense.timeout 60 s), and a
    NOTIFY_SOCKET whose STOPPING=1 says when it has handled a stop signal."""

    def __init__(self, tmp_path: Path, installed_db: Path) -> None:
        tmp_path.mkdir()
        self.node = SilentNode()
        self.env = installed_env(tmp_path, self.node, installed_db, timeout=60)
        self.notify = NotifySocket()
        self.log = tmp_path / "daemon.log"
        self.daemon = start_logged("run", config=self.env.config_path, cwd=tmp_path, log=self.log,
                                   extra_env={"NOTIFY_SOCKET": self.notify.path})

    def first_signal(self, signum: int) -> None:
        """Once the start-up request is in flight (one that waits up to 60 s), `signum`; returns
        when the daemon has handled it."""
        wait_for(lambda: self.node.accepted, 30, message="the daemon's request in flight")
        self.daemon.send_signal(signum)
        self.notify.wait_field("STOPPING=1", timeout=10)

    def close(self) -> None:
        if self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        self.notify.close()
        self.env.close()
        self.node.close()


def test_a_second_signal_ends_a_slow_stop(tmp_path: Path, installed_db: Path) -> None:
    """SIGTERM and SIGINT, each on a daemon of its own: started side by side, as each start-up
    keeps a core busy for a while."""
    stops: dict[signal.Signals, SlowStop] = {}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            stops[signum] = SlowStop(tmp_path / signum.name, installed_db)
        for signum, stop in stops.items():
            stop.first_signal(signum)
        # A graceful stop: the request in flight runs on (each still running 0.5 s later).
        running_until = time.monotonic() + 0.5
        for stop in stops.values():
            with pytest.raises(subprocess.TimeoutExpired):
                stop.daemon.wait(timeout=max(0.0, running_until - time.monotonic()))
        for signum, stop in stops.items():
            stop.daemon.send_signal(signum)
            rc = stop.daemon.wait(timeout=10)
            log = stop.log.read_text()
            assert rc == -signum, f"{signum.name}: {log}"  # by the signal: 128 + signum in a shell
            assert "second signal while stopping: exiting now" in log, f"{signum.name}: {log}"
    finally:
        for stop in stops.values():
            stop.close()


def test_ctrl_c_interrupts_a_backfill_resumably(tmp_path: Path, silent_node: SilentNode,
                                                installed_db: Path) -> None:
    """`backfill` has the same handlers: Ctrl-C stops it once the request in flight ends (here
    when the node hangs up, after the Ctrl-C), with exit 130 and the line saying it resumes."""
    env = installed_env(tmp_path, silent_node, installed_db, timeout=60)
    backfill = start("backfill", config=env.config_path, cwd=env.tmp)
    try:
        wait_for(lambda: silent_node.accepted, 30, message="the backfill's request in flight")
        backfill.send_signal(signal.SIGINT)
        silent_node.close()  # the request ends (and any other is refused)
        _out, err = backfill.communicate(timeout=30)
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.communicate()
        env.close()
    assert backfill.returncode == 130, err
    assert "backfill interrupted; run it again to resume" in err
    assert "Traceback" not in err
