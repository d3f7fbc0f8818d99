"""Fixtures for the fault suite, and a terminal summary with every fault's figures.

The figures are printed at the end of every run (whatever `-s`/`-r` say) and written to
`<pytest basetemp>/fault-figures.json`; each test also leaves its own `figures.json` in its
tmp dir and prints a `FAULT FIGURES {...}` line (shown with `-rA`).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cdc_daemon.localserver import LocalTypesense

from .harness import FIGURES, FaultWorld
from .proxy import FaultProxy

BASE_SEED = int(os.environ.get("CDC_FAULT_SEED", "20240607"))
# Where the terminal summary writes every fault's figures (pytest's basetemp, set by make_world).
FIGURES_PATH = pytest.StashKey[Path]()


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The test's seed: CDC_FAULT_SEED (a fixed default) mixed with the test's name. The
    workload's statements and the faults' random choices follow from it; rerun with the same
    CDC_FAULT_SEED to get the same statements and choices (timing still varies)."""
    return BASE_SEED ^ zlib.crc32(request.node.name.encode())


@pytest.fixture
def make_world(tmp_path: Path, typesense: LocalTypesense, request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., FaultWorld]]:
    worlds: list[FaultWorld] = []
    request.config.stash[FIGURES_PATH] = tmp_path_factory.getbasetemp() / "fault-figures.json"
    name = "fault_" + request.node.name.removeprefix("test_")[:40]

    def make(typesense_url: str | None = None, **kwargs: Any) -> FaultWorld:
        world = FaultWorld(tmp_path, typesense_url or typesense.url, name, **kwargs)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.close()


@pytest.fixture
def proxy(typesense: LocalTypesense, tmp_path: Path) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's Typesense; its journal of requests
    and outcomes is left in the test's tmp dir as proxy.log."""
    server = FaultProxy(typesense.url).start()
    yield server
    server.stop()
    server.dump(tmp_path / "proxy.log")


COLUMNS = ("fault", "seed", "app_committed", "keys", "acknowledged", "lost", "unexpected",
           "stale", "dead_lettered", "convergence_s")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("fault suite figures")
    widths = {c: max(len(c), *(len(str(f.get(c, ""))) for f in FIGURES)) for c in COLUMNS}
    tr.write_line("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for figures in FIGURES:
        tr.write_line("  ".join(str(figures.get(c, "")).ljust(widths[c]) for c in COLUMNS))
    for figures in FIGURES:
        extra = {k: v for k, v in figures.items() if k not in COLUMNS}
        tr.write_line(f"{figures['fault']}: {json.dumps(extra)}")
    path = config.stash[FIGURES_PATH]
    path.write_text(json.dumps(FIGURES, indent=2))
    tr.write_line(f"figures written to {path}")
