"""Fixtures for the trigger tests: one app process for the session, one database per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import App, World


@pytest.fixture(scope="session")
def app() -> Iterator[App]:
    process = App()
    yield process
    process.stop()


@pytest.fixture(params=["wal", "delete"])
def journal_mode(request: pytest.FixtureRequest) -> str:
    """Both journal modes must work: the app chooses, cdc-daemon never switches it."""
    return str(request.param)


@pytest.fixture
def make_world(app: App, tmp_path: Path) -> Iterator[Callable[..., World]]:
    worlds: list[World] = []

    def make(*ddl: str, journal_mode: str = "wal", name: str = "app.db") -> World:
        world = World(app, tmp_path / name, journal_mode)
        if ddl:
            world.sql(*ddl)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.close()


@pytest.fixture
def world(make_world: Callable[..., World], journal_mode: str) -> World:
    """An empty database in each journal mode; the test creates tables and installs."""
    return make_world(journal_mode=journal_mode)
