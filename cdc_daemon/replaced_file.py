"""The database path naming another file (a backup restored with `mv`) while the daemon runs.

The loop (daemon.py) notices it with one stat per iteration, rebuilds its tables half on the new
file and resyncs every collection (resync.py). Reopening is retried with backoff until it works
(the old file still in use, the new one not installed yet), so this remembers which file each
line was logged for: each says so once per replacement, not once per try. Main thread only.
"""

from __future__ import annotations

import structlog

from cdc_daemon.database import Database, file_identity
from cdc_daemon.runtime import Runtime
from cdc_daemon.triggers import trigger_problems

log = structlog.get_logger("cdc_daemon")


class ReplacedFile:
    """The lines (and the one-time release of the old file) of each replacement."""

    def __init__(self) -> None:
        self._noticed: str | None = None  # the replacing file, once its warning is logged
        self._reported: str | None = None  # ... once its trigger problems are logged

    def notice(self, old: Database) -> None:
        """The old connection first lets go of the -wal both files share by name
        (Database.release_replaced), once: after that the -wal is the new file's. The warning
        comes after it, so an operator may start the app once it is logged."""
        noticed = repr(file_identity(old.path))
        if noticed == self._noticed:
            return
        problem = old.release_replaced()  # DatabaseBusy: old file still in use; retried
        self._noticed = noticed
        log.warning("database file replaced; reopening", database=str(old.path))
        if problem is not None:
            log.error("restored file opened too early", problem=problem)

    def report_triggers(self, fresh: Runtime) -> None:
        """The new file's trigger problems, once (it may be an older backup's schema)."""
        if self._reported == self._noticed:
            return
        self._reported = self._noticed
        for problem in trigger_problems(fresh.db, fresh.names, fresh.tables):
            log.error("trigger problem", problem=problem, database=str(fresh.db.path))
