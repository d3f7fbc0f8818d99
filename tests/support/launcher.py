"""The one place tests build `python -m cdc_daemon` command lines and start them.

`run` waits for a command (the CLI), `start` returns the process (a daemon, a backfill),
`start_logged` sends its output to files (a pipe nobody reads fills up and blocks a chatty
daemon). Every child gets `environment()`: the runner's own variables that would change what a
daemon does (systemd's notify socket, a CDC_CONFIG) are left out.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

# Set for pytest itself by systemd or a CI runner; they must not leak into the daemon. And
# PYTHONDONTWRITEBYTECODE: without bytecode caches each of the suite's few hundred CLI starts
# compiled the whole package again (~0.4 s of CPU each).
INHERITED_OUT = (
    "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CDC_CONFIG", "PYTHONDONTWRITEBYTECODE",
)


def command(*args: str, config: Path | None = None) -> list[str]:
    """`python -m cdc_daemon [--config CONFIG] ARGS...`."""
    return [sys.executable, "-m", "cdc_daemon", *config_option(config), *args]


def config_option(config: Path | None) -> list[str]:
    return ["--config", str(config)] if config is not None else []


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without INHERITED_OUT, plus `extra`."""
    kept = {k: v for k, v in os.environ.items() if k not in INHERITED_OUT}
    return {**kept, **(extra or {})}


def run(*args: str, config: Path | None = None, cwd: Path | None = None, timeout: float = 120,
        extra_env: dict[str, str] | None = None, check: bool = False,
        ) -> subprocess.CompletedProcess[str]:
    """Run the CLI to its end; output captured as text. `check`: fail unless it exits 0."""
    result = subprocess.run(
        command(*args, config=config), capture_output=True, text=True, timeout=timeout,
        cwd=cwd, env=environment(extra_env),
    )
    if check:
        assert_succeeded(args, result)
    return result


def assert_succeeded(args: tuple[str, ...], result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{args}: rc={result.returncode}\n{result.stdout}\n{result.stderr}")


def start(*args: str, config: Path | None = None, cwd: Path | None = None,
          extra_env: dict[str, str] | None = None, **popen: Any) -> subprocess.Popen[Any]:
    """Start the CLI and return the process; `popen` goes to subprocess.Popen (stdout, stderr
    default to pipes, text to True)."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                               "text": True, **popen}
    return subprocess.Popen(command(*args, config=config), cwd=cwd, env=environment(extra_env),
                            **options)


def start_logged(*args: str, config: Path, cwd: Path, log: Path, out: Path | None = None,
                 extra_env: dict[str, str] | None = None, mode: str = "a",
                 ) -> subprocess.Popen[str]:
    """Start the CLI with stderr to `log` and stdout to `out` (to `log` too when None)."""
    with contextlib.ExitStack() as files:
        err = files.enter_context(open(log, mode))
        stdout = err if out is None else files.enter_context(open(out, mode))
        return start(*args, config=config, cwd=cwd, extra_env=extra_env, stdout=stdout,
                     stderr=err)


def run_cdc(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly these arguments (no --config added), in `cwd`."""
    return run(*args, cwd=cwd, extra_env=extra_env, timeout=timeout)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10) -> int:
    """SIGTERM, wait; kill -9 if it does not exit in time. Returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)
