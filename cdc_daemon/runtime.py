"""The two halves the daemon and the commands run on (wiring.py builds both).

`Services` lives long: the API key source and the Typesense client. The `Runtime` is the tables
half, rebuilt on an app schema change, a replaced file or a reload. Plain data with `close()`:
its own module so that the loop (daemon.py) and its helpers (resync.py) share the types without
importing each other.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from cdc_daemon.changelog import ChangeLog
from cdc_daemon.database import Database, TableInfo
from cdc_daemon.errors import CdcError
from cdc_daemon.evolution import FollowLookups
from cdc_daemon.kms import ApiKeys
from cdc_daemon.log_schema import LogTables
from cdc_daemon.log_status import LogStatus
from cdc_daemon.schema import TableMapping
from cdc_daemon.sync import Syncer
from cdc_daemon.typesense import TypesenseSink

log = structlog.get_logger("cdc_daemon")


@dataclass
class Services:
    """The long-lived half: the Typesense API key source (kms.py) and the Typesense client
    (its node health and alias cache). Kept across schema changes and replaced files; a reload
    builds new ones only when the `typesense:` section changed. The client is used by the loop
    and by admin requests (threads): see cdc_daemon/typesense/cluster.py for what it allows."""

    api_keys: ApiKeys
    sink: TypesenseSink
    follow: FollowLookups = field(default_factory=FollowLookups)  # evolution.py

    def close(self) -> None:
        self.sink.close()
        self.api_keys.close()


@dataclass(frozen=True)
class LoopSettings:
    """The config values the loop reads itself (wiring.py fills them in)."""

    tables: tuple[str, ...] = ()  # the configured table names, in config order
    # The dependency tables (depends_on) → the join columns their triggers log.
    joined: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    poll_interval: float = 1.0
    reinstall_triggers: bool = False
    max_attempts: int = 10  # an admin request's change log counts failures like the loop's


@dataclass
class Runtime:
    """The tables half, built from one config on the schema as it is now. Close it when done:
    its Services too only when `owns_services` (a command's runtime; the daemon's share them)."""

    db: Database
    names: LogTables
    tables: list[TableInfo]
    mappings: dict[str, TableMapping]
    changelog: ChangeLog
    log_status: LogStatus
    syncer: Syncer
    services: Services
    settings: LoopSettings = field(default_factory=LoopSettings)
    stop: threading.Event = field(default_factory=threading.Event)
    owns_services: bool = False

    @property
    def sink(self) -> TypesenseSink:
        return self.services.sink

    def close(self) -> None:
        try:
            self.syncer.commit_pending()
        except CdcError as exc:  # harmless: those changes are sent again by the next run
            log.warning("last acknowledgement not written", error=str(exc))
        if self.owns_services:
            self.services.close()
        self.db.close()
