"""Signals as a server handles them (signals.py), on a real daemon process: the first SIGTERM or
SIGINT asks for a graceful stop, which waits for the request in flight; a second one ends the
process at once, by that signal (what systemd and shells expect of an interrupted process)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from support import ELEMENTS_DDL, Env, app_exec, wait_for
from support.launcher import start, start_logged


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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_ends_a_slow_stop(tmp_path: object, silent_node: SilentNode,
                                          signum: signal.Signals) -> None:
    env = Env(tmp_path, silent_node.url, "signals")  # type: ignore[arg-type]
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([{"table": "elements"}], typesense={"timeout": 60})
    env.cli("install", check=True)
    log = env.tmp / "daemon.log"
    daemon = start_logged("run", config=env.config_path, cwd=env.tmp, log=log)
    try:
        # At start the daemon prepares its collection: a request that waits up to 60 s.
        wait_for(lambda: silent_node.accepted, 30, message="the daemon's request in flight")
        daemon.send_signal(signum)
        with pytest.raises(subprocess.TimeoutExpired):
            daemon.wait(timeout=1)  # a graceful stop: the request in flight runs on
        daemon.send_signal(signum)
        rc = daemon.wait(timeout=10)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        env.close()
    assert rc == -signum, log.read_text()  # died by the signal: 128 + signum in a shell
    assert "second signal while stopping: exiting now" in log.read_text()


def test_ctrl_c_interrupts_a_backfill_resumably(tmp_path: object, silent_node: SilentNode) -> None:
    """`backfill` has the same handlers: Ctrl-C stops it once the request in flight ends (here
    by its 2 s timeout), with exit 130 and the line saying it resumes."""
    env = Env(tmp_path, silent_node.url, "signals")  # type: ignore[arg-type]
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([{"table": "elements"}], typesense={"timeout": 2})
    env.cli("install", check=True)
    backfill = start("backfill", config=env.config_path, cwd=env.tmp)
    try:
        wait_for(lambda: silent_node.accepted, 30, message="the backfill's request in flight")
        backfill.send_signal(signal.SIGINT)
        _out, err = backfill.communicate(timeout=30)
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.communicate()
        env.close()
    assert backfill.returncode == 130, err
    assert "backfill interrupted; run it again to resume" in err
    assert "Traceback" not in err
