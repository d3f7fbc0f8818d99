"""The systemd notify protocol over a real AF_UNIX datagram NOTIFY_SOCKET: READY after the first
iteration, WATCHDOG from the loop (also while Typesense is unreachable and during HTTP calls),
RELOADING/READY around SIGHUP (a broken config keeps the old one), STOPPING and exit 0 on
SIGTERM."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from support import Env, insert_elements, wait_for

from cdc_daemon.heartbeat import HeartbeatTransport
from service.helpers import (
    ELEMENTS_TABLE,
    DaemonProcess,
    NotifySocket,
    free_port,
    wait_scrape,
)

WATCHDOG_USEC = "400000"  # pings every 0.2 s


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def systemd_env(notify: NotifySocket) -> dict[str, str]:
    return {"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": WATCHDOG_USEC}


def test_ready_watchdog_reload_and_stop(elements_env: Env, notify: NotifySocket) -> None:
    env = elements_env
    insert_elements(env.db, range(1, 11))
    daemon = DaemonProcess(env, extra_env=systemd_env(notify))
    try:
        notify.wait_field("READY=1", daemon=daemon)
        # READY only once the first iteration succeeded: the rows written before are in Typesense.
        assert len(env.documents("elements")) == 10
        assert env.status()["backlog"] == 0
        ready_at = notify.times("READY=1")[0]
        # WATCHDOG=1 keeps coming from the loop while idle (every WATCHDOG_USEC / 2).
        notify.wait_field("WATCHDOG=1", count=notify.count("WATCHDOG=1") + 4, timeout=10,
                          daemon=daemon)
        pings = [t for t in notify.times("WATCHDOG=1") if t > ready_at]
        assert len(pings) >= 3
        assert max(b - a for a, b in itertools.pairwise(pings)) < 1.0  # generous: loaded CI

        # SIGHUP with a good new config: RELOADING=1 (with MONOTONIC_USEC), then READY=1.
        env.write_config([ELEMENTS_TABLE], sync={"batch_size": 50})
        daemon.send_signal(signal.SIGHUP)
        notify.wait_field("RELOADING=1", daemon=daemon)
        notify.wait_field("READY=1", count=2, daemon=daemon)
        reloading = next(f for _t, f in notify.messages if "RELOADING=1" in f)
        assert any(field.startswith("MONOTONIC_USEC=") for field in reloading), reloading
        assert notify.times("RELOADING=1")[0] <= notify.times("READY=1")[1]
        daemon.wait_event("config reloaded")

        # SIGHUP with a broken config: logged, the old config keeps running.
        good = env.config_path.read_text()
        env.config_path.write_text(good + "no_such_key: 1\n")
        daemon.send_signal(signal.SIGHUP)
        notify.wait_field("RELOADING=1", count=2, daemon=daemon)
        notify.wait_field("READY=1", count=3, daemon=daemon)
        [failed] = daemon.wait_event("reload failed; keeping the previous config")
        assert failed["level"] == "error"
        assert "no_such_key" in failed["error"], failed
        insert_elements(env.db, range(11, 21))
        wait_for(lambda: len(env.documents("elements")) == 20, timeout=20,
                 message="sync to go on after a failed reload")
        pings_before = notify.count("WATCHDOG=1")
        notify.wait_field("WATCHDOG=1", count=pings_before + 2, timeout=10, daemon=daemon)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    notify.wait_field("STOPPING=1", timeout=5)
    assert notify.fields().count("READY=1") == 3
    daemon.lines()  # every line is JSON


def test_typesense_unreachable_at_start(elements_env: Env, notify: NotifySocket) -> None:
    """No READY while the first iteration can't succeed, but the watchdog is fed during the
    retries, the failures are counted, and SIGTERM still stops it cleanly with exit 0."""
    env = elements_env
    port = free_port()
    env.write_config([ELEMENTS_TABLE], metrics={"listen": f"127.0.0.1:{port}"},
                     typesense={"nodes": [f"http://127.0.0.1:{free_port()}"]})
    daemon = DaemonProcess(env, extra_env=systemd_env(notify))
    try:
        m = wait_scrape(
            port, lambda m: m.get("cdc_sync_errors_total", kind="target_unavailable") >= 3,
            message="startup failures counted", daemon=daemon,
        )
        assert m.get("cdc_typesense_up") == 0
        assert m.get("cdc_last_success_timestamp_seconds") == 0
        notify.wait_field("WATCHDOG=1", count=notify.count("WATCHDOG=1") + 3, timeout=10,
                          daemon=daemon)
        assert notify.count("READY=1") == 0
        daemon.wait_event("retrying", count=2)
    finally:
        started = time.monotonic()
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    assert time.monotonic() - started < 5
    notify.wait_field("STOPPING=1", timeout=5)
    assert notify.count("READY=1") == 0
    daemon.lines()


class _PacedServer(ThreadingHTTPServer):
    beats: Callable[[], int] | None = None  # how many beats the client has made; None: no pacing


class _SlowChunks(BaseHTTPRequestHandler):
    """Answers every request with 6 chunks, a slow import response paced by its reader: each
    chunk goes once the client's transport has beaten for what came before it (the headers, the
    previous chunk), so every part arrives on its own, however loaded the machine."""

    server: _PacedServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        beats = self.server.beats
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        seen = beats() if beats else 0
        self.end_headers()
        for i in range(6):
            if beats is not None:
                seen = _next_beat(beats, seen)
            line = f'{{"success": true, "n": {i}}}\n'.encode()
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *_args: object) -> None:
        pass


def _next_beat(beats: Callable[[], int], seen: int) -> int:
    """Wait until the client has beaten more than `seen` times; its count then."""
    wait_for(lambda: beats() > seen, 10, message="the client's next beat", interval=0.002)
    return beats()


def test_heartbeat_transport_beats_during_a_slow_response() -> None:
    """A long import keeps the watchdog fed from the loop's thread, and only from it."""
    server = _PacedServer(("127.0.0.1", 0), _SlowChunks)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)  # shutdown() waits for its next look
    thread.start()
    beats: list[float] = []
    server.beats = lambda: len(beats)
    url = f"http://127.0.0.1:{server.server_address[1]}/import"
    try:
        with httpx.Client(transport=HeartbeatTransport(lambda: beats.append(1.0))) as client:
            response = client.post(url, content=b"{}")
            assert response.status_code == 200 and len(response.text.splitlines()) == 6
            assert len(beats) >= 6  # before, at the headers, and for each chunk
            beats.clear()
            server.beats = None  # no beats to wait for: the chunks go at once
            other = threading.Thread(target=lambda: client.post(url, content=b"{}"))
            other.start()
            other.join(timeout=10)
            assert beats == []  # another thread's traffic never feeds the watchdog
    finally:
        server.shutdown()
        server.server_close()
