"""Errors in the user's words (issue 15, items 2 and 5): what a newcomer meets, said in one line
that names the place and the fix, never SQLite's or pydantic's raw words, never a traceback.

- every command on a database where `install` never ran names `cdc-daemon install`; `check`
  says it in one line and still lists the other problems;
- an empty key variable, a misspelled key, a view, a table without a key, a bare
  `init --typesense-url HOST:PORT`, a key file others can read;
- a clean stop reads clean, and a reader that closes the pipe early (`| head -1`) ends the
  command quietly.

Commands that reach no server run in the test's process (support.cli_inprocess: ~0.45 s of
imports less each); `python -m cdc_daemon` itself stays covered by one subprocess per kind of
error: before install (`check` on both worlds), a config error (the misspelled section), `init`
(the bare host:port), a clean stop and a closed pipe.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from support import (
    Env,
    app_exec,
    app_write,
    cli_inprocess,
    launcher,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import LocalTypesense

UNREACHABLE = "http://127.0.0.1:1"  # nothing listens there: these commands never get that far
ITEMS = "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT)"


def not_installed(env: Env) -> str:
    return f"the change log is not installed in {env.db}: run `cdc-daemon install`"


def offline_env(tmp_path: Path, in_process: bool = True) -> Env:
    """A world with the app's table and a config; no Typesense is ever reached, so its CLI
    runs in this process unless `in_process` is False."""
    env = Env(tmp_path, UNREACHABLE, "errors", in_process=in_process)
    app_exec(env.db, ITEMS, "INSERT INTO items (title) VALUES ('a'), ('b')")
    env.write_config([{"table": "items"}])
    return env


def human_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines that are not JSON log lines: what a person reads."""
    return [line for line in result.stderr.splitlines() if line.strip() and line[0] != "{"]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "no such table" not in result.stderr, result.stderr


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one `cdc-daemon: error: ...` line a person reads (its text), after the exit code."""
    no_traceback(result)
    assert result.returncode == code, result.stderr
    [line] = human_lines(result)
    assert line.startswith("cdc-daemon: error: "), line
    return line.removeprefix("cdc-daemon: error: ")


# -- before `install` -------------------------------------------------------------------------


def test_check_before_install_is_one_line_naming_install(env: Env) -> None:
    app_exec(env.db, ITEMS, "INSERT INTO items (title) VALUES ('a')")
    env.write_config([{"table": "items"}])
    result = env.cli("check")
    no_traceback(result)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [not_installed(env)]  # Typesense is fine: nothing else


def test_check_before_install_still_lists_other_problems(tmp_path: Path) -> None:
    env = offline_env(tmp_path, in_process=False)
    result = env.cli("check")
    no_traceback(result)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == not_installed(env)
    assert not any("trigger" in line for line in lines), lines
    assert any(line.startswith(f"typesense node {UNREACHABLE}: unreachable") for line in lines)


@pytest.mark.parametrize("command", [
    ["status"], ["status", "--json"], ["verify"], ["backfill"], ["run", "--once"],
    ["dead-letters", "list"], ["dead-letters", "retry"], ["dead-letters", "purge"],
])
def test_commands_before_install_name_install(tmp_path: Path, command: list[str]) -> None:
    env = offline_env(tmp_path)
    assert one_error(env.cli(*command, timeout=60), 1) == not_installed(env)


def test_a_log_table_dropped_by_hand_is_named(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env.cli("install", check=True)
    app_exec(env.db, "DROP TABLE change_log_dead")
    assert one_error(env.cli("dead-letters", "list"), 1) == (
        f"{env.db}: the change log is partly installed ('change_log_dead' missing): run"
        " `cdc-daemon install`"
    )


# -- the config ---------------------------------------------------------------------------------


def test_an_empty_key_variable_is_called_empty(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env.write_config([{"table": "items"}],
                     typesense={"nodes": [UNREACHABLE], "api_key": None,
                                "api_key_env": "CDC_TEST_EMPTY_KEY"})
    for value in ("", "  "):
        result = cli_inprocess.run("check", config=env.config_path, cwd=env.tmp,
                                   extra_env={"CDC_TEST_EMPTY_KEY": value})
        assert one_error(result, 2) == (
            "typesense.api_key_env: environment variable CDC_TEST_EMPTY_KEY is empty: set it to"
            " the Typesense API key (export CDC_TEST_EMPTY_KEY=...)"
        )


def test_a_misspelled_section_is_named_with_the_right_one(tmp_path: Path) -> None:
    env = offline_env(tmp_path, in_process=False)
    raw = yaml.safe_load(env.config_path.read_text())
    raw["typesens"] = raw.pop("typesense")
    env.config_path.write_text(yaml.safe_dump(raw))
    assert one_error(env.cli("check"), 2) == (
        f"{env.config_path}: typesens: unknown key 'typesens' (did you mean 'typesense'?)"
    )


def test_a_view_is_called_a_view_with_what_to_do(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    app_exec(env.db, "CREATE VIEW recent AS SELECT * FROM items WHERE id > 1")
    env.write_config([{"table": "items"}, {"table": "recent"}])
    line = one_error(env.cli("check"), 2)
    assert line.startswith(f"tables[1].table: 'recent' is a view in {env.db};")
    assert "configure the table it reads from instead" in line


def test_a_table_without_a_key_says_how_to_give_it_one(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    app_exec(env.db, "CREATE TABLE notes (body TEXT)")
    init = cli_inprocess.run("init", "--database", str(env.db), cwd=env.tmp, check=True)
    [skipped] = [line for line in init.stdout.splitlines() if line.startswith("# skipped")]
    env.write_config([{"table": "notes"}])
    refused = one_error(env.cli("check"), 2)
    for line in (skipped, refused):
        assert "no PRIMARY KEY" in line and "rebuild the table with a PRIMARY KEY" in line, line
        assert "`id INTEGER PRIMARY KEY`" in line, line


def test_init_with_a_bare_host_port_writes_a_config_that_loads(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    init = launcher.run("init", "--database", str(env.db), "--typesense-url", "127.0.0.1:1",
                        cwd=env.tmp, check=True)
    assert human_lines(init) == [
        "cdc-daemon: --typesense-url 127.0.0.1:1: no scheme given; wrote http://127.0.0.1:1"
    ]
    env.config_path.write_text(init.stdout)
    assert env.cli("install").returncode == 0  # the config loads: its node is a URL now
    assert yaml.safe_load(init.stdout)["typesense"]["nodes"] == ["http://127.0.0.1:1"]
    bad = cli_inprocess.run("init", "--database", str(env.db), "--typesense-url",
                            "ftp://127.0.0.1:1", cwd=env.tmp)
    assert bad.stdout == ""
    assert one_error(bad, 2) == (
        "--typesense-url: node 'ftp://127.0.0.1:1' must start with http:// or https://"
    )


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o666, True), (0o600, False),
                                              (0o640, False)])
def test_a_key_file_others_can_read_is_warned_about(tmp_path: Path, mode: int,
                                                    warned: bool) -> None:
    env = offline_env(tmp_path)
    key_file = env.tmp / "typesense.key"
    key_file.write_text("some-key\n")
    key_file.chmod(mode)
    env.write_config([{"table": "items"}],
                     typesense={"nodes": [UNREACHABLE], "api_key": None,
                                "api_key_file": "typesense.key"})
    result = env.cli("check")
    no_traceback(result)
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "secret file open to other users"]
    if not warned:
        assert warnings == []
        return
    assert warnings == [{
        "event": "secret file open to other users", "level": "warning",
        "key": "typesense.api_key_file", "path": str(key_file), "mode": f"{mode:04o}",
        "fix": f"chmod 0600 {key_file} (or 0640 with the service's group)",
        "ts": warnings[0]["ts"],
    }]
    assert result.returncode == 1  # used anyway (a warning, not a refusal): Typesense is down


# -- stopping and pipes ---------------------------------------------------------------------------


def test_a_clean_stop_reads_clean(env: Env, typesense: LocalTypesense) -> None:
    app_exec(env.db, ITEMS)
    env.write_config([{"table": "items"}])
    env.cli("install", check=True)
    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: '"running"' in read_daemon_log(env), 60, "the daemon to start")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        stop_process(daemon)
    events = [json.loads(line)["event"] for line in read_daemon_log(env).splitlines()
              if line.startswith("{")]
    assert "stopping; unsent changes stay in the log for the next start" in events
    assert "stopped" in events
    assert not any("nothing unsynced" in event for event in events)


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    env.cli("install", check=True)
    insert = ("INSERT INTO change_log_dead (tbl, pk, error, attempts, first_seen, last_seen)"
              " VALUES ('items', ?, ?, 10, 0, 0)")
    # One transaction, ~600 KB of output: far more than a pipe holds.
    app_write(env.db, [[(insert, [i, "rejected " * 20]) for i in range(3000)]])
    process = launcher.start("dead-letters", "list", config=env.config_path, cwd=env.tmp)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()  # `| head -1`
    process.stdout.close()
    stderr = process.stderr.read()
    code = process.wait(60)
    assert first.startswith("items 0: rejected")
    assert stderr == ""  # no BrokenPipeError, no "Exception ignored"
    assert code == 1
