"""Edges of the CLI a newcomer hits (issue 15, fix B): an empty `--table`, absurd `--watch`
periods, `local-typesense` options it can't use, a lock held by something else than a daemon,
keys `verify` prints, Typesense URLs that can't work and column names `init` must escape. Each
once a traceback or a misleading answer. The no-server cases run the CLI in this process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from support import Env, app_exec, cli_inprocess, launcher, stop_process
from support.launcher import environment

from cdc_daemon.cli import _one_line

UNREACHABLE = "http://127.0.0.1:1"  # nothing listens there: these commands never get that far


def _offline(tmp_path: Path) -> Env:
    env = Env(tmp_path, UNREACHABLE, "edges", in_process=True)
    app_exec(env.db, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)",
             "CREATE TABLE other (id INTEGER PRIMARY KEY, t TEXT)")
    env.write_config([{"table": "items"}, {"table": "other"}])
    return env


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return lines[-1] if lines and lines[0].startswith("usage:") else _single(lines)


def _single(lines: list[str]) -> str:
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("args", [("schema",), ("dead-letters", "purge"),
                                  ("dead-letters", "list"), ("dead-letters", "retry")])
def test_an_empty_table_name_is_refused_not_every_table(tmp_path: Path, args: tuple[str, ...],
                                                        ) -> None:
    env = _offline(tmp_path)
    env.cli("install", check=True)
    line = _one_line_error(env.cli(*args, "--table", ""), 2)
    assert line == "cdc-daemon: error: --table '': not a configured table", line


@pytest.mark.parametrize("period", ["inf", "1e308", "1e400", "nan", "86401", "-1", "abc", ""])
def test_status_watch_refuses_a_period_it_cannot_sleep(tmp_path: Path, period: str) -> None:
    env = _offline(tmp_path)
    line = _one_line_error(env.cli("status", "--watch", period), 2)
    assert line.startswith("cdc-daemon status: error: argument --watch: "), line
    assert "_positive_seconds" not in line and "seconds" in line, line


def _local_typesense(tmp_path: Path, *args: str) -> str:
    result = cli_inprocess.run("local-typesense", *args, cwd=tmp_path)
    return _one_line_error(result, 1).removeprefix("cdc-daemon: error: ")


@pytest.mark.parametrize("port", ["99999", "-1", "0", "65536"])
def test_local_typesense_refuses_a_port_out_of_range(tmp_path: Path, port: str) -> None:
    line = _local_typesense(tmp_path, "--data-dir", str(tmp_path / "d"), "--port", port)
    assert line == f"--port {port}: give a port from 1 to 65535", line
    assert not (tmp_path / "d").exists()


def test_local_typesense_port_zero_is_refused_as_a_process(tmp_path: Path) -> None:
    """The same as a process: exit 1 and one line, where it started a server on a random port."""
    result = launcher.run("local-typesense", "--data-dir", str(tmp_path / "d"), "--port", "0",
                          cwd=tmp_path, timeout=60)
    line = _one_line_error(result, 1)
    assert line == "cdc-daemon: error: --port 0: give a port from 1 to 65535", line


def test_local_typesense_says_which_data_dir_or_key_file_it_cannot_use(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    line = _local_typesense(tmp_path, "--data-dir", str(a_file))
    assert line.startswith(f"--data-dir {a_file}: cannot make it a directory: "), line
    under_a_file = a_file / "data"
    line = _local_typesense(tmp_path, "--data-dir", str(under_a_file))
    assert line.startswith(f"--data-dir {under_a_file}: cannot make it a directory: "), line
    data = tmp_path / "data"
    line = _local_typesense(tmp_path, "--data-dir", str(data), "--api-key-file", str(tmp_path))
    assert line.startswith(f"--api-key-file {tmp_path}: cannot read or make the API key"), line
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff\xfe\x00key")
    line = _local_typesense(tmp_path, "--data-dir", str(data), "--api-key-file", str(binary))
    assert line.startswith(f"--api-key-file {binary}: ") and "not UTF-8" in line, line


# -- status: who holds the lock -------------------------------------------------------------

HOLDER = """\
import sys
from pathlib import Path
from cdc_daemon.database import ProcessorLock
lock = ProcessorLock(Path(sys.argv[-1]))
assert lock.acquire()
print("holding", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start a process named `program` holding the database's processor lock (argv `args`)."""
    started: list[subprocess.Popen[str]] = []

    def start(program: str, *args: str) -> int:
        script = tmp_path / program
        script.write_text(HOLDER)
        process = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path,
                                   env=environment(), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "holding\n"
        return process.pid

    yield start
    for process in started:
        assert process.stdin is not None
        process.stdin.close()
        stop_process(process, timeout=30)


def _status(env: Env) -> tuple[dict[str, object], str]:
    status = json.loads(env.cli("status", "--json", check=True).stdout)
    return status, env.cli("status", check=True).stdout.splitlines()[1]


def test_status_says_which_command_holds_the_lock_not_a_running_daemon(
    tmp_path: Path, holder: Callable[..., int],
) -> None:
    env = _offline(tmp_path)
    env.cli("install", check=True)
    pid = holder("cdc-daemon", "--config", "cdc.yaml", "uninstall", str(env.db))
    status, line = _status(env)
    assert (status["daemon_running"], status["syncing_pid"], status["syncing_command"],
            status["lock_holder"]) == (False, pid, "uninstall", "cdc-daemon"), status
    assert line == f"daemon: not running; `cdc-daemon uninstall` (pid {pid}) holds the lock;" \
        " never synced", line


def test_status_says_another_program_holds_the_lock(tmp_path: Path,
                                                    holder: Callable[..., int]) -> None:
    env = _offline(tmp_path)
    env.cli("install", check=True)
    pid = holder("some-tool", str(env.db))
    status, line = _status(env)
    assert (status["daemon_running"], status["syncing_pid"], status["syncing_command"],
            status["lock_holder"]) == (False, pid, None, "other"), status
    assert line.startswith(f"daemon: not running; pid {pid} (not a cdc-daemon) holds"), line


def test_status_without_a_holder_reports_no_lock_holder(tmp_path: Path) -> None:
    env = _offline(tmp_path)
    env.cli("install", check=True)
    status, line = _status(env)
    assert (status["daemon_running"], status["lock_holder"]) == (False, None), status
    assert line == "daemon: not running; never synced", line


# -- init and the config: Typesense URLs, column names --------------------------------------

@pytest.mark.parametrize(("url", "says"), [
    (":8108", "names no host"), ("http://", "names no host"), ("", "names no host"),
    ("https://h:99999", "port must be a number from 1 to 65535"),
    ("http://h:0", "port must be a number from 1 to 65535"),
    ("h:abc", "port must be a number from 1 to 65535"),
])
def test_init_refuses_a_typesense_url_that_cannot_work(tmp_path: Path, url: str, says: str,
                                                       ) -> None:
    env = _offline(tmp_path)
    result = cli_inprocess.run("init", "--database", str(env.db), "--typesense-url", url,
                               cwd=tmp_path)
    line = _one_line_error(result, 2)
    assert line.startswith("cdc-daemon: error: --typesense-url: node ") and says in line, line
    assert result.stdout == ""


def test_init_hides_a_password_in_a_refused_url(tmp_path: Path) -> None:
    env = _offline(tmp_path)
    result = cli_inprocess.run("init", "--database", str(env.db), "--typesense-url",
                               "http://admin:s3cret@:8108", cwd=tmp_path)
    line = _one_line_error(result, 2)
    assert "s3cret" not in line and "***@" in line, line


@pytest.mark.parametrize("node", ["http://:8108", "http://127.0.0.1:99999", "http://h:"])
def test_the_config_refuses_a_node_url_that_cannot_work(tmp_path: Path, node: str) -> None:
    env = Env(tmp_path, node, "edges", in_process=True)
    app_exec(env.db, "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT)")
    env.write_config([{"table": "items"}])
    line = _one_line_error(env.cli("schema"), 2)
    assert "typesense.nodes" in line and repr(node) in line, line


def test_init_writes_valid_yaml_for_a_column_name_with_a_line_break(tmp_path: Path) -> None:
    env = _offline(tmp_path)
    app_exec(env.db, 'CREATE TABLE odd ("k\nk" INTEGER PRIMARY KEY, "a\nb" TEXT, "c\x1bd" INT)')
    result = cli_inprocess.run("init", "--database", str(env.db), cwd=tmp_path, check=True)
    config = yaml.safe_load(result.stdout)
    assert [t["table"] for t in config["tables"]] == ["items", "odd", "other"]
    assert '#   "a\\nb": TEXT' in result.stdout and '# key: "k\\nk"' in result.stdout
    assert '#   "c\\u001bd": INT' in result.stdout and "\x1b" not in result.stdout
    assert "#   t: TEXT" in result.stdout  # plain names as they are


# -- verify and dead-letters: keys and errors on one line each ------------------------------

ODD_KEYS = ["a,b", "", "two\nlines", "nul\x00x", "\x1b[31mred"]


def test_verify_prints_each_key_quoted(tmp_path: Path, env: Env) -> None:
    app_exec(env.db, "CREATE TABLE keyed (k TEXT PRIMARY KEY, t TEXT)",
             *(f"INSERT INTO keyed VALUES ({_sql(key)}, 'x')" for key in ODD_KEYS))
    env.write_config([{"table": "keyed"}])
    env.cli("install", check=True)
    result = env.cli("verify")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    for key in ODD_KEYS:  # '' with why it can't be indexed
        assert any(line.startswith(f"  missing: {key!r}") for line in lines), lines
    assert "\x1b" not in result.stdout and "\x00" not in result.stdout
    repaired = env.cli("verify", "--repair")  # '' can't be indexed: exit 1, said
    assert "Traceback" not in repaired.stderr, repaired.stderr
    [line] = [line for line in repaired.stdout.splitlines() if "  repaired " in line]
    assert line == "  repaired 4 missing: " + ", ".join(map(repr, sorted(ODD_KEYS)[1:])), line
    assert "\x1b" not in repaired.stdout and "\x00" not in repaired.stdout


def _sql(text: str) -> str:
    """A SQL expression for `text`, control characters included (char())."""
    return " || ".join(f"char({ord(c)})" for c in text) if text else "''"


def test_a_dead_letters_error_is_shown_on_one_line() -> None:
    assert _one_line("400: bad\nfield 'x'\r\x1b[0m") == "400: bad\\nfield 'x'\\r\\x1b[0m"
    assert _one_line("plain error") == "plain error"
