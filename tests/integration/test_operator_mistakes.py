"""Everyday operator mistakes end with one clear line, never a hang or a traceback (issue 13,
items 5, 6 and 9):

- `uninstall` while a daemon runs is refused (naming its pid); a log dropped by hand under a
  running daemon stops it (exit 1) instead of an endless loop; uninstall removes the lock file.
- `run --once` gives up (exit 1) when Typesense is unreachable, refuses the key, or the KMS is
  down at start; `backfill` on a host following a shared collection says what it waits for and
  gives up after `--wait` seconds.
- A first run as root leaves nothing the service user can't use (the lock file gets the
  database file's owner and mode), and a permission problem is one line naming the file and
  the fix. These run the CLI as `nobody` (setpriv), so they need root, as in CI.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import (
    API_KEY,
    ELEMENTS_CONFIG,
    ELEMENTS_DDL,
    Env,
    app_exec,
    app_write,
    db_rows,
    db_scalar,
    insert_elements,
    launcher,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import LocalTypesense, free_port

SLOW = 150  # seconds: a deadline for commands that used to hang; they now end well before


def lock_file(env: Env) -> Path:
    return env.db.with_name(env.db.name + ".cdc-lock")


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr lines that are not JSON log lines: what a person reads."""
    return [line for line in result.stderr.splitlines() if line.strip() and line[0] != "{"]


def log_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def our_triggers(db: Path) -> int:
    return int(db_scalar(db, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'"
                             " AND name LIKE 'change_log:%'"))


def wait_running(env: Env, daemon: subprocess.Popen[str]) -> None:
    wait_for(lambda: daemon.poll() is not None or any(
        e.get("event") == "running" for e in log_events(read_daemon_log(env))),
        timeout=90, message="the daemon running")
    assert daemon.poll() is None, read_daemon_log(env)


# -- item 5: uninstall while a daemon runs -----------------------------------------------------


