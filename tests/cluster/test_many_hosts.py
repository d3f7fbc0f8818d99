"""Many databases per host and many hosts per cluster, against the real 3-node cluster: daemon
processes side by side, each with its own database, state and metrics port.

- Two apps on one host (two `cdc-daemon@NAME` instances): `typesense.collection_prefix` keeps
  their collections apart even though both configs say `collection: items`.
- Two hosts sharing one collection: `tables[].id_prefix` keeps ids apart; the host with
  `manage_collection: true` creates and migrates the collection, the other follows. Starting
  both at once is safe, and so is starting two managing hosts at once by mistake.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
from support import app_exec, launcher

from .harness import (
    HEADERS,
    Cluster,
    Host,
    app,
    converged_everywhere,
    describe,
    own,
    wait_for,
)


def settle(cluster: Cluster, hosts: list[Host], timeout: float = 60) -> float:
    started = time.monotonic()
    try:
        wait_for(
            lambda: all(h.backlog() == 0 for h in hosts)
            and converged_everywhere(cluster, hosts)(),
            timeout,
            "every host's rows on every node",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{describe(cluster, hosts)}") from None
    return time.monotonic() - started


def alias_target(cluster: Cluster, alias: str) -> str | None:
    response = httpx.get(f"{cluster.urls[1]}/aliases/{alias}", headers=HEADERS, timeout=5)
    return response.json()["collection_name"] if response.status_code == 200 else None


def collection_exists(cluster: Cluster, name: str) -> bool:
    response = httpx.get(f"{cluster.urls[1]}/collections/{name}", headers=HEADERS, timeout=5)
    return response.status_code == 200


def test_two_databases_on_one_host_with_prefixed_collections(
    cluster: Cluster, make_host: Callable[..., Host]
) -> None:
    hosts = [make_host(name, collection="items") for name in ("app1", "app2")]
    for host in hosts:
        host.typesense["collection_prefix"] = f"{host.name}_"
        host.install()
    for host in hosts:
        host.start()
    for i, host in enumerate(hosts):
        host.start_workload(seed=10 + i, low=1, high=400)  # the same ids in both databases
    wait_for(lambda: all(collection_exists(cluster, f"{h.name}_items") for h in hosts), 30,
             "both collections")
    wait_for(lambda: all(len(cluster.export(cluster.nodes[0], h.collection) or {}) > 150
                         for h in hosts), 60, "documents in both collections")
    commits = [host.stop_workload() for host in hosts]
    took = settle(cluster, hosts)
    assert alias_target(cluster, "app1_items") == "app1_items__v1"
    assert alias_target(cluster, "app2_items") == "app2_items__v1"
    assert not collection_exists(cluster, "items")
    for host in hosts:
        verify = host.cli("verify")
        assert verify.returncode == 0, verify.stdout
        metrics = host.metrics()
        assert re.search(r'cdc_typesense_node_up\{node="[^"]+"\} 1\.0', metrics)
        assert "cdc_backlog_changes 0.0" in metrics
    ports = {host.metrics_port for host in hosts}
    assert len(ports) == 2
    print(
        f"\ntwo databases, one host, one cluster: {commits} app transactions; both collections"
        f" equal to their rows on all 3 nodes {took:.1f}s after the apps stopped"
    )


def test_two_hosts_share_one_collection_managed_by_one(
    cluster: Cluster, make_host: Callable[..., Host]
) -> None:
    owner = make_host("host_a", collection="shared_items", id_prefix="a:")
    follower = make_host("host_b", collection="shared_items", id_prefix="b:",
                         manage_collection=False)
    for host in (owner, follower):
        host.install()
    # Both start at once; the follower may well ask before the collection exists.
    follower.start()
    owner.start()
    owner.start_workload(seed=21, low=1, high=300)
    follower.start_workload(seed=22, low=1, high=300)  # the same keys, other ids
    wait_for(lambda: collection_exists(cluster, "shared_items__v1"), 30, "the shared collection")
    wait_for(lambda: len(cluster.export(cluster.nodes[0], "shared_items") or {}) > 100, 60,
             "documents from both hosts")
    for host in (owner, follower):
        host.stop_workload()
    took = settle(cluster, [owner, follower])
    docs = cluster.export(cluster.nodes[0], "shared_items") or {}
    assert set(docs) == set(own(docs, "a:")) | set(own(docs, "b:"))
    assert own(docs, "a:") and own(docs, "b:")

    # verify sees only its own prefix: in sync although the other host's documents are there.
    for host in (owner, follower):
        result = host.cli("verify", "--json")
        assert result.returncode == 0, result.stdout
        assert f'"documents": {len(own(docs, host.id_prefix))}' in result.stdout
    # A host's deletes touch only its own ids: the same keys of the other host stay.
    app_exec(owner.db, "DELETE FROM items")
    settle(cluster, [owner, follower])
    docs = cluster.export(cluster.nodes[0], "shared_items") or {}
    assert not own(docs, "a:") and own(docs, "b:")
    app(owner.db, "burst", "1", "50")

    # A migration: both hosts change the config the same way (a facet: not an in-place change).
    # The managing host rebuilds into shared_items__v2 and swaps the alias; the other follows
    # and sends its rows there. Nobody else rebuilds.
    for host in (follower, owner):
        host.table["fields"] = {"name": {"facet": True}}
        host.write_config()
        host.reload()
    started = time.monotonic()
    wait_for(lambda: alias_target(cluster, "shared_items") == "shared_items__v2", 60,
             "the managing host's rebuild")
    assert not collection_exists(cluster, "shared_items__v3")
    swapped = time.monotonic() - started
    took_follow = settle(cluster, [owner, follower], timeout=60)
    assert not collection_exists(cluster, "shared_items__v1")
    schema = httpx.get(f"{cluster.urls[0]}/collections/shared_items", headers=HEADERS).json()
    assert next(f for f in schema["fields"] if f["name"] == "name")["facet"] is True
    print(
        f"\ntwo hosts, one shared collection: equal on all 3 nodes {took:.1f}s after the apps"
        f" stopped; rebuild by the managing host swapped in {swapped:.1f}s, the following host's"
        f" rows there {took_follow:.1f}s later"
    )


def test_two_managing_hosts_started_at_once_is_safe(
    cluster: Cluster, make_host: Callable[..., Host]
) -> None:
    """Two hosts that both (by mistake) manage the collection, started at the same moment: one
    registers and creates it; the other is refused (exit 2, one line naming the owner) and never
    writes to, rebuilds or drops it (README: who owns a collection)."""
    hosts = [make_host(f"twin{i}", collection="twin_items", id_prefix=f"t{i}:") for i in (1, 2)]
    for i, host in enumerate(hosts):
        host.install()
        host.start_workload(seed=30 + i, low=1, high=200)
    runs = [launcher.start("run", "--once", config=h.config, cwd=h.dir) for h in hosts]
    outputs = [run.communicate(timeout=120) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], outputs
    winner, loser = (hosts[0], hosts[1]) if codes[0] == 0 else (hosts[1], hosts[0])
    assert "belongs to" in outputs[codes.index(2)][1], outputs
    for host in hosts:
        host.stop_workload()
    assert winner.cli("run", "--once").returncode == 0
    assert loser.cli("run", "--once").returncode == 2
    settle(cluster, [winner])
    assert alias_target(cluster, "twin_items") == "twin_items__v1"
