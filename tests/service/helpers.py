"""Helpers for the service tests: the daemon as a real process with its log in a file,
Prometheus scrapes of its metrics endpoint, and a real NOTIFY_SOCKET datagram socket standing in
for systemd."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from support import ELEMENTS_CONFIG, Env, insert_many_elements, launcher, wait_for

from cdc_daemon.localserver import free_port

__all__ = ["ELEMENTS_TABLE", "DaemonProcess", "NotifySocket", "free_port"]

# The same table config as conftest's elements_env (the seed's collection schema).
ELEMENTS_TABLE = {k: v for k, v in ELEMENTS_CONFIG.items() if k != "collection"}


def insert_rows(db: Path, count: int, start: int = 1, comment: str = "row") -> None:
    """`count` elements rows in one app transaction (stdlib sqlite3, in the app's process)."""
    insert_many_elements(db, count, start, comment)


class DaemonProcess:
    """`cdc-daemon run` as a subprocess; stdout and stderr go to files, so a chatty daemon never
    blocks on a full pipe and every line can be checked afterwards."""

    def __init__(self, env: Env, *args: str, extra_env: dict[str, str] | None = None,
                 name: str = "daemon") -> None:
        self.env = env
        self.stopping = False  # a SIGTERM or SIGINT was sent: stop() must not send another
        self.log_path = env.tmp / f"{name}.log"
        self.out_path = env.tmp / f"{name}.out"
        self.process = launcher.start_logged(
            "run", *args, config=env.config_path, cwd=env.tmp, log=self.log_path,
            out=self.out_path, extra_env=extra_env, mode="w")

    def stderr(self) -> str:
        return self.log_path.read_text()

    def stdout(self) -> str:
        return self.out_path.read_text()

    def lines(self) -> list[dict[str, Any]]:
        """Every stderr line as a JSON object; fails naming the first line that is not one."""
        parsed = []
        for number, line in enumerate(self.stderr().splitlines(), start=1):
            try:
                value = json.loads(line)
            except ValueError:
                raise AssertionError(f"stderr line {number} is not JSON: {line!r}") from None
            assert isinstance(value, dict), f"stderr line {number} is not an object: {line!r}"
            parsed.append(value)
        return parsed

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]

    def wait_event(self, event: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        def seen() -> list[dict[str, Any]] | None:
            self.assert_running()
            found = self.events(event)
            return found if len(found) >= count else None

        return list(wait_for(seen, timeout, message=f"{count}x log event {event!r}"))

    def assert_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.process.returncode}:\n{self.stderr()[-3000:]}"
            )

    def send_signal(self, signum: int) -> None:
        self.stopping = self.stopping or signum in (signal.SIGTERM, signal.SIGINT)
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM (unless the test sent one: a second one forces the exit, signals.py) and
        wait; a daemon that does not exit in time is killed and the test fails."""
        if self.process.poll() is None:
            if not self.stopping:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(
                    f"daemon ignored SIGTERM for {timeout}s:\n{self.stderr()[-3000:]}"
                ) from None
        return int(self.process.returncode)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Scrape:
    """One scrape of /metrics, parsed with prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families: dict[str, Metric] = {
            f.name: f for f in text_string_to_metric_families(text)
        }

    def value(self, sample: str, **labels: str) -> float | None:
        """The value of the one sample with this name and (at least) these labels."""
        for family in self.families.values():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def get(self, sample: str, **labels: str) -> float:
        value = self.value(sample, **labels)
        assert value is not None, f"no sample {sample}{labels} in:\n{self.text}"
        return value


def scrape(port: int) -> Scrape:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    return Scrape(response.text)


def wait_scrape(port: int, condition: Callable[[Scrape], bool], timeout: float = 30,
                message: str = "metrics", daemon: DaemonProcess | None = None) -> Scrape:
    """Scrape until `condition` holds; the last scrape and the daemon's log go in the failure."""
    last: list[Scrape] = []

    def attempt() -> Scrape | None:
        if daemon is not None:
            daemon.assert_running()
        try:
            result = scrape(port)
        except httpx.HTTPError:
            return None
        last[:] = [result]
        return result if condition(result) else None

    try:
        return wait_for(attempt, timeout, interval=0.1, message=message)
    except AssertionError as exc:
        detail = last[0].text if last else "(no scrape succeeded)"
        log = daemon.stderr()[-3000:] if daemon is not None else ""
        raise AssertionError(f"{exc}\nlast scrape:\n{detail}\ndaemon log:\n{log}") from None


class NotifySocket:
    """A bound AF_UNIX SOCK_DGRAM socket, as systemd's NOTIFY_SOCKET; records every message."""

    def __init__(self) -> None:
        # Short path: sun_path holds 108 bytes and pytest's tmp_path can be longer.
        self._dir = tempfile.mkdtemp(prefix="cdcn", dir="/tmp")
        self.path = os.path.join(self._dir, "notify")
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(self.path)
        self._socket.settimeout(0.1)
        self.messages: list[tuple[float, list[str]]] = []  # (monotonic time, fields)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode().split("\n")))

    def fields(self) -> list[str]:
        """Every field received, in order (a message can carry several)."""
        with self._lock:
            return [f for _t, fields in self.messages for f in fields]

    def count(self, field: str) -> int:
        return self.fields().count(field)

    def wait_field(self, field: str, count: int = 1, timeout: float = 30,
                   daemon: DaemonProcess | None = None) -> None:
        def seen() -> bool:
            if daemon is not None and field != "STOPPING=1":
                daemon.assert_running()
            return self.count(field) >= count

        try:
            wait_for(seen, timeout, message=f"{count}x {field}")
        except AssertionError as exc:
            log = daemon.stderr()[-2000:] if daemon is not None else ""
            raise AssertionError(f"{exc}; received {self.fields()}\n{log}") from None

    def times(self, field: str) -> list[float]:
        with self._lock:
            return [t for t, fields in self.messages if field in fields]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._socket.close()
        shutil.rmtree(self._dir, ignore_errors=True)
