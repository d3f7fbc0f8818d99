"""tests/conftest.py's choice of pytest-xdist workers for pyproject's `-n auto`: none for a run
that names only files or tests (workers cost more than such a run takes) or uses --trace,
one per core for a folder or the whole suite, at most 4 (a worker running server tests starts a
Typesense of its own)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def choose() -> Any:
    spec = importlib.util.spec_from_file_location("tests_conftest", TESTS / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pytest_xdist_auto_num_workers


def config(*args: str, trace: bool = False, cwd: Path = TESTS.parent) -> Any:
    return SimpleNamespace(args=list(args), option=SimpleNamespace(trace=trace),
                           invocation_params=SimpleNamespace(dir=cwd))


@pytest.mark.parametrize(
    "args",
    [("tests/unit/test_config.py",),
     ("tests/unit/test_config.py::test_x", "tests/unit/test_schema.py::test_y[a::b]")],
)
def test_files_and_tests_run_without_workers(choose: Any, args: tuple[str, ...]) -> None:
    assert choose(config(*args)) == 0
    assert choose(config(*(a.removeprefix("tests/") for a in args), cwd=TESTS)) == 0


@pytest.mark.parametrize("args", [("tests",), ("tests/unit",), ("tests/unit/test_config.py",
                                                                 "tests/sqlite")])
def test_folders_get_a_worker_per_core_up_to_four(
    choose: Any, args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert choose(config(*args)) == min(4, os.cpu_count() or 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert choose(config(*args)) == 4


def test_trace_runs_without_workers(choose: Any) -> None:
    assert choose(config("tests", trace=True)) == 0
