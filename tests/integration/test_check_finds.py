"""`check` finds what `run` would refuse or what Typesense would reject (issue 13, items 4 and 7):
a `where` that does not compile, JWT key problems, listen addresses in use, and field overrides
the table's values can't satisfy; `backfill` and `run --once` report rejected documents."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support import (
    ELEMENTS_DDL,
    Env,
    app_exec,
    app_write,
    db_scalar,
    insert_elements,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.config import FieldType
from cdc_daemon.localserver import free_port
from cdc_daemon.preflight import value_problem
from cdc_daemon.sink import encode_document


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def set_config(env: Env, **changes: Any) -> None:
    config = yaml.safe_load(env.config_path.read_text())
    config.update(changes)
    env.config_path.write_text(yaml.safe_dump(config))


@pytest.fixture
def elements(env: Env) -> Env:
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([{"table": "elements"}])
    env.cli("install", check=True)
    insert_elements(env.db, range(1, 4))
    return env


# -- item 4: a `where` is compiled by check and at start ------------------------------------------


def test_a_where_with_a_typo_is_refused_naming_the_key(elements: Env) -> None:
    env = elements
    env.write_config([{"table": "elements", "where": "commnet IS NOT NULL"}])
    for command in (["check"], ["run", "--once"], ["backfill"], ["install"]):
        result = env.cli(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        line = one_line(result.stderr)
        assert "tables[0].where" in line and "commnet" in line, line
        assert "Traceback" not in result.stderr
    assert db_scalar(env.db, "SELECT COUNT(*) FROM change_log") == 3  # nothing read or sent


def test_a_where_that_is_more_than_a_row_filter_is_refused_and_never_run(elements: Env) -> None:
    env = elements
    env.write_config([{"table": "elements", "where": "1) ; DELETE FROM elements; SELECT (1"}])
    for command in (["check"], ["run", "--once"]):
        result = env.cli(*command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "tables[0].where" in one_line(result.stderr)
    status = env.status()  # shows it, and does not fail
    assert "tables[0].where" in status["tables"]["elements"]["problem"]
    assert db_scalar(env.db, "SELECT COUNT(*) FROM elements") == 3


# -- item 4: check finds what run refuses at start -------------------------------------------------


def pem_public_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(("jwt", "environ", "expected"), [
    ({"algorithms": ["RS256"], "public_key_file": "missing.pem"}, {},
     "admin.jwt.public_key_file: cannot read"),
    ({"algorithms": ["RS256"], "public_key_file": "garbage.pem"}, {},
     "admin.jwt.public_key_file: "),
    ({"algorithms": ["HS256"], "secret_env": "CDC_TEST_JWT_SECRET"},
     {"CDC_TEST_JWT_SECRET": "short-secret"}, "admin.jwt.secret_env: "),
    ({"algorithms": ["HS256"], "secret_env": "CDC_TEST_JWT_SECRET_UNSET"}, {},
     "admin.jwt.secret_env: environment variable CDC_TEST_JWT_SECRET_UNSET is not set"),
    ({"algorithms": ["ES256"], "public_key_file": "rsa.pem"}, {},
     "admin.jwt.public_key_file: a "),
])
def test_check_reports_admin_jwt_problems_that_run_refuses(
    elements: Env, jwt: dict[str, Any], environ: dict[str, str], expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = elements
    (env.tmp / "garbage.pem").write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n")
    (env.tmp / "rsa.pem").write_bytes(pem_public_key())
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    set_config(env, admin={"listen": f"127.0.0.1:{free_port()}", "jwt": jwt})
    run = env.cli("run", "--once")
    assert run.returncode == 2 and expected in run.stderr, run.stderr  # what run refuses ...
    check = env.cli("check")
    assert check.returncode == 2, (check.stdout, check.stderr)  # ... check finds
    assert expected in one_line(check.stdout), check.stdout
    assert "Traceback" not in check.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("key", ["metrics", "admin"])
def test_check_reports_a_listen_address_in_use(elements: Env, busy_port: int, key: str) -> None:
    env = elements
    set_config(env, **{key: {"listen": f"127.0.0.1:{busy_port}"}})
    assert env.cli("run", "--once").returncode == 1  # what run refuses ...
    check = env.cli("check")
    assert check.returncode == 1, (check.stdout, check.stderr)  # ... check finds
    line = one_line(check.stdout)
    assert line.startswith(f"{key}.listen: ") and str(busy_port) in line, line


def test_check_reports_a_metrics_address_that_is_not_host_port(elements: Env) -> None:
    env = elements
    set_config(env, metrics={"listen": "9187"})
    assert env.cli("run", "--once").returncode == 2
    check = env.cli("check")
    assert check.returncode == 2, (check.stdout, check.stderr)
    assert one_line(check.stdout).startswith("metrics.listen: '9187' is not HOST:PORT")


def test_check_does_not_count_the_running_daemons_own_ports(elements: Env) -> None:
    env = elements
    port, admin_port = free_port(), free_port()
    set_config(env, metrics={"listen": f"127.0.0.1:{port}"},
               admin={"listen": f"127.0.0.1:{admin_port}"})
    daemon = start_daemon_logged(env)
    try:

        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(serving, timeout=60, message="the daemon's metrics")
        check = env.cli("check")
        assert check.returncode == 0, (check.stdout, check.stderr)
    finally:
        assert stop_process(daemon, timeout=30) == 0


# -- item 7: values the collection will reject -----------------------------------------------------


ITEMS_DDL = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT NOT NULL, tags TEXT, price TEXT,"
    " stock INTEGER, note TEXT)"
)


@pytest.fixture
def items(env: Env) -> Env:
    """500 rows whose title is words: `title: {type: int32}` can never be satisfied."""
    app_exec(env.db, "PRAGMA journal_mode=WAL", ITEMS_DDL)
    app_write(env.db, [[(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)"
        " INSERT INTO items (id, title, tags, price, stock) SELECT i, 'word ' || i, 'a,b', '12.5',"
        " i FROM n", [],
    )]])
    env.write_config([{"table": "items", "fields": {"title": {"type": "int32"}}}])
    env.cli("install", check=True)
    return env


def test_check_names_fields_typesense_will_reject(items: Env) -> None:
    env = items
    env.write_config([{
        "table": "items",
        "fields": {"title": {"type": "int32"}, "tags": {"type": "string[]"},
                   "price": {"type": "float"}, "stock": {"type": "int32"},
                   "note": {"optional": False}},
    }])
    check = env.cli("check")
    assert check.returncode == 1, (check.stdout, check.stderr)
    lines = check.stdout.strip().splitlines()
    by_key = {line.split(":", 1)[0]: line for line in lines}
    assert set(by_key) == {
        "tables[0].fields.title", "tables[0].fields.tags", "tables[0].fields.price",
        "tables[0].fields.note",
    }, lines
    title = by_key["tables[0].fields.title"]
    assert "'items'" in title and "int32" in title and "100 of 100 sampled rows" in title, title
    assert "key 1" in title and "'word 1'" in title, title
    assert "not valid JSON for string[]" in by_key["tables[0].fields.tags"]  # documents.py's
    assert "'12.5'" in by_key["tables[0].fields.price"]
    assert "field 'note' is NULL but not optional" in by_key["tables[0].fields.note"]
    # A config the values satisfy: ok again.
    env.write_config([{"table": "items", "fields": {"stock": {"type": "int32"}}}])
    assert env.cli("check").returncode == 0


def test_backfill_reports_rejected_documents_and_exits_1(items: Env) -> None:
    env = items
    result = env.cli("backfill")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "items: backfilled 500 rows" in result.stdout
    line = one_line("\n".join(x for x in result.stderr.splitlines() if not x.startswith("{")))
    assert "500 documents rejected" in line and "must be an int32" in line, line
    assert "items" in line
    assert not env.documents("items")


def test_run_once_reports_rejected_documents_and_exits_1(items: Env) -> None:
    env = items
    app_exec(env.db, "UPDATE items SET stock = stock + 1 WHERE id <= 20")
    result = env.cli("run", "--once")
    assert result.returncode == 1, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    rejected = [e for e in events if e.get("event") == "documents rejected"]
    assert len(rejected) == 1, result.stderr
    assert rejected[0]["count"] == 20 and "must be an int32" in rejected[0]["first"]
    assert rejected[0]["level"] == "error"


def test_run_once_still_exits_0_when_every_document_is_accepted(items: Env) -> None:
    env = items
    env.write_config([{"table": "items"}])
    app_exec(env.db, "UPDATE items SET stock = stock + 1 WHERE id <= 20")
    result = env.cli("run", "--once")
    assert result.returncode == 0, result.stderr
    assert len(env.documents("items")) == 20


# -- the predictor against the real server ------------------------------------------------------


VALUES: list[Any] = [
    "text", "42", "", 7, -(2**31), 2**40, 1.5, 2.0, 0.0, True, False, ["a"], [1, 2], [1.5],
    [True], ["a", 1], [], {"a": 1}, [[1]], [48.8, 2.3],
]
TYPES: list[FieldType] = [
    "string", "int32", "int64", "float", "bool", "string[]", "int32[]", "int64[]", "float[]",
    "bool[]", "geopoint",
]


def test_the_predictor_agrees_with_typesense(env: Env) -> None:
    """Every (field type, value) pair: value_problem says "rejected" exactly when the bundled
    Typesense rejects the document (dirty_values=reject, as the daemon imports)."""
    name = env.collection("predictor")
    fields = [{"name": f"f_{i}", "type": t, "optional": True} for i, t in enumerate(TYPES)]
    created = env.http.post("/collections", json={"name": name, "fields": fields})
    assert created.status_code == 201, created.text
    try:
        documents, expected = [], []
        for i, field_type in enumerate(TYPES):
            for j, value in enumerate(VALUES):
                documents.append({"id": f"{i}-{j}", f"f_{i}": value})
                expected.append(value_problem(f"f_{i}", field_type, value))
        body = "\n".join(encode_document(d) for d in documents)
        answer = env.http.post(
            f"/collections/{name}/documents/import?action=upsert&dirty_values=reject",
            content=body.encode(),
        )
        results = [json.loads(line) for line in answer.text.splitlines()]
        assert len(results) == len(documents)
        disagreements = [
            (TYPES[int(d["id"].split("-")[0])], d, r.get("error"), p)
            for d, r, p in zip(documents, results, expected, strict=True)
            if r["success"] != (p is None)
        ]
        assert not disagreements, disagreements
        for result, problem in zip(results, expected, strict=True):
            if problem is not None:  # the same reason, in Typesense's words
                assert result["error"] in problem, (result, problem)
    finally:
        env.http.delete(f"/collections/{name}")
