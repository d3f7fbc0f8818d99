"""What the admin API controls: a small protocol, so admin.py knows nothing of the daemon.

wiring.DaemonControls implements it over the running Daemon. Every method is called
from the admin server's threads (uvicorn's loop, or its thread pool for the blocking ones): an
implementation works on its own SQLite connection and only sets flags the loop reads.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol


class Controls(Protocol):
    def tables(self) -> Collection[str]:
        """The configured tables the daemon syncs now (a request naming another is refused)."""
        ...

    def paused(self) -> bool: ...

    def pause(self) -> None:
        """The loop syncs nothing until resume()."""
        ...

    def resume(self) -> None: ...

    def loop_idle_seconds(self) -> float:
        """Seconds since the sync loop last showed a sign of life (/healthz)."""
        ...

    def status(self) -> dict[str, Any]:
        """`status --json` plus a `daemon` section (docs/security.md, the admin API). Blocking."""
        ...

    def verify(self, table: str | None, repair: bool) -> dict[str, Any]:
        """`verify --json`'s summary; with `repair` the differing keys are logged for the loop
        (`repair_queued`). Blocking."""
        ...

    def backfill(self, table: str | None) -> dict[str, Any]:
        """Start a backfill the loop drives: {"started": [...], "already_running": [...]}."""
        ...

    def databases(self) -> Collection[str]:
        """A `databases:` daemon's databases by name; empty for a daemon of one database."""
        ...

    def for_database(self, name: str) -> Controls:
        """One of `databases()`; a CdcError (the reason) while that one is not syncing."""
        ...

    def retry_dead_letters(self, table: str | None) -> int:
        """Dead letters put back into the log; how many. Blocking."""
        ...
