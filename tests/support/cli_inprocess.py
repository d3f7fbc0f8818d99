"""The CLI run in the test's own process: `cdc_daemon.cli.main(args)` instead of a fresh
`python -m cdc_daemon` (whose imports cost ~0.45 s of CPU per start). Only for commands that
need no server and whose subject is what they say: a config error, a command before `install`,
a dry run, `schema`, `init`. Anything where the process itself is the subject (signals, a
closed pipe, a daemon, the real entry point) runs as a subprocess (launcher).

`run` takes launcher.run's arguments and returns the same CompletedProcess, so a test's
assertions do not change with the runner. What main() may change is put back afterwards: the
working directory, os.environ (set as launcher.environment() sets a child's), sys.stdout and
sys.stderr, structlog's configuration, the secrets logs.py redacts, the signal handlers. An
exception escaping main() fails the test with its traceback, where a subprocess would print it
and exit 1 (the tests check for "Traceback" in stderr)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import structlog

from cdc_daemon import logs
from cdc_daemon.cli import main

from . import launcher

# The handlers `run`, `backfill` and Python itself install; put back if a command changed one.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


def run(*args: str, config: Path | None = None, cwd: Path | None = None,
        extra_env: dict[str, str] | None = None, check: bool = False,
        ) -> subprocess.CompletedProcess[str]:
    """The CLI to its end, in this process, in `cwd`; output captured as text."""
    argv = [*launcher.config_option(config), *args]
    out, err = io.StringIO(), io.StringIO()
    with (_process_state_kept(), _environment(extra_env), contextlib.chdir(cwd or os.getcwd()),
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
        code = _exit_code(argv)
    result = subprocess.CompletedProcess(
        launcher.command(*args, config=config), code, out.getvalue(), err.getvalue())
    if check:
        launcher.assert_succeeded(args, result)
    return result


def _exit_code(argv: Sequence[str]) -> int:
    """main()'s code; argparse's exits (`--help`, a usage error) as the interpreter turns them
    into a process's exit status."""
    try:
        return main(argv)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


@contextlib.contextmanager
def _environment(extra_env: dict[str, str] | None) -> Iterator[None]:
    """os.environ as a child's (launcher.environment) for the block, then the test's again."""
    saved, child = os.environ.copy(), launcher.environment(extra_env)
    os.environ.clear()
    os.environ.update(child)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """structlog's configuration (main() configures it to print on the captured stderr), the
    redacted secrets (a key registered by one test would be hidden in the next one's output)
    and the signal handlers, as they were before the block."""
    was_configured, config = structlog.is_configured(), structlog.get_config()
    secrets = set(logs._secrets)
    handlers = {signum: signal.getsignal(signum) for signum in SIGNALS}
    try:
        yield
    finally:
        structlog.reset_defaults()
        if was_configured:
            structlog.configure(**config)
        logs._secrets.clear()
        logs._secrets.update(secrets)
        for signum, handler in handlers.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)