def test_uninstall_is_refused_while_a_daemon_runs_and_removes_the_lock_file(
    elements_env: Env,
) -> None:
    env = elements_env
    insert_elements(env.db, range(1, 11))
    daemon = start_daemon_logged(env)
    try:
        wait_running(env, daemon)
        triggers = our_triggers(env.db)
        for args in (["uninstall"], ["uninstall", "--drop-log"]):
            result = env.cli(*args)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            [line] = error_lines(result)
            assert f"pid {daemon.pid}" in line and "stop it first" in line, line
        assert our_triggers(env.db) == triggers
        assert db_scalar(env.db, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'change_log'")
        insert_elements(env.db, range(11, 21))  # still syncing, untouched
        wait_for(lambda: len(env.documents("elements")) == 20, 90, "20 documents")
    finally:
        assert stop_process(daemon, timeout=60) == 0, read_daemon_log(env)
    assert lock_file(env).exists()
    result = env.cli("uninstall", "--drop-log", check=True)
    assert "removed lock file" in result.stdout
    assert not lock_file(env).exists()
    assert our_triggers(env.db) == 0
    assert not db_scalar(env.db, "SELECT COUNT(*) FROM sqlite_master WHERE name = 'change_log'")


def test_a_daemon_whose_log_is_dropped_by_hand_stops_with_one_error(elements_env: Env) -> None:
    env = elements_env
    insert_elements(env.db, range(1, 6))
    daemon = start_daemon_logged(env)
    try:
        wait_running(env, daemon)
        wait_for(lambda: len(env.documents("elements")) == 5, 90, "5 documents")
        # What `uninstall --drop-log` did under a running daemon before it was refused.
        names = [r[0] for r in db_rows(env.db, "SELECT name FROM sqlite_master WHERE"
                                               " type = 'trigger' AND name LIKE 'change_log:%'")]
        drops = [f'DROP TRIGGER "{n}"' for n in names] + [
            f"DROP TABLE {t}" for t in ("change_log", "change_log_dead", "change_log_state")]
        app_write(env.db, [[(sql, []) for sql in drops]])
        wait_for(lambda: daemon.poll() is not None, 90, "the daemon to stop")
    finally:
        stop_process(daemon)
    assert daemon.returncode == 1, read_daemon_log(env)
    events = log_events(read_daemon_log(env))
    [error] = [e for e in events if "change log dropped" in e["event"]]
    assert error["level"] == "error" and "run `cdc-daemon install`" in error["event"], error
    assert error["missing"] == ["change_log", "change_log_state"]
    assert sum(e["event"] == "sync failed" for e in events) <= 2, events  # no endless loop
    assert events[-1]["event"] == "stopped"


def test_a_deleted_lock_file_does_not_let_a_second_processor_in(elements_env: Env) -> None:
    env = elements_env
    insert_elements(env.db, range(1, 6))
    daemon = start_daemon_logged(env)
    try:
        wait_running(env, daemon)
        lock_file(env).unlink()  # `rm app.db.cdc-lock` under the running daemon
        triggers = our_triggers(env.db)
        for args in (["run", "--once"], ["uninstall"], ["uninstall", "--drop-log"]):
            result = env.cli(*args, timeout=SLOW)
            assert result.returncode == 1, (args, result.stdout, result.stderr)
            assert "Traceback" not in result.stderr, result.stderr
            [line] = error_lines(result)
            assert "is syncing" in line, line
        assert our_triggers(env.db) == triggers
        insert_elements(env.db, range(6, 11))  # the daemon still syncs, alone
        wait_for(lambda: len(env.documents("elements")) == 10, 90, "10 documents")
        assert daemon.poll() is None, read_daemon_log(env)
    finally:
        assert stop_process(daemon, timeout=60) == 0, read_daemon_log(env)
    env.cli("run", "--once", check=True)  # the holder gone, the lock is free again


def test_a_database_reached_through_a_symlink_meets_the_same_lock(elements_env: Env) -> None:
    env = elements_env
    insert_elements(env.db, range(1, 6))
    elsewhere = env.tmp / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "app.db").symlink_to(env.db)
    # Other collections (the same ones are refused by their owner registry): the lock alone
    # must keep a second processor off this database's log.
    other = Env(elsewhere, env.typesense, env.prefix + "b")
    other.write_config([{k: v for k, v in ELEMENTS_CONFIG.items() if k != "collection"}])
    daemon = start_daemon_logged(env)
    try:
        wait_running(env, daemon)
        result = other.cli("run", "--once", timeout=SLOW)
        assert result.returncode == 1 and f"pid {daemon.pid}" in result.stderr, result.stderr
        second = start_daemon_logged(other, name="second")
        try:
            wait_for(lambda: second.poll() is not None, SLOW, "the second daemon to give up")
        finally:
            stop_process(second)
        assert second.returncode == 1, read_daemon_log(other, "second")
        assert f"pid {daemon.pid}" in read_daemon_log(other, "second")
        assert not (elsewhere / "app.db.cdc-lock").exists()  # the lock is beside the real file
        assert daemon.poll() is None, read_daemon_log(env)
    finally:
        assert stop_process(daemon, timeout=60) == 0, read_daemon_log(env)
        other.http.close()


# -- item 6: commands that end -----------------------------------------------------------------


def write_config(env: Env, typesense: dict[str, Any]) -> None:
    env.write_config([{"table": "elements"}])
    config = yaml.safe_load(env.config_path.read_text())
    config["typesense"] = {"nodes": [env.typesense.url], "timeout": 5, **typesense}
    env.config_path.write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("broken", ["unreachable", "refused key", "kms down"])
