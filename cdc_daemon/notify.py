"""The systemd notify protocol (sd_notify) over $NOTIFY_SOCKET, without libsystemd."""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    """Sends READY=1, WATCHDOG=1, RELOADING=1, STOPPING=1; does nothing without NOTIFY_SOCKET."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, *fields: str) -> None:
        if self._socket is None:
            return
        with contextlib.suppress(OSError):  # systemd going away must not stop the sync
            self._socket.sendto("\n".join(fields).encode(), self._address)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
