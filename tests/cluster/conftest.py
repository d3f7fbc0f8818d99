"""One real 3-node Typesense cluster for the cluster tests (started once, stopped at the end,
even when a test fails), and hosts that are stopped after each test."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Cluster, Host


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three servers from the bundled binary, one Raft cluster on 127.0.0.1. A cluster that
    cannot start fails the tests; it never skips them."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        started = time.monotonic()
        cluster.start()
        print(f"\n3-node cluster ready (leader elected, writable) in"
              f" {time.monotonic() - started:.1f}s")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def make_host(
    tmp_path: Path, cluster: Cluster, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Host]]:
    """`make_host(name, nodes=None, **table)`; each host's daemon and app are stopped after
    the test, and any node a test stopped is started again."""
    made: list[Host] = []

    def make(name: str, nodes: list[str] | None = None, **table: Any) -> Host:
        host = Host(tmp_path, name, nodes or cluster.urls, **table)
        made.append(host)
        return host

    try:
        yield make
    finally:
        for host in made:
            host.stop()
        for node in cluster.nodes:
            if node.process is None or node.process.poll() is not None:
                cluster.restart(node)