def test_run_once_gives_up_at_start_with_one_line(elements_env: Env, broken: str) -> None:
    env = elements_env
    insert_elements(env.db, range(1, 4))
    if broken == "unreachable":
        write_config(env, {"api_key": API_KEY, "nodes": [f"http://127.0.0.1:{free_port()}"]})
        what = "ensure collections"
    elif broken == "refused key":
        write_config(env, {"api_key": "not-the-key"})
        what = "ensure collections"
    else:
        (env.tmp / "kms.token").write_text("token\n")
        write_config(env, {"kms": {"url": f"http://127.0.0.1:{free_port()}", "key_name": "a",
                                   "token_file": "kms.token"}})
        what = "fetch the Typesense API key"
    started = time.monotonic()
    result = env.cli("run", "--once", timeout=SLOW)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    [line] = error_lines(result)
    assert f"{what}: gave up after 8 tries" in line, line
    assert took < 120, took
    assert db_scalar(env.db, "SELECT COUNT(*) FROM change_log") == 3  # nothing acknowledged


def follower(env: Env) -> None:
    env.write_config([{"table": "elements", "manage_collection": False, "id_prefix": "b:"}])


def waiting_lines(stderr: str) -> list[dict[str, Any]]:
    return [e for e in log_events(stderr)
            if e["event"] == "waiting for the host that manages the shared collection"]


@pytest.mark.parametrize("daemon_running", [False, True])
def test_backfill_on_a_following_host_says_what_it_waits_for_and_gives_up(
    elements_env: Env, daemon_running: bool
) -> None:
    env = elements_env
    follower(env)
    insert_elements(env.db, range(1, 6))
    daemon = start_daemon_logged(env) if daemon_running else None
    try:
        if daemon is not None:
            wait_for(lambda: "ensure collections" in read_daemon_log(env), 90,
                     "the following daemon waiting")
        result = env.cli("backfill", "--wait", "3", timeout=SLOW)
    finally:
        if daemon is not None:
            stop_process(daemon)
    assert result.returncode == 1, result.stderr
    [waiting] = waiting_lines(result.stderr)
    assert waiting["table"] == "elements"
    assert repr(env.collection("elements")) in waiting["problem"], waiting
    [line] = error_lines(result)
    assert "gave up after 3 s" in line and env.collection("elements") in line, line
    assert "--wait" in line


def test_backfill_on_a_following_host_goes_on_once_the_collection_exists(
    elements_env: Env, typesense: LocalTypesense
) -> None:
    env = elements_env
    follower(env)
    insert_elements(env.db, range(1, 6))
    err = env.tmp / "backfill.err"
    with open(err, "w") as stderr:
        backfill = launcher.start("backfill", "--wait", "120", config=env.config_path,
                                  cwd=env.tmp, stderr=stderr)
    try:
        wait_for(lambda: waiting_lines(err.read_text()), 90, "the waiting line")
        # The managing host, with its own database, creates the shared collection.
        (env.tmp / "manager").mkdir()
        manager = Env(env.tmp / "manager", typesense, env.prefix)
        app_exec(manager.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
        manager.write_config([{"table": "elements", "id_prefix": "a:"}])
        manager.cli("install", check=True)
        manager.cli("run", "--once", check=True)
        out, _ = backfill.communicate(timeout=SLOW)
    finally:
        if backfill.poll() is None:
            backfill.kill()
            backfill.wait()
    assert backfill.returncode == 0, err.read_text()
    assert "elements: backfilled 5 rows" in out
    wait_for(lambda: len(env.documents("elements")) == 5, 90, "the follower's 5 documents")
    assert set(env.documents("elements")) == {f"b:{i}" for i in range(1, 6)}


# -- item 9: permissions -----------------------------------------------------------------------


NOBODY = pwd.getpwnam("nobody")
NOBODY_GROUP = grp.getgrgid(NOBODY.pw_gid).gr_name


@pytest.fixture
def shared(typesense: LocalTypesense, request: pytest.FixtureRequest) -> Iterator[Env]:
    """An installed app database in a folder under /tmp that `nobody` can reach, everything
    owned by nobody (the service user). pytest's tmp_path is root's alone (0700)."""
    assert os.geteuid() == 0, "these tests run the CLI as nobody with setpriv: run them as root"
    folder = Path(tempfile.mkdtemp(prefix="cdc-perm-", dir="/tmp"))
    os.chmod(folder, 0o755)
    name = "p" + str(abs(hash(request.node.nodeid)) % 10**10)
    env = Env(folder, typesense, name)
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([{"table": "elements"}])
    env.cli("install", check=True)
    insert_elements(env.db, range(1, 6))
    for path in [folder, *folder.iterdir()]:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    yield env
    env.http.close()
    shutil.rmtree(folder)


def as_nobody(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups",
         *launcher.command(*args, config=env.config_path)],
        capture_output=True, text=True, timeout=SLOW, cwd=env.tmp,
    )


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_a_first_run_as_root_leaves_files_the_service_user_can_use(shared: Env) -> None:
    env = shared
    env.cli("run", "--once", check=True)  # root, as the Quick start's shell would
    db_uid, db_gid, db_mode = owner_and_mode(env.db)
    assert owner_and_mode(lock_file(env)) == (db_uid, db_gid, db_mode & 0o666)
    for companion in env.tmp.iterdir():  # SQLite's -wal/-shm, if left: the database's owner
        assert os.stat(companion).st_uid == NOBODY.pw_uid, companion
    insert_elements(env.db, range(6, 9))
    result = as_nobody(env, "run", "--once")
    assert result.returncode == 0, result.stderr
    assert len(env.documents("elements")) == 8


