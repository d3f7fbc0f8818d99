"""The command line as docs/commands.md promises it: exit codes, messages naming the key
path or the file, `check` one line per problem, where the config comes from, `status --json`,
and a foreign collection that does not match its table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import (
    API_KEY,
    ELEMENTS_DDL,
    Env,
    app_exec,
    db_scalar,
    expected_elements,
    insert_elements,
    run_cdc,
)

from cdc_daemon.localserver import free_port


@pytest.fixture
def installed(env: Env) -> Env:
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL, "CREATE TABLE nokey (a TEXT, b INT)")
    env.write_config([{"table": "elements"}])
    env.cli("install", check=True)
    return env


def converges(env: Env) -> None:
    """With the good config back: run --once, then documents == rows."""
    write_raw(env, base_config(env))
    env.cli("run", "--once", check=True)
    report = env.verify()
    assert report["in_sync"] is True, report
    assert env.documents("elements") == expected_elements(env.db)


def one_line_error(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_raw(env: Env, config: dict[str, Any]) -> None:
    env.config_path.write_text(yaml.safe_dump(config))


def base_config(env: Env) -> dict[str, Any]:
    return {
        "database": "app.db",
        "typesense": {"nodes": [env.typesense.url], "api_key": API_KEY, "timeout": 5},
        "tables": [{"table": "elements", "collection": env.collection("elements")}],
    }


@pytest.mark.parametrize(("change", "key_path"), [
    (lambda c: c["typesense"].update(bogus=1), "typesense.bogus"),
    (lambda c: c.update(sync={"batch_size": 10, "bacth_sise": 5}), "sync.bacth_sise"),
    (lambda c: c.update(sync={"batch_size": "lots"}), "sync.batch_size"),
    (lambda c: c["tables"].append({"table": "other", "collection": 5}), "tables[1].collection"),
    (lambda c: c["tables"][0].update(fields={"element_id": {"type": "int33"}}),
     "tables[0].fields.element_id.type"),
])
def test_bad_config_exits_2_naming_the_key_path(installed: Env, change: Any,
                                                 key_path: str) -> None:
    config = base_config(installed)
    change(config)
    write_raw(installed, config)
    for command in (["check"], ["run", "--once"], ["status"]):
        result = installed.cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert key_path in one_line_error(result)
    converges(installed)


def test_missing_table_is_refused_before_any_sql(env: Env) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    config = base_config(env)
    config["tables"].append({"table": "no_such_table"})
    write_raw(env, config)
    for command in (["install"], ["check"], ["run", "--once"], ["backfill"], ["verify"]):
        result = env.cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        line = one_line_error(result)
        assert "tables[1].table" in line and "no_such_table" in line
    # install refused before creating anything
    assert db_scalar(env.db, "SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'change_log%'"
                     " OR type = 'trigger'") == 0
    write_raw(env, base_config(env))
    env.cli("install", check=True)
    insert_elements(env.db, range(1, 4))
    converges(env)


def test_table_without_primary_key_exits_2(installed: Env) -> None:
    config = base_config(installed)
    config["tables"] = [{"table": "elements"}, {"table": "nokey"}]
    write_raw(installed, config)
    for command in (["check"], ["install"], ["run", "--once"]):
        result = installed.cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        line = one_line_error(result)
        assert "tables[1]" in line and "nokey" in line and "key" in line.lower()
    insert_elements(installed.db, range(1, 4))
    converges(installed)


def test_missing_database_exits_1_naming_it_and_never_creates_it(installed: Env) -> None:
    env = installed
    config = base_config(env)
    config["database"] = "does-not-exist.db"
    write_raw(env, config)
    missing = env.tmp / "does-not-exist.db"
    for command in (["install"], ["check"], ["run", "--once"], ["status", "--json"],
                    ["verify"], ["backfill"], ["dead-letters", "list"]):
        result = env.cli(*command)
        assert result.returncode == 1, (command, result.stderr)
        assert str(missing) in one_line_error(result)
        assert not missing.exists()
    assert not list(env.tmp.glob("does-not-exist.db*"))
    insert_elements(env.db, range(1, 4))
    converges(env)


def test_check_reports_a_missing_trigger(installed: Env) -> None:
    ok = installed.cli("check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    app_exec(installed.db, 'DROP TRIGGER "change_log:elements:delete"')
    result = installed.cli("check")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert "change_log:elements:delete" in lines[0] and "missing" in lines[0]
    installed.cli("install", check=True)  # idempotent repair
    assert installed.cli("check").returncode == 0
    insert_elements(installed.db, range(1, 4))
    app_exec(installed.db, "DELETE FROM elements WHERE id = 2")
    converges(installed)


def test_check_names_an_unreachable_node_and_a_refused_key(installed: Env) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = base_config(installed)
    config["typesense"]["nodes"] = [installed.typesense.url, dead]
    write_raw(installed, config)
    result = installed.cli("check")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and dead in lines[0], result.stdout
    assert installed.typesense.url + " " not in lines[0]

    config["typesense"]["nodes"] = [dead]
    write_raw(installed, config)
    result = installed.cli("check")
    assert result.returncode == 1 and dead in result.stdout

    config["typesense"]["nodes"] = [installed.typesense.url]
    config["typesense"]["api_key"] = "wrong-key-123456"
    write_raw(installed, config)
    result = installed.cli("check")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and installed.typesense.url in lines[0], result.stdout
    assert "refused" in lines[0] or "401" in lines[0]
    assert "wrong-key-123456" not in result.stdout + result.stderr
    insert_elements(installed.db, range(1, 4))
    converges(installed)


def test_config_location_before_after_env_and_default(installed: Env, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = str(installed.config_path)
    insert_elements(installed.db, range(1, 4))
    outputs = [
        run_cdc(["--config", path, "status", "--json"], cwd=elsewhere),
        run_cdc(["status", "--json", "--config", path], cwd=elsewhere),
        run_cdc(["status", "--config", path, "--json"], cwd=elsewhere),
        run_cdc(["status", "--json"], cwd=elsewhere, extra_env={"CDC_CONFIG": path}),
        run_cdc(["status", "--json"], cwd=installed.tmp),  # ./cdc.yaml
        # --config wins over $CDC_CONFIG
        run_cdc(["status", "--json", "--config", path], cwd=elsewhere,
                extra_env={"CDC_CONFIG": str(elsewhere / "nope.yaml")}),
    ]
    for result in outputs:
        assert result.returncode == 0, result.args
        assert json.loads(result.stdout)["backlog"] == 3
    missing = run_cdc(["status"], cwd=elsewhere)  # no ./cdc.yaml there
    assert missing.returncode == 2 and "cdc.yaml" in one_line_error(missing)
    # run --once with --config after the command, too
    assert run_cdc(["run", "--once", "--config", path], cwd=elsewhere).returncode == 0
    assert installed.documents("elements") == expected_elements(installed.db)
    assert installed.verify()["in_sync"] is True


def test_status_json_keys(installed: Env) -> None:
    insert_elements(installed.db, range(1, 6))
    status = installed.status()
    assert isinstance(status["backlog"], int) and status["backlog"] == 5
    assert isinstance(status["oldest_age_seconds"], float) and status["oldest_age_seconds"] >= 0
    assert isinstance(status["dead_letters"], int) and status["dead_letters"] == 0
    assert isinstance(status["tables"], dict) and status["tables"]["elements"]["backlog"] == 5
    installed.cli("run", "--once", check=True)
    status = installed.status()
    assert status["backlog"] == 0 and status["oldest_age_seconds"] is None
    assert status["tables"]["elements"]["backlog"] == 0
    text = installed.cli("status", check=True)
    assert "backlog: 0" in text.stdout
    report = installed.verify()
    assert report["in_sync"] is True
    assert {"in_sync", "missing", "extra", "stale", "tables"} <= set(report)
    assert installed.documents("elements") == expected_elements(installed.db)


def test_existing_collection_that_does_not_match_is_left_untouched(installed: Env) -> None:
    env = installed
    name = env.collection("elements")
    foreign = {
        "name": name,
        "fields": [{"name": "element_type", "type": "string"},
                   {"name": "element_id", "type": "string"},  # the table says int64
                   {"name": "sequence_number", "type": "int64"},
                   {"name": "version_number", "type": "int64"}],
    }
    assert env.http.post("/collections", json=foreign).status_code == 201
    doc = {"id": "1", "element_type": "theirs", "element_id": "x", "sequence_number": 1,
           "version_number": 1}
    assert env.http.post(f"/collections/{name}/documents", json=doc).status_code == 201
    before = env.http.get(f"/collections/{name}").json()
    insert_elements(env.db, range(1, 4))

    for command in (["run", "--once"], ["run"], ["backfill"]):
        result = env.cli(*command, timeout=60)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        message = result.stderr.strip().splitlines()[-1]
        assert name in message and "does not match" in message and "element_id" in message
    check = env.cli("check")
    assert check.returncode == 1 and name in check.stdout and "element_id" in check.stdout

    after = env.http.get(f"/collections/{name}").json()
    assert after["fields"] == before["fields"] and after["num_documents"] == 1
    assert all(a["name"] != name for a in env.http.get("/aliases").json()["aliases"])
    assert env.documents("elements") == {"1": doc}
    assert env.status()["backlog"] == 3  # nothing acknowledged

    # Dropping it is the documented way out: then the daemon creates its own and syncs.
    assert env.http.delete(f"/collections/{name}").status_code == 200
    env.cli("run", "--once", check=True)
    assert env.documents("elements") == expected_elements(env.db)
    assert env.verify()["in_sync"] is True
