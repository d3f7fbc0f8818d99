"""support.cli_inprocess: the CLI in the test's process answers as the subprocess would (exit
code, stdout, stderr) and leaves the process as it found it, so tests using it stay independent
of their order; an exception escaping main() fails the test instead of becoming an exit code."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from support import cli_inprocess

from cdc_daemon import logs
from cdc_daemon.logs import configure_logging, register_secret


def process_state() -> tuple[Any, ...]:
    return (os.getcwd(), dict(os.environ), signal.getsignal(signal.SIGTERM),
            structlog.is_configured(), structlog.get_config(), set(logs._secrets), sys.stdout,
            sys.stderr)


def test_the_real_cli_answers_as_the_process_does(tmp_path: Path) -> None:
    usage = cli_inprocess.run("--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: cdc-daemon"), usage
    missing = cli_inprocess.run("check", config=tmp_path / "nope.yaml", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stdout == "", missing
    assert missing.stderr.startswith("cdc-daemon: error: "), missing.stderr
    wrong = cli_inprocess.run("no-such-command")
    assert wrong.returncode == 2 and "invalid choice: 'no-such-command'" in wrong.stderr, wrong


def test_what_a_command_changes_is_put_back(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def meddling_main(argv: Sequence[str]) -> int:
        configure_logging("json", "info")
        register_secret("a-secret-of-the-command")
        os.environ["CDC_TEST_SET_BY_THE_COMMAND"] = "1"
        signal.signal(signal.SIGTERM, lambda *_: None)
        structlog.get_logger("test").warning("logged", cwd=os.getcwd())
        print("out", list(argv), os.environ.get("CDC_CONFIG"), os.environ["CDC_TEST_EXTRA"])
        return 3

    monkeypatch.setenv("CDC_CONFIG", "/somewhere/else.yaml")  # a child never inherits it
    monkeypatch.setattr(cli_inprocess, "main", meddling_main)
    before = process_state()
    result = cli_inprocess.run("status", cwd=tmp_path, extra_env={"CDC_TEST_EXTRA": "x"})
    assert process_state() == before
    assert result.returncode == 3
    assert result.stdout == "out ['status'] None x\n"
    assert f'"cwd": "{tmp_path}"' in result.stderr and '"event": "logged"' in result.stderr


def test_an_exception_escaping_main_fails_the_test(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_main(_argv: Sequence[str]) -> int:
        os.environ["CDC_TEST_SET_BY_THE_COMMAND"] = "1"
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(cli_inprocess, "main", failing_main)
    before = process_state()
    with pytest.raises(RuntimeError, match="a bug"):
        cli_inprocess.run("status", cwd=tmp_path)
    assert process_state() == before
