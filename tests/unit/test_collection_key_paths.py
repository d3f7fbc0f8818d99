"""The config key paths in collection messages come from the root (wiring.table_entries): a table
the daemon skips as broken does not shift the `tables[N]` of the tables after it. And an admin
verify with repair checks collections with its own manager, not the loop's (FakeSink, no
server: what is tested is who builds which object and which key path a message names)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from support import app_write
from support.fake_sink import FakeSink

from cdc_daemon.config import Config
from cdc_daemon.errors import ConfigError
from cdc_daemon.kms import StaticKey
from cdc_daemon.ownership import REGISTRY, CollectionOwned, registry_schema
from cdc_daemon.runtime import Runtime, Services
from cdc_daemon.triggers import install
from cdc_daemon.wiring import DaemonControls, build_runtime

OTHER = "otherhost:/srv/other/app.db"


def _runtime(tmp_path: Path, sink: FakeSink, collection: str = "items") -> Runtime:
    """Two configured tables, the first missing from the database: the daemon skips it."""
    path = tmp_path / "app.db"
    app_write(path, [[("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)", [])]])
    config = Config.model_validate({
        "database": str(path),
        "typesense": {"nodes": ["http://127.0.0.1:1"], "api_key": "k"},
        "tables": [{"table": "gone"}, {"table": "items", "collection": collection}],
    })
    services = Services(StaticKey("k"), cast(Any, sink))
    runtime = build_runtime(config, services, skip_broken_tables=True)
    assert list(runtime.mappings) == ["items"] and "gone" in runtime.syncer.broken
    return runtime


@pytest.fixture
def sink() -> FakeSink:
    return FakeSink()


@pytest.fixture
def runtime(tmp_path: Path, sink: FakeSink) -> Iterator[Runtime]:
    runtime = _runtime(tmp_path, sink)
    yield runtime
    runtime.close()


def _owned_by_another_database(sink: FakeSink, physical: str) -> None:
    """`physical` exists and the registry names another database as its owner."""
    sink.create_collection({"name": physical, "fields": [{"name": "name", "type": "string"}]})
    sink.create_collection(registry_schema(REGISTRY))
    entry = {"id": physical, "owner": OTHER, "alias": "items", "table": "items", "claimed_at": 1}
    sink.write_document(REGISTRY, entry)


REFUSED = (
    "collection 'items' (items__v1) belongs to otherhost:/srv/other/app.db (table items); this"
    " daemon is {me}: it never rebuilds, writes or drops another database's collection. Give"
    " this one another name (tables[1].collection or typesense.collection_prefix), or share it"
    " with id_prefix and manage_collection: false"
)


def test_the_registry_name_refused_after_a_skipped_table_names_its_own_entry(
    tmp_path: Path, sink: FakeSink
) -> None:
    runtime = _runtime(tmp_path, sink, collection=REGISTRY)
    try:
        with pytest.raises(ConfigError) as caught:
            runtime.syncer.ensure_collections()
        assert str(caught.value) == (
            "tables[1].collection: 'cdc_daemon_owners' is the name of cdc-daemon's owner"
            " registry: choose another collection name"
        )
        problem = runtime.syncer.collections.check(runtime.mappings["items"])
        assert problem == str(caught.value)  # `check` says what `run` refuses, in the same words
    finally:
        runtime.close()


def test_another_databases_collection_is_refused_naming_the_tables_own_entry(
    runtime: Runtime, sink: FakeSink
) -> None:
    install(runtime.db, runtime.names, runtime.tables)
    _owned_by_another_database(sink, "items__v1")
    me = runtime.syncer.collections.owners.identity
    with pytest.raises(CollectionOwned) as caught:
        runtime.syncer.ensure_collections()
    assert str(caught.value) == REFUSED.format(me=me)
    assert runtime.syncer.collections.check(runtime.mappings["items"]) == REFUSED.format(me=me)


def _admin_over(runtime: Runtime) -> DaemonControls:
    """The admin API's controls over a daemon whose collection is made and whose table has a
    row the log does not know (a repair logs it)."""
    app_write(runtime.db.path, [[("INSERT INTO items VALUES (1, 'one')", [])]])
    install(runtime.db, runtime.names, runtime.tables)
    runtime.syncer.ensure_collections()
    return DaemonControls(cast(Any, SimpleNamespace(runtime=runtime)))


class _LoopOnly:
    """Stands in for the loop's collection manager: an admin request must not use it."""

    def check(self, *args: Any) -> str | None:
        raise AssertionError("an admin request used the loop's collection manager")


def test_an_admin_repair_checks_with_its_own_collection_manager(runtime: Runtime) -> None:
    controls = _admin_over(runtime)
    loop_manager = runtime.syncer.collections
    runtime.syncer.collections = cast(Any, _LoopOnly())
    try:
        summary = controls.verify(None, repair=True)
    finally:
        runtime.syncer.collections = loop_manager
    assert summary["repair_queued"] == 1 and not summary["in_sync"], summary
    queued = runtime.db.query("SELECT tbl, op FROM change_log")
    assert queued == [("items", "V")], queued


def test_an_admin_repair_refuses_another_databases_collection_naming_its_entry(
    runtime: Runtime, sink: FakeSink
) -> None:
    controls = _admin_over(runtime)
    sink.documents[REGISTRY]["items__v1"]["owner"] = OTHER  # taken over behind our back
    me = runtime.syncer.collections.owners.identity
    with pytest.raises(ConfigError) as caught:
        controls.verify(None, repair=True)
    assert str(caught.value) == "not repaired: " + REFUSED.format(me=me)
