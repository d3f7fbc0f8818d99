"""Fixtures and hooks only: a real Typesense server for the session, one test's `Env` against
it, the seed's elements table installed. What tests share otherwise is in tests/support."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import API_KEY, ELEMENTS_CONFIG, ELEMENTS_DDL, Env, app_exec
from support.hypothesis_examples import use_fast_subset

from cdc_daemon.localserver import LocalTypesense

# Fixtures that start a Typesense server (the session's, or the cluster tests' three nodes): a
# test using one, directly or through another fixture, gets the `typesense` marker, so
# `pytest -m "not typesense"` runs everything else. A test that starts a server of its own
# carries the marker explicitly.
SERVER_FIXTURES = frozenset({"typesense", "cluster"})
FAST_SUBSET = "not typesense"


# Where the fast subset keeps tmp_path when this machine has it: a file system in memory, as
# the fsyncs of its SQLite commits on a disk cost more than many of the tests themselves.
MEMORY_TMP = Path("/dev/shm")
MEMORY_TMP_FREE = 1 << 30


def pytest_configure(config: pytest.Config) -> None:
    """The fast subset (`-m "not typesense"`) runs each property test with a fifth of its
    examples (support.hypothesis_examples) and keeps tmp_path in memory (`_memory_tmp_usable`);
    any other run, the full suite included, keeps both as they are. Called before the test
    modules are imported, in each pytest-xdist worker too (whose basetemp the controller gives)."""
    fast = " ".join(str(config.getoption("markexpr")).split()) == FAST_SUBSET
    use_fast_subset(fast)
    if fast and _memory_tmp_usable(config):
        tempfile.tempdir = str(MEMORY_TMP)  # pytest's tmp_path root is tempfile.gettempdir()


def _memory_tmp_usable(config: pytest.Config) -> bool:
    """/dev/shm, unless --basetemp, TMPDIR or PYTEST_DEBUG_TEMPROOT names another place, or it
    is missing, not writable or short of 1 GiB."""
    if config.option.basetemp is not None or {"TMPDIR", "PYTEST_DEBUG_TEMPROOT"} & set(os.environ):
        return False
    try:
        stat = os.statvfs(MEMORY_TMP)
    except OSError:
        return False
    free = stat.f_bavail * stat.f_frsize
    return free >= MEMORY_TMP_FREE and os.access(MEMORY_TMP, os.W_OK | os.X_OK)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.typesense)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """How many workers pyproject's `-n auto` starts: none (tests run in this process) when the
    command names only files or tests (`pytest tests/unit/test_config.py`, `...::test_x`), as
    starting workers costs more than such a run takes, or asks for `--trace` (`--pdb` pytest-xdist
    handles itself); otherwise one per core, at most 4 (each worker that runs a server test
    starts a Typesense of its own)."""
    paths = [Path(config.invocation_params.dir, arg.split("::")[0]) for arg in config.args]
    if config.option.trace or (paths and all(path.is_file() for path in paths)):
        return 0
    return min(4, os.cpu_count() or 1)


@pytest.fixture(scope="session")
def typesense(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTypesense]:
    """One real Typesense for the session. A server that cannot start fails the run; never skips."""
    server = LocalTypesense(tmp_path_factory.mktemp("typesense"), api_key=API_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path: Path, typesense: LocalTypesense, request: pytest.FixtureRequest) -> Iterator[Env]:
    name = "t" + str(abs(hash(request.node.nodeid)) % 10**10)
    environment = Env(tmp_path, typesense, name)
    yield environment
    environment.close()


@pytest.fixture
def elements_env(env: Env) -> Env:
    """The seed's `elements` table, installed and configured like the seed's collection schema."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([{k: v for k, v in ELEMENTS_CONFIG.items() if k != "collection"}])
    env.cli("install", check=True)
    return env