def one_line(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    [line] = error_lines(result)
    return line


def test_a_lock_file_left_by_root_is_one_line_with_the_fix(shared: Env) -> None:
    env = shared
    lock = lock_file(env)
    lock.write_text("1\n")  # what an earlier version left after a run as root
    os.chmod(lock, 0o644)
    line = one_line(as_nobody(env, "run", "--once"))
    assert str(lock) in line and f"chown nobody:{NOBODY_GROUP} {lock}" in line, line
    assert "owner root:root, mode 0644" in line, line


def test_a_database_file_the_user_cannot_write_is_one_line_with_the_fix(shared: Env) -> None:
    env = shared
    os.chown(env.db, 0, 0)
    line = one_line(as_nobody(env, "run", "--once"))
    assert f"{env.db}: the database file is not writable by user nobody" in line, line
    assert f"chown nobody:{NOBODY_GROUP} {env.db}" in line, line
    assert not lock_file(env).exists()


def test_a_folder_the_user_cannot_write_is_one_line_with_the_fix(shared: Env) -> None:
    env = shared
    os.chown(env.tmp, 0, 0)  # 0755 root: SQLite can't create app.db-shm there
    for args in (["run", "--once"], ["status"], ["check"]):
        line = one_line(as_nobody(env, *args))
        assert f"{env.tmp}: the database's folder is not writable by user nobody" in line, line
        assert f"chown nobody:{NOBODY_GROUP} {env.tmp}" in line, line


@pytest.mark.parametrize("secret", ["api_key_file", "kms token_file"])
def test_a_secret_file_the_user_cannot_read_is_one_line_with_the_fix(
    shared: Env, secret: str
) -> None:
    env = shared
    path = env.tmp / "secret"
    path.write_text(API_KEY)
    os.chmod(path, 0o600)  # root's alone
    config = yaml.safe_load(env.config_path.read_text())
    del config["typesense"]["api_key"]
    if secret == "api_key_file":
        config["typesense"]["api_key_file"] = "secret"
        key, code, command = "typesense.api_key_file", 2, "run"
    else:
        config["typesense"]["kms"] = {"url": f"http://127.0.0.1:{free_port()}", "key_name": "a",
                                      "token_file": "secret"}
        key, code, command = "typesense.kms.token_file", 1, "check"
    env.config_path.write_text(yaml.safe_dump(config))
    result = as_nobody(env, command)
    if command == "check":  # check prints its problems on stdout, one a line
        assert result.returncode == code and "Traceback" not in result.stderr, result.stderr
        [line] = [ln for ln in result.stdout.splitlines() if "secret" in ln]
    else:
        line = one_line(result, code)
    assert f"{key}: cannot read {path}: permission denied for user nobody" in line, line
    assert f"chgrp {NOBODY_GROUP} {path} && chmod 0640 {path}" in line, line
