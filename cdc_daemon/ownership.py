"""Who owns a collection: a registry in Typesense of the collections each database created.

A second database whose table has the same name (another app, a staging copy) must never rebuild,
write or drop the first one's collection. Typesense 0.24 has no metadata on collections, so the
owner is recorded in one small collection, `cdc_daemon_owners`, shared by every instance on the
cluster whatever its `collection_prefix` (a collection's owner must be found whatever prefix the
daemon looking at it has: per-prefix registries let a copy with another prefix adopt and drop
the original's collections), one document per physical collection cdc-daemon
created: id = the collection's real name (`<alias>__v<N>`), `owner` = this database's identity,
`alias`, `table` and `claimed_at` (unix seconds).

The identity is the host name and the database's absolute path (symlinks kept as configured: a
`current -> release-N` link stays the same owner across deploys). The same file restored from a
backup is the same owner; a copy on another host or at another path is not. It leaves out the log
table and the rest of the config: they may change on a reload without giving the database's own
collections away, and only one process syncs a database file at a time (its flock).

Order, so that a kill -9 at any point is safe:
- create: register first (`action=create`: the first database wins, a 409 tells the others), then
  create the collection. A crash in between leaves an entry of ours without a collection: the
  restart creates it. An unregistered collection, which another database could adopt, never
  exists because of us.
- drop: drop the collection, then remove its entry. A crash in between leaves an entry without a
  collection, which is ours (reused when that name is created again).
An entry of another database whose collection does not exist is a registration whose create never
came (that database crashed, or its collection was deleted by hand): while it is younger than
STALE_CLAIM_SECONDS this daemon waits (its owner may be creating it right now); after that the
entry is taken over, with a warning.

Collections made by earlier versions (`<alias>__v<N>` without an entry) are adopted by the first
database that meets them, with a warning naming them.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from cdc_daemon.errors import CollectionMissing, CollectionWaiting, ConfigError, TargetUnavailable
from cdc_daemon.sink import Sink

REGISTRY = "cdc_daemon_owners"
STALE_CLAIM_SECONDS = 300.0  # an entry of another database without its collection, then: stale
log = structlog.get_logger("cdc_daemon.ownership")


class CollectionOwned(ConfigError):
    """A collection another database's cdc-daemon created. Waiting does not help; another
    collection name (or sharing it with id_prefix and manage_collection: false) does: exit 2."""


def database_identity(path: Path, host: str | None = None) -> str:
    """`host:/absolute/path/app.db`: who this database is, for the registry."""
    return f"{host or socket.gethostname()}:{os.path.abspath(path)}"


def registry_schema(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "fields": [
            {"name": "owner", "type": "string"},
            {"name": "alias", "type": "string", "optional": True},
            {"name": "table", "type": "string", "optional": True},
            {"name": "claimed_at", "type": "int64", "optional": True},
        ],
    }


@dataclass(frozen=True)
class NameKeys:
    """The config keys that name a table's collection, spelled by the root (wiring.py), which
    alone knows where they sit: messages tell the operator which one to change."""

    collection: str  # the table entry's `collection`: `tables[3].collection`
    prefix: str  # the prefix every collection name gets: `typesense.collection_prefix`


@dataclass(frozen=True)
class Claim:
    """A physical collection one table entry of the config uses (or is about to create)."""

    alias: str  # the configured collection name
    physical: str  # `<alias>__v<N>`
    table: str
    keys: NameKeys  # for messages


class Ownership:
    def __init__(
        self,
        sink: Sink,
        registry: str,
        identity: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sink = sink
        self.registry = registry
        self.identity = identity
        self.clock = clock

    def entry(self, physical: str) -> dict[str, Any] | None:
        """The registry's entry for a collection; None when there is none (or no registry)."""
        return self.sink.get_document(self.registry, physical)

    def _ours(self, entry: dict[str, Any]) -> bool:
        return entry.get("owner") == self.identity

    def require(self, claim: Claim) -> None:
        """Before using, changing or dropping an existing collection: it is ours, or (no entry:
        made by an earlier version) it becomes ours now. CollectionOwned otherwise."""
        entry = self.entry(claim.physical)
        if entry is None:
            self._register(claim, adopting=True)
        elif not self._ours(entry):
            raise self.refusal(claim, entry)

    def claim(self, claim: Claim, exists: bool) -> None:
        """Before creating `claim.physical` (`exists`: a collection of that name is there
        already, left over or made by someone else)."""
        entry = self.entry(claim.physical)
        if entry is None:
            self._register(claim, adopting=exists)
        elif not self._ours(entry):
            if exists:
                raise self.refusal(claim, entry)
            self._take_over_stale(claim, entry)

    def refuse_if_other(self, claim: Claim) -> None:
        """CollectionOwned when the collection is registered to another database (nothing is
        adopted: for collections cdc-daemon did not name)."""
        entry = self.entry(claim.physical)
        if entry is not None and not self._ours(entry):
            raise self.refusal(claim, entry)

    def other_owner(self, physical: str) -> str | None:
        """The owner of a collection registered to another database; None when it is ours or
        unregistered."""
        entry = self.entry(physical)
        return None if entry is None or self._ours(entry) else str(entry.get("owner"))

    def droppable(self, physical: str) -> bool:
        """May this database drop it? Yes when it is ours, or unregistered (an earlier version's
        collection this database's own state names)."""
        entry = self.entry(physical)
        return entry is None or self._ours(entry)

    def release(self, physical: str) -> None:
        """After dropping a collection: forget it (only our own entry)."""
        entry = self.entry(physical)
        if entry is not None and self._ours(entry):
            self.sink.delete_document(self.registry, physical)

    def problem(self, claim: Claim, exists: bool) -> str | None:
        """For `check` (changes nothing): the refusal `run` would meet, or None."""
        entry = self.entry(claim.physical)
        if entry is None or self._ours(entry):
            return None
        if not exists and self._age(entry) >= STALE_CLAIM_SECONDS:
            return None  # a stale registration: `run` takes it over
        return str(self.refusal(claim, entry))

    def refusal(self, claim: Claim, entry: dict[str, Any]) -> CollectionOwned:
        return CollectionOwned(
            f"collection {claim.alias!r} ({claim.physical}) belongs to {entry.get('owner')}"
            f" (table {entry.get('table')}); this daemon is {self.identity}: it never rebuilds,"
            " writes or drops another database's collection. Give this one another name"
            f" ({claim.keys.collection} or {claim.keys.prefix}), or share it with"
            " id_prefix and manage_collection: false"
        )

    # -- writing entries ---------------------------------------------------------------------

    def _document(self, claim: Claim) -> dict[str, Any]:
        return {
            "id": claim.physical,
            "owner": self.identity,
            "alias": claim.alias,
            "table": claim.table,
            "claimed_at": int(self.clock()),
        }

    def _register(self, claim: Claim, adopting: bool) -> None:
        """Create our entry; when another database's came first (409), refuse."""
        if self._create_entry(claim):
            if adopting:
                log.warning(
                    "collection adopted: it had no owner recorded (made by an earlier cdc-daemon);"
                    " registered to this database. If another database's daemon made it, stop"
                    " this one and delete the entry",
                    collection=claim.physical,
                    owner=self.identity,
                    registry=self.registry,
                )
            return
        entry = self.entry(claim.physical)
        if entry is None:  # a node that has not applied the winner's write yet: look again later
            raise TargetUnavailable(
                f"registry {self.registry!r}: the entry of {claim.physical!r} exists but was not"
                " readable yet"
            )
        if not self._ours(entry):
            raise self.refusal(claim, entry)

    def _create_entry(self, claim: Claim) -> bool:
        """`action=create`: False when an entry exists. Creates the registry the first time."""
        document = self._document(claim)
        try:
            return self.sink.write_document(self.registry, document)
        except CollectionMissing:
            if self.sink.create_collection(registry_schema(self.registry)):
                log.info("owner registry created", registry=self.registry)
            return self.sink.write_document(self.registry, document)

    def _age(self, entry: dict[str, Any]) -> float:
        try:
            return self.clock() - float(entry.get("claimed_at") or 0)
        except (TypeError, ValueError, OverflowError):  # e.g. an integer beyond float
            return float("inf")

    def _take_over_stale(self, claim: Claim, entry: dict[str, Any]) -> None:
        """Another database registered this name, but the collection does not exist: wait while
        that registration is young (its owner may be between registering and creating), then
        take it over. Not atomic against a third database doing the same in the same instant:
        the entry is read back, and the loser of that race waits."""
        age = self._age(entry)
        if age < STALE_CLAIM_SECONDS:
            raise CollectionWaiting(
                f"collection {claim.alias!r} ({claim.physical}) was registered {age:.0f} s ago by"
                f" {entry.get('owner')} (table {entry.get('table')}), which has not created it:"
                f" waiting (a registration without its collection is taken over after"
                f" {STALE_CLAIM_SECONDS:.0f} s)"
            )
        self.sink.write_document(self.registry, self._document(claim), replace=True)
        now = self.entry(claim.physical)
        if now is None or not self._ours(now):
            raise TargetUnavailable(f"registry {self.registry!r}: {claim.physical!r} contended")
        log.warning(
            "stale registration taken over: its collection did not exist",
            collection=claim.physical,
            was=entry.get("owner"),
            owner=self.identity,
            age_s=round(age),
        )
