"""The systemd notify protocol (sd_notify) over $NOTIFY_SOCKET, without libsystemd."""

from __future__ import annotations

import contextlib
import os
import socket
import time


class Notifier:
    """Sends READY=1, WATCHDOG=1, RELOADING=1, STOPPING=1; does nothing without NOTIFY_SOCKET.

    `heartbeat()` sends WATCHDOG=1 at most every half of $WATCHDOG_USEC (as sd_watchdog_enabled
    advises); it is called by the sync loop, never by a thread of its own, so a hung loop stops
    the pings and systemd restarts the service."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        for_us = not pid.isdigit() or int(pid) == os.getpid()  # sd_watchdog_enabled's rule
        self.watchdog_interval = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and for_us else None
        )
        self._last_watchdog = float("-inf")
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *fields: str) -> None:
        if self._socket is None:
            return
        if "RELOADING=1" in fields:  # systemd 253+ wants the time of the reload with it
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            fields = (*fields, f"MONOTONIC_USEC={usec}")
        with contextlib.suppress(OSError):  # systemd going away must not stop the sync
            self._socket.sendto("\n".join(fields).encode(), self._address)

    def heartbeat(self) -> None:
        """WATCHDOG=1 when half the watchdog interval has passed since the last one."""
        interval = self.watchdog_interval
        if interval is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= interval:
            self.send("WATCHDOG=1")
            self._last_watchdog = now

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
