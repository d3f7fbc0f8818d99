"""What `run` refuses at start beyond the config, the database and Typesense: an address it
can't listen on. `check` reports the same (wiring.startup_problems)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from cdc_daemon.database import ProcessorLock
from cdc_daemon.errors import ConfigError
from cdc_daemon.metrics import parse_listen


@dataclass(frozen=True)
class Problem:
    """One line of `check`; `exit_code` 2 when `run` would refuse the config itself."""

    text: str
    exit_code: int = 1


def daemon_running(database: Path) -> bool:
    """Whether a daemon (or a backfill) holds the processor lock; never creates the lock file."""
    return ProcessorLock(database).busy()


def listen_problem(key: str, listen: str, bind: bool) -> Problem | None:
    """Whether `run` could listen on `listen` (`key` names it in the problem): HOST:PORT, and
    (`bind`) a socket bound to it and closed at once."""
    try:
        host, port = parse_listen(listen, key)
    except ConfigError as exc:
        return Problem(str(exc), exc.exit_code)
    if not bind:
        return None
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            sock.bind(address)
    except OSError as exc:
        return Problem(f"{key}: cannot listen on {listen}: {exc.strerror or exc}")
    return None
