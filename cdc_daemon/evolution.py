"""Collection lifecycle: each configured collection name is an alias to `<name>__v<N>`.

At start, on SIGHUP and when the app changes its schema, each table's derived schema is compared
with its collection:
- the same: nothing to do;
- only new optional fields: they are added in place (PATCH) and every row is sent again;
- anything else: `<name>__v<N+1>` is created and backfilled while live changes keep flowing (to
  the new collection, and as a best-effort copy to the old one that searches still use); then the
  alias is switched in one step and the old collection dropped. Searches never see a gap.
A collection that is not ours (a plain collection with the configured name, or an alias to a
collection not named `<name>__v<N>`) is never rebuilt: a difference is reported (SchemaMismatch).
The rebuild's state lives in the `<log>_state` table, so a restart continues it.

Several tables of the config may share one collection (each with its own `id_prefix`,
config.py): they are one `Group`, evolved as one. Its schema is the union of theirs
(schema.union_schema); a rebuild creates one new collection, backfills every member into it, and
switches the alias once every member's backfill is done and its log drained. The group's state
(`rebuild:`, `retire:`, `created:`) is kept under its first member's table name: a collection of
one table keeps the keys it always had, and one found under another member's name (the config's
order changed) is still the group's.

Shared collections (several hosts, `id_prefix`): one host manages the collection; the others
(`manage_collection: false`) never create, change, rebuild or drop it. They follow: they write to
the alias while their documents fit the collection behind it, follow the managing host's rebuild
into `<name>__v<N+1>` as soon as it exists (and their documents fit it), send every row of their
own again whenever the collection they write to changes, and otherwise wait (CollectionWaiting,
retried with backoff; nothing is acknowledged meanwhile).

Ownership (ownership.py): every `<name>__v<N>` this daemon creates is registered to its database
first; before it writes to, extends, rebuilds or drops one, the registry must name this database
(one made by an earlier version, without an entry, is adopted). Another database's collection is
refused (CollectionOwned, exit 2) whatever its schema: only hosts that follow a shared collection
(`manage_collection: false`, their own `id_prefix`) write to a collection they do not own.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from cdc_daemon.backfill import Backfill
from cdc_daemon.database import Database
from cdc_daemon.errors import CollectionWaiting, ConfigError, SchemaMismatch, TargetError
from cdc_daemon.log_schema import (
    CREATED_PREFIX,
    FOLLOW_PREFIX,
    REBUILD_PREFIX,
    RETIRE_PREFIX,
    LogTables,
    StateStore,
)
from cdc_daemon.log_status import LogStatus
from cdc_daemon.ownership import REGISTRY, Claim, NameKeys, Ownership, database_identity
from cdc_daemon.schema import (
    TableMapping,
    added_optional_fields,
    fit_problems,
    schema_differences,
    union_schema,
)
from cdc_daemon.sink import Sink
from cdc_daemon.table_rows import RowQueryFailed

log = structlog.get_logger("cdc_daemon.evolution")
FOLLOW_INTERVAL = 10.0  # seconds between a following host's looks at a shared collection
FOLLOW_REUSE = 5.0  # seconds one look serves every database of a process following it


class FollowLookups:
    """What a following host reads of a shared collection: the alias, the collection it names,
    and the managing host's rebuild of it. In a `databases:` daemon a thousand databases may
    follow one collection, each every FOLLOW_INTERVAL (two or three GETs each: a third of the
    daemon's CPU at 1 commit/s in each); they share one look for FOLLOW_REUSE seconds
    (runtime.Services holds it). Any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._looks: dict[str, tuple[float, _Look]] = {}

    def look(self, sink: Sink, alias: str, reuse: float = FOLLOW_REUSE) -> _Look:
        with self._lock:
            seen = self._looks.get(alias)
        if seen is not None and time.monotonic() - seen[0] < reuse:
            return seen[1]
        looked_at = time.monotonic()
        current = sink.get_alias(alias)
        physical = current or alias
        existing = sink.get_collection(physical)
        version = _version_of(alias, physical) if current is not None else None
        upcoming = version_name(alias, version + 1) if version is not None else None
        rebuild = sink.get_collection(upcoming) if upcoming is not None else None
        look = _Look(current, existing, upcoming, rebuild)
        with self._lock:
            self._looks[alias] = (looked_at, look)
        return look


@dataclass(frozen=True)
class _Look:
    alias: str | None  # the collection the alias names, None without an alias
    collection: dict[str, Any] | None  # that collection (or the one named so), None: none yet
    upcoming: str | None  # the managing host's next version's name (a versioned alias)
    rebuild: dict[str, Any] | None  # that collection, when it exists


@dataclass(frozen=True)
class Target:
    """Where a table's documents go. `primary` results are acknowledged; during a rebuild
    `mirror` (the alias searches still use) gets a best-effort copy."""

    primary: str
    mirror: str | None = None


@dataclass(frozen=True)
class Group:
    """The tables of this config whose documents go to one collection (one, unless several
    share it with their own id_prefix): created, extended and rebuilt together."""

    members: tuple[TableMapping, ...]

    @property
    def table(self) -> str:
        """The name its state and ownership claims go by: the first member's (module doc)."""
        return self.members[0].table

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(member.table for member in self.members)

    @property
    def collection(self) -> str:
        return self.members[0].collection

    @property
    def label(self) -> str:
        """How messages name its tables: `table 'books'`, `tables 'books', 'authors'`."""
        names = ", ".join(repr(t) for t in self.tables)
        return f"table{'s' if len(self.members) > 1 else ''} {names}"

    def collection_schema(self, name: str | None = None) -> dict[str, Any]:
        return union_schema(self.members, name)


def groups_of(mappings: Mapping[str, TableMapping]) -> dict[str, Group]:
    """The managed collections' groups, by collection, members in config order; tables that
    follow another host's collection (manage_collection: false) are followed one by one."""
    members: dict[str, list[TableMapping]] = {}
    for mapping in mappings.values():
        if mapping.manage_collection:
            members.setdefault(mapping.collection, []).append(mapping)
    return {collection: Group(tuple(found)) for collection, found in members.items()}


def version_name(alias: str, version: int) -> str:
    return f"{alias}__v{version}"


def _version_of(alias: str, physical: str) -> int | None:
    match = re.fullmatch(re.escape(alias) + r"__v(\d+)", physical)
    return int(match.group(1)) if match else None


class CollectionManager:
    """Used by the thread that syncs (the loop, a command). `check()` changes nothing and may run
    on any thread; an admin request builds its own manager on its own connection (wiring.py)."""

    def __init__(
        self,
        sink: Sink,
        db: Database,
        names: LogTables,
        batch_size: int,
        keys: Mapping[str, NameKeys],
        follow: FollowLookups | None = None,
    ) -> None:
        self.sink = sink
        self.follow = follow if follow is not None else FollowLookups()  # shared: Services
        self.db = db
        self.names = names
        self.log_status = LogStatus(db, names)  # how far the sync of a rebuild's backfill is
        self.backfill = Backfill(db, names)
        self.batch_size = batch_size
        self._state = StateStore(db, names)
        self.follow_interval = FOLLOW_INTERVAL
        self._follow_due = time.monotonic() + FOLLOW_INTERVAL
        self.owners = Ownership(sink, REGISTRY, database_identity(db.path))
        self.keys = keys  # table → the config keys naming its collection (the root's, for messages)
        # Every table's mapping (the last ensure's; the root sets them for a checker): which
        # tables share a collection.
        self.mappings: Mapping[str, TableMapping] = {}

    # -- state ----------------------------------------------------------------------------------

    def rebuilds(self) -> dict[str, str]:
        return rebuilds_in_progress(self.db, self.names)

    def _group_state(self, prefix: str, group: Group) -> str | None:
        """The group's state row: under its first member's name, else another member's."""
        return next(
            (value for t in group.tables if (value := self._state.get(prefix + t)) is not None),
            None,
        )

    def _rebuilding(self, group: Group) -> str | None:
        return self._group_state(REBUILD_PREFIX, group)

    def _end_rebuild(self, group: Group) -> None:
        """Forget a rebuild (finished or abandoned) and the collection it retired."""
        self._state.delete(
            *(prefix + t for t in group.tables for prefix in (REBUILD_PREFIX, RETIRE_PREFIX))
        )

    def _set_retired(self, group: Group, collection: str) -> None:
        """Before an alias switch: the collection it leaves, to drop even after a crash."""
        self._state.set(RETIRE_PREFIX + group.table, collection)

    def _retired(self, group: Group) -> str | None:
        return self._group_state(RETIRE_PREFIX, group)

    def _backfill_all(self, group: Group, conn: Any = None) -> None:
        """Every row of every member again (a new or rebuilt collection, added fields)."""
        for table in group.tables:
            self.backfill.start(table, conn)

    def _group_for(self, mapping: TableMapping) -> Group:
        """The group `mapping` belongs to among the known mappings (the last ensure's)."""
        group = groups_of(self.mappings).get(mapping.collection)
        return group if group is not None and mapping.table in group.tables else Group((mapping,))

    # -- planning at start, reload and schema change ----------------------------------------------

    def ensure(self, mappings: dict[str, TableMapping]) -> dict[str, Target]:
        """Each table's target; the members of a shared collection all get the same one."""
        self._follow_due = time.monotonic() + self.follow_interval
        self.mappings = dict(mappings)
        for mapping in mappings.values():
            self._refuse_registry_name(mapping)
        groups = {group.collection: self._ensure(group) for group in groups_of(mappings).values()}
        return {
            table: groups[m.collection] if m.manage_collection else self._follow(m)
            for table, m in mappings.items()
        }

    def _claim(self, group: Group | TableMapping, physical: str) -> Claim:
        """A shared collection is claimed once, for the group, by its first member's name."""
        return Claim(group.collection, physical, group.table, self.keys[group.table])

    def _refuse_registry_name(self, mapping: TableMapping) -> None:
        registry = self.owners.registry
        if mapping.collection == registry or _version_of(registry, mapping.collection):
            raise ConfigError(
                f"{mapping.collection!r} is the name of cdc-daemon's owner registry: choose"
                " another collection name",
                key=self.keys[mapping.table].collection,
            )

    def _create(self, mapping: Group, physical: str, fresh: bool = False) -> None:
        """Create `physical` from the table, registered to this database first (ownership.py).
        One that exists already (left over by a crash, a create that timed out but was applied)
        is adopted when its schema matches, else dropped and created again; `fresh` (a rebuild)
        always starts from an empty collection. Another database's is refused."""
        schema = mapping.collection_schema(physical)
        existing = self.sink.get_collection(physical)
        self.owners.claim(self._claim(mapping, physical), exists=existing is not None)
        if existing is not None and self.sink.get_alias(physical) is None:
            if not fresh and not schema_differences(schema, existing):
                return
            self.sink.delete_collection(physical)  # ours (by name), left over
        if not self.sink.create_collection(schema):
            existing = self.sink.get_collection(physical)
            if existing is None or schema_differences(schema, existing):
                raise TargetError(
                    f"collection {physical!r} was just created by someone else with another"
                    " schema: is a second host managing it? (manage_collection)"
                )

    def _ensure(self, mapping: Group) -> Target:
        alias = mapping.collection
        schema = mapping.collection_schema()
        current = self.sink.get_alias(alias)
        if current is None:
            existing = self.sink.get_collection(alias)
            if existing is None:
                created = CREATED_PREFIX + mapping.table
                if self._group_state(CREATED_PREFIX, mapping):
                    # Its alias and collection were deleted by hand: every row again (recorded
                    # first: a crash after creating must still fill it).
                    self._backfill_all(mapping)
                    log.warning("collection was missing; recreated and backfilling", alias=alias)
                self._create(mapping, version_name(alias, 1))
                self.sink.set_alias(alias, version_name(alias, 1))
                self._state.set(created, alias)
                log.info("collection created", collection=version_name(alias, 1), alias=alias)
                return Target(alias)
            return self._foreign(mapping, alias, existing)
        version = _version_of(alias, current)
        existing = self.sink.get_collection(current)
        if version is None:
            if existing is None:
                raise SchemaMismatch(f"alias {alias!r} points to {current!r}, which does not exist")
            return self._foreign(mapping, current, existing)
        if existing is None:  # deleted by hand: build it again, with every row
            self._backfill_all(mapping)  # first: a crash after creating must still fill it
            self._create(mapping, current)
            log.warning("collection was missing; recreated and backfilling", collection=current)
            return Target(alias)
        self.owners.require(self._claim(mapping, current))  # before any write, PATCH or drop
        rebuilding = self._rebuilding(mapping)
        if rebuilding == current:  # a crash came after the alias switch: the rebuild is done
            self._finish(mapping, alias, rebuilding)
            rebuilding = None
        if not schema_differences(schema, existing):
            if rebuilding:
                self._abandon(mapping, rebuilding)
            return Target(alias)
        if rebuilding:
            new = self.sink.get_collection(rebuilding)
            if new is not None and not schema_differences(schema, new):
                self.owners.require(self._claim(mapping, rebuilding))
                log.info("rebuild continues", table=mapping.table, collection=rebuilding)
                return Target(rebuilding, mirror=alias)
            self._abandon(mapping, rebuilding)
        added = added_optional_fields(schema, existing)
        if added:  # the re-send is recorded first: a crash after the PATCH must still send it
            self._backfill_all(mapping)
        if added and self.sink.add_fields(current, added) is None:
            log.info(
                "fields added; re-sending every row",
                collection=current,
                fields=[f["name"] for f in added],
            )
            return Target(alias)
        return self._start_rebuild(
            mapping, alias, current, version, schema_differences(schema, existing)
        )

    def _foreign(self, mapping: Group, name: str, existing: dict[str, Any]) -> Target:
        """A collection cdc-daemon did not create: used as it is, or only given new fields.
        One another database created (configured by its real name, `books__v1`) is refused."""
        self.owners.refuse_if_other(self._claim(mapping, name))
        schema = mapping.collection_schema(name)
        problems = schema_differences(schema, existing)
        if not problems:
            return Target(mapping.collection)
        added = added_optional_fields(schema, existing)
        if added:  # recorded first, as in _ensure
            self._backfill_all(mapping)
        if added and self.sink.add_fields(name, added) is None:
            return Target(mapping.collection)
        raise SchemaMismatch(
            f"collection {name!r} does not match {mapping.label}: "
            + "; ".join(problems)
            + ". It was not created by cdc-daemon, so it is never rebuilt: drop it (cdc-daemon"
            " then creates it behind an alias and backfills) or change the config to match"
        )

    def _start_rebuild(
        self, mapping: Group, alias: str, current: str, version: int, reasons: list[str]
    ) -> Target:
        new = version_name(alias, version + 1)
        self._create(mapping, new, fresh=True)
        with self.db.write() as conn:  # together: a rebuild never goes on without its backfills
            self._state.set(REBUILD_PREFIX + mapping.table, new, conn)
            self._backfill_all(mapping, conn)
        log.warning(
            "schema changed: rebuilding collection",
            table=mapping.table,
            tables=list(mapping.tables),
            old=current,
            new=new,
            reasons=reasons,
        )
        return Target(new, mirror=alias)

    def _abandon(self, mapping: Group, rebuilding: str) -> None:
        """Drop a rebuild that is no longer wanted; its collection only while nothing uses it
        (delete_collection refuses one an alias points to) and only when it is ours."""
        self._drop(rebuilding, idle=True)
        self._end_rebuild(mapping)
        log.info("rebuild abandoned", table=mapping.table, collection=rebuilding)

    def _finish(self, group: Group, alias: str, collection: str) -> None:
        """The alias points at the rebuilt collection: drop the one it left (recorded before
        the switch; also after a crash between any two of these steps) and forget the rebuild."""
        old = self._retired(group)
        if old is not None and old != collection:
            self._drop(old)
        self._end_rebuild(group)
        log.info(
            "rebuild finished: alias switched", alias=alias, collection=collection, dropped=old
        )

    def _drop(self, physical: str, idle: bool = False) -> None:
        """Drop a collection of ours (another database's is left alone, with a warning), then
        forget it in the registry: a crash between the two leaves an entry of ours without its
        collection, which is harmless. `idle`: only while no alias points to it."""
        if self.sink.get_collection(physical) is not None:
            if not self.owners.droppable(physical):
                log.warning("not dropped: another database's collection", collection=physical)
                return
            if idle and (self.sink.get_alias(physical) or self.sink.aliases_to(physical)):
                return  # searches use it
            self.sink.delete_collection(physical)
        self.owners.release(physical)

    # -- following a shared collection another host manages --------------------------------------

    def _follow(self, mapping: TableMapping) -> Target:
        target, physical, collection = self._follow_target(mapping)
        self._followed(mapping, physical, collection)
        return target

    def _follow_target(
        self, mapping: TableMapping, reuse: float = FOLLOW_REUSE
    ) -> tuple[Target, str, dict[str, Any]]:
        """Where a following host writes: the managing host's rebuild target when there is one
        that fits, else the alias when it fits; CollectionWaiting otherwise. Changes nothing.
        `reuse`: a look at the collection this old, by any database of the process, will do."""
        alias = mapping.collection
        schema = mapping.collection_schema()
        look = self.follow.look(self.sink, alias, reuse)
        physical = look.alias or alias
        existing = look.collection
        if existing is None:
            raise CollectionWaiting(
                f"collection {alias!r} does not exist yet; it is created by the host that manages"
                " it (manage_collection: true): waiting"
            )
        upcoming, new = look.upcoming, look.rebuild
        if upcoming is not None and new is not None and not fit_problems(schema, new):
            return Target(upcoming, mirror=alias), upcoming, new
        problems = fit_problems(schema, existing)
        if problems:
            raise CollectionWaiting(
                f"collection {physical!r} (managed by another host) does not fit table"
                f" {mapping.table!r}: " + "; ".join(problems) + ": waiting for it to be migrated"
            )
        return Target(alias), physical, existing

    def _followed(self, mapping: TableMapping, physical: str, collection: dict[str, Any]) -> None:
        """Remember which collection (and which of our schemas) this host's rows were sent to;
        when that changes (the managing host swapped in a rebuild, or recreated it, or our
        table changed), send every row of ours again."""
        mark = json.dumps(
            [physical, collection.get("created_at"), mapping.collection_schema("")],
            sort_keys=True,
        )
        value = f"{physical} {hashlib.sha256(mark.encode()).hexdigest()[:16]}"
        name = FOLLOW_PREFIX + mapping.table
        if self._state.get(name) == value:
            return
        with self.db.write() as conn:
            self._state.set(name, value, conn)
            self.backfill.start(mapping.table, conn)  # together: a crash can't skip the re-send
        log.info(
            "following shared collection: sending every row",
            table=mapping.table,
            collection=physical,
        )

    def check(self, mapping: TableMapping) -> str | None:
        """For `check` and a repair: a problem the daemon would refuse to start with, or None.
        Changes nothing (here or in Typesense), so it may run on any thread.

        Differences in a collection cdc-daemon manages are not problems: they are rebuilt; one
        that belongs to another database is."""
        if not mapping.manage_collection:
            try:
                self._follow_target(mapping, reuse=0)
            except CollectionWaiting as exc:
                return str(exc)
            return None
        try:
            self._refuse_registry_name(mapping)
        except ConfigError as exc:
            return str(exc)
        alias = mapping.collection
        current = self.sink.get_alias(alias)
        name = current or alias
        if current is not None and _version_of(alias, current) is not None:
            return self._owner_problem(mapping, current)
        existing = self.sink.get_collection(name)
        if existing is None and current is None:  # `run` would create <alias>__v1
            return self._owner_problem(mapping, version_name(alias, 1))
        if existing is None:
            return f"alias {alias!r} points to {name!r}, which does not exist"
        group = self._group_for(mapping)
        try:  # a collection configured by its real name: refused if another database made it
            self.owners.refuse_if_other(self._claim(group, name))
        except ConfigError as exc:
            return str(exc)
        schema = group.collection_schema(name)
        problems = schema_differences(schema, existing)
        if not problems or added_optional_fields(schema, existing):
            return None
        return f"collection {name!r} does not match {group.label}: " + "; ".join(problems)

    def _owner_problem(self, mapping: TableMapping, physical: str) -> str | None:
        exists = self.sink.get_collection(physical) is not None
        return self.owners.problem(self._claim(self._group_for(mapping), physical), exists)

    # -- between batches ------------------------------------------------------------------------

    def step(
        self,
        mappings: dict[str, TableMapping],
        targets: dict[str, Target],
        skip: Collection[str] = (),
        unreadable: dict[str, str] | None = None,
    ) -> bool:
        """Feed backfills a page at a time, finish rebuilds, and (hosts following a shared
        collection, every `follow_interval`) look where to write; True when it did some work.
        No backfill page for the tables in `skip` (rows that can't be read: sync.py); a table
        whose page can't be read now goes into `unreadable` (table → SQLite's message) while
        the other tables go on (without `unreadable`: RowQueryFailed)."""
        busy = False
        if time.monotonic() >= self._follow_due:
            self._follow_due = time.monotonic() + self.follow_interval
            for table, target in list(targets.items()):
                if not mappings[table].manage_collection:
                    targets[table] = self._follow(mappings[table])
                    if targets[table] != target:
                        log.info(
                            "shared collection moved",
                            table=table,
                            was=target.primary,
                            now=targets[table].primary,
                        )
                        busy = True
        active = self.backfill.active()
        for table in list(targets):
            if table in active and table not in skip:
                busy = self._feed(mappings[table], unreadable) or busy
        for group in groups_of({t: mappings[t] for t in targets}).values():
            busy = self._switch_when_filled(group, targets, active) or busy
        return busy

    def _feed(self, mapping: TableMapping, unreadable: dict[str, str] | None) -> bool:
        """Log a backfill page of the table unless a batch of its changes is still waiting."""
        if self.log_status.unsynced_for_table(mapping.table, self.batch_size) >= self.batch_size:
            return False
        try:
            self.backfill.log_next_page(mapping)
        except RowQueryFailed as exc:
            if unreadable is None:
                raise
            unreadable[mapping.table] = exc.error
            return False
        return True

    def _switch_when_filled(
        self, group: Group, targets: dict[str, Target], active: Collection[str]
    ) -> bool:
        """A rebuild's alias switch, once EVERY member's backfill is done and its log drained
        (a shared collection is switched whole: no member's documents may go missing)."""
        target = targets[group.table]
        if target.mirror is None or any(
            t in active or self.log_status.unsynced_for_table(t, 1) for t in group.tables
        ):
            return False
        old = self.sink.get_alias(target.mirror)
        if old is not None and old != target.primary:
            self._set_retired(group, old)
        self.sink.set_alias(target.mirror, target.primary)
        self._finish(group, target.mirror, target.primary)
        for table in group.tables:
            targets[table] = Target(target.mirror)
        return True


def rebuilds_in_progress(db: Database, names: LogTables) -> dict[str, str]:
    """Tables being rebuilt → the new collection being filled."""
    return StateStore(db, names).with_prefix(REBUILD_PREFIX)
