"""SIGHUP applies what it says it applies (issue 13, item 2), against a real Typesense, the app as
a separate stdlib-sqlite3 process and the daemon as a real `run` subprocess:

- a JWT key rotation by reload takes effect in the admin API (real HTTP): the revoked key's
  tokens get 401, the new key's tokens work; issuer, audience and roles_claim too;
- what can only change at a restart (admin.listen, metrics.listen, log_table) refuses the whole
  reload with one error line naming the key, and the running config stays;
- a reload that changes what the documents are brings each collection to the new truth: `where`
  narrowed, `soft_delete` added, `id_prefix` added, the collection renamed (the new one filled,
  ours dropped), fields renamed or excluded; nothing is left orphaned and verify agrees.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
import yaml
from security.helpers import Keys, bearer, claims, sign_rs256
from support import (
    Env,
    app_exec,
    app_write,
    collection_documents,
    db_rows,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import free_port

TABLE_DDL = (
    'CREATE TABLE "{name}" (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL,'
    " n INTEGER NOT NULL, hidden INTEGER NOT NULL DEFAULT 0)"
)
ROWS = 100


def _make_table(env: Env, name: str) -> None:
    app_exec(env.db, TABLE_DDL.format(name=name))


def _fill(env: Env, name: str) -> None:
    """ROWS rows; 30 of them hidden (for soft_delete), every other one with an even n."""
    app_write(env.db, [[(
        f'INSERT INTO "{name}" (id, title, body, n, hidden) VALUES (?, ?, ?, ?, ?)',
        [i, f"title {i}", f"body {i}", i, 1 if i % 10 < 3 else 0],
    ) for i in range(1, ROWS + 1)]])


def _ids(env: Env, name: str, where: str = "1", prefix: str = "") -> set[str]:
    rows = db_rows(env.db, f'SELECT id FROM "{name}" WHERE {where}')
    return {f"{prefix}{row[0]}" for row in rows}


def _doc_ids(env: Env, collection: str) -> set[str]:
    return set(collection_documents(env.http, collection))


def _reload(env: Env, daemon: subprocess.Popen[str], tables: list[dict[str, Any]],
            **overrides: Any) -> None:
    """Write the new config, send SIGHUP, wait until the daemon answered it (applied or not)."""
    before = _answers(read_daemon_log(env))
    env.write_config(tables, **overrides)
    daemon.send_signal(signal.SIGHUP)

    def answered() -> bool:
        assert daemon.poll() is None, read_daemon_log(env)
        return _answers(read_daemon_log(env)) > before

    wait_for(answered, 60, message="the reload answered")


def _answers(text: str) -> int:
    """SIGHUPs answered so far: applied or refused (JSON or console log lines)."""
    return text.count("config reloaded") + text.count("reload failed; keeping the previous config")


def _events(env: Env, event: str) -> list[dict[str, Any]]:
    found = []
    for line in read_daemon_log(env).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


@pytest.fixture
def daemons(env: Env) -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        stop_process(process)


# -- what the documents are --------------------------------------------------------------------


def test_reload_brings_collections_to_the_new_truth(env: Env, daemons: list[Any]) -> None:
    """One reload, four tables: where narrowed, soft_delete added, id_prefix added, collection
    renamed. Before the fix: 50 and 30 documents stayed, 100 unprefixed documents stayed (and
    verify ignored them), and the renamed collection got only the rows written afterwards."""
    for name in ("a", "b", "c", "d"):
        _make_table(env, name)
    tables = [{"table": name} for name in ("a", "b", "c", "d")]
    env.write_config(tables)
    env.cli("install", check=True)
    for name in ("a", "b", "c", "d"):
        _fill(env, name)
    daemon = start_daemon_logged(env)
    daemons.append(daemon)
    for name in ("a", "b", "c", "d"):
        wait_for(lambda n=name: _doc_ids(env, env.collection(n)) == _ids(env, n), 60,
                 message=f"{name}: initial sync")
    old_d = env.collection("d")
    old_d_physical = env.http.get(f"/aliases/{old_d}").json()["collection_name"]
    renamed = env.collection("d") + "_renamed"

    _reload(env, daemon, [
        {"table": "a", "where": "n % 2 = 0"},
        {"table": "b", "soft_delete": "hidden"},
        {"table": "c", "id_prefix": "h1:"},
        {"table": "d", "collection": renamed},
    ])
    assert _events(env, "config reloaded"), read_daemon_log(env)
    # A write after the reload flows too (the renamed collection: the regression case).
    app_exec(env.db, "UPDATE d SET title = 'after reload' WHERE id = 5")

    expected = {
        env.collection("a"): _ids(env, "a", "n % 2 = 0"),
        env.collection("b"): _ids(env, "b", "hidden = 0"),
        env.collection("c"): _ids(env, "c", prefix="h1:"),
        renamed: _ids(env, "d"),
    }
    for collection, ids in expected.items():
        wait_for(lambda c=collection, i=ids: _doc_ids(env, c) == i, 120,
                 message=f"{collection}: the new truth ({len(ids)} documents)")
    assert len(expected[env.collection("a")]) == 50 and len(expected[env.collection("b")]) == 70
    # The old collection of d (ours): alias and collection gone.
    wait_for(lambda: env.http.get(f"/aliases/{old_d}").status_code == 404, 60,
             message="the old alias dropped")
    wait_for(lambda: env.http.get(f"/collections/{old_d_physical}").status_code == 404, 60,
             message="the old collection dropped")
    docs = env.http.get(f"/collections/{renamed}/documents/5").json()
    assert docs["title"] == "after reload"
    result = env.verify()
    assert result["in_sync"] is True, result
    stop_process(daemon)
    assert "Traceback" not in read_daemon_log(env)


def test_reload_of_fields_include_exclude_rename(env: Env, daemons: list[Any]) -> None:
    """`rename` swapping two fields of one type changes no schema but every document;
    `exclude` and `include` change the schema (rebuilt behind the alias). Every document ends
    up as the new mapping makes it."""
    for name in ("e", "f", "g"):
        _make_table(env, name)
    env.write_config([{"table": "e"}, {"table": "f"}, {"table": "g"}])
    env.cli("install", check=True)
    for name in ("e", "f", "g"):
        _fill(env, name)
    daemon = start_daemon_logged(env)
    daemons.append(daemon)
    for name in ("e", "f", "g"):
        wait_for(lambda n=name: _doc_ids(env, env.collection(n)) == _ids(env, n), 60,
                 message=f"{name}: initial sync")

    _reload(env, daemon, [
        {"table": "e", "rename": {"title": "body", "body": "title"}},
        {"table": "f", "exclude": ["body"]},
        {"table": "g", "include": ["id", "title", "n"]},
    ])
    assert _events(env, "config reloaded"), read_daemon_log(env)

    def swapped() -> bool:
        docs = env.documents("e")
        return len(docs) == ROWS and all(
            d["title"] == f"body {d['id']}" and d["body"] == f"title {d['id']}"
            for d in docs.values()
        )

    wait_for(swapped, 120, message="e: every document with the fields swapped")
    wait_for(lambda: len(env.documents("f")) == ROWS
             and all("body" not in d for d in env.documents("f").values()), 120,
             message="f: body excluded everywhere")
    wait_for(lambda: len(env.documents("g")) == ROWS
             and all(set(d) == {"id", "title", "n"} for d in env.documents("g").values()), 120,
             message="g: only the included columns")
    result = env.verify()
    assert result["in_sync"] is True, result


# -- the other sections ------------------------------------------------------------------------


ISSUER, AUDIENCE = "https://auth.one", "cdc-one"


def _admin_config(port: int, **jwt_section: Any) -> dict[str, Any]:
    return {"listen": f"127.0.0.1:{port}", "jwt": {"algorithms": ["RS256"], **jwt_section}}


def _jwks(keys: Keys, kid: str) -> dict[str, Any]:
    public = jwt.algorithms.RSAAlgorithm.to_jwk(keys.private.public_key(), as_dict=True)
    return {"keys": [{**public, "kid": kid, "alg": "RS256", "use": "sig"}]}


def test_jwt_key_rotation_by_reload(env: Env, daemons: list[Any]) -> None:
    """A new public key file, issuer, audience and roles_claim by SIGHUP: the revoked key's
    tokens get 401 at once, the new key's tokens work. Then a switch to a JWKS file. Before the
    fix the admin API kept the verifier it started with."""
    _make_table(env, "items")
    old, new, third = Keys(), Keys(), Keys()
    (env.tmp / "jwt.pub").write_bytes(old.public_pem)
    port = free_port()
    admin = _admin_config(port, public_key_file="jwt.pub", issuer=ISSUER, audience=AUDIENCE)
    env.write_config([{"table": "items"}], admin=admin)
    env.cli("install", check=True)
    daemon = start_daemon_logged(env)
    daemons.append(daemon)
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(timeout=30)

    def status(token: str) -> int:
        return http.get(url + "/v1/status", headers=bearer(token)).status_code

    def token(keys: Keys, iss: str = ISSUER, aud: str = AUDIENCE, claim: str = "roles",
              kid: str | None = None) -> str:
        payload = claims(None, iss=iss, aud=aud)
        payload[claim] = ["viewer"]
        return sign_rs256(keys, payload, **({"kid": kid} if kid else {}))

    def up() -> bool:
        assert daemon.poll() is None, read_daemon_log(env)
        try:
            return http.get(url + "/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 60, message="admin API up")
        assert status(token(old)) == 200
        assert status(token(new)) == 401

        # Rotation: the file replaced in place, and a new issuer, audience and roles claim.
        (env.tmp / "jwt.pub").write_bytes(new.public_pem)
        rotated = _admin_config(port, public_key_file="jwt.pub", issuer="https://auth.two",
                                audience="cdc-two", roles_claim="groups")
        _reload(env, daemon, [{"table": "items"}], admin=rotated)
        assert _events(env, "config reloaded"), read_daemon_log(env)
        assert status(token(old)) == 401  # the revoked key
        assert status(token(old, "https://auth.two", "cdc-two", "groups")) == 401
        assert status(token(new)) == 401  # old issuer and audience
        assert status(token(new, "https://auth.two", "cdc-two")) == 403  # roles in `roles`: none
        assert status(token(new, "https://auth.two", "cdc-two", "groups")) == 200
        paused = http.post(url + "/v1/pause",
                           headers=bearer(token(old, "https://auth.two", "cdc-two", "groups")))
        assert paused.status_code == 401

        # Another key source: a JWKS file, the key picked by kid.
        (env.tmp / "jwks.json").write_text(json.dumps(_jwks(third, "k3")))
        _reload(env, daemon, [{"table": "items"}],
                admin=_admin_config(port, jwks_file="jwks.json"))
        assert len(_events(env, "config reloaded")) == 2, read_daemon_log(env)
        assert status(sign_rs256(new, claims(["viewer"]))) == 401
        assert status(sign_rs256(third, claims(["viewer"]), kid="k3")) == 200

        # A key file that does not parse refuses the reload; the running keys stay.
        (env.tmp / "broken.pub").write_text("not a key")
        _reload(env, daemon, [{"table": "items"}],
                admin=_admin_config(port, public_key_file="broken.pub"))
        refused = _events(env, "reload failed; keeping the previous config")
        assert refused and refused[-1]["error"].startswith("admin.jwt.public_key_file:"), refused
        assert status(sign_rs256(third, claims(["viewer"]), kid="k3")) == 200
    finally:
        http.close()
    assert "Traceback" not in read_daemon_log(env)


def test_restart_only_keys_refuse_the_reload(env: Env, daemons: list[Any]) -> None:
    """admin.listen, metrics.listen and log_table can't change live: the whole reload is
    refused with one line naming the key, and nothing of it is applied (here: a `where` in the
    same file). A good reload afterwards still applies."""
    _make_table(env, "items")
    admin_port, metrics_port = free_port(), free_port()
    sections = {"admin": {"listen": f"127.0.0.1:{admin_port}"},
                "metrics": {"listen": f"127.0.0.1:{metrics_port}"}}
    env.write_config([{"table": "items"}], **sections)
    env.cli("install", check=True)
    _fill(env, "items")
    daemon = start_daemon_logged(env)
    daemons.append(daemon)
    wait_for(lambda: _doc_ids(env, env.collection("items")) == _ids(env, "items"), 60,
             message="initial sync")
    narrowed = [{"table": "items", "where": "n <= 10"}]
    changes = {
        "admin.listen": {**sections, "admin": {"listen": f"127.0.0.1:{free_port()}"}},
        "metrics.listen": {**sections, "metrics": {"listen": f"127.0.0.1:{free_port()}"}},
        "log_table": {**sections, "log_table": "other_log"},
    }
    for key, overrides in changes.items():
        _reload(env, daemon, narrowed, **overrides)
        refused = _events(env, "reload failed; keeping the previous config")
        assert refused and refused[-1]["error"] == (
            f"{key}: cannot change on reload; restart the service"
        ), read_daemon_log(env)
    assert not _events(env, "config reloaded")
    assert len(_doc_ids(env, env.collection("items"))) == ROWS  # the `where` was not applied
    assert httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).status_code == 200

    _reload(env, daemon, narrowed, **sections)
    assert _events(env, "config reloaded"), read_daemon_log(env)
    wait_for(lambda: _doc_ids(env, env.collection("items")) == _ids(env, "items", "n <= 10"),
             120, message="the where applied by a good reload")


def test_typesense_sync_and_logging_are_applied(env: Env, daemons: list[Any]) -> None:
    """typesense (key source, timeout, nodes), sync and logging on reload: the reload names
    every key it applied; a new key file is used (the old key deleted in Typesense, writes still
    flow); the log switches to the console format."""
    from security.helpers import create_scoped_key, delete_key

    _make_table(env, "items")
    first_id, first = create_scoped_key(env.typesense, "reload test: first")
    second_id, second = create_scoped_key(env.typesense, "reload test: second")
    (env.tmp / "ts.key").write_text(first + "\n")
    typesense = {"nodes": [env.typesense.url], "api_key_file": "ts.key", "timeout": 10}
    config = {"typesense": typesense}
    env.write_config([{"table": "items"}], **config)
    # write_config merges typesense: drop the inline key it starts from.
    raw = yaml.safe_load(env.config_path.read_text())
    raw["typesense"].pop("api_key")
    env.config_path.write_text(yaml.safe_dump(raw))
    env.cli("install", check=True)
    daemon = start_daemon_logged(env)
    daemons.append(daemon)
    app_exec(env.db, "INSERT INTO items VALUES (1, 't', 'b', 1, 0)")
    wait_for(lambda: _doc_ids(env, env.collection("items")) == {"1"}, 60, message="synced")

    (env.tmp / "ts2.key").write_text(second)
    raw["typesense"] = {"nodes": [env.typesense.url + "/"], "api_key_file": "ts2.key",
                        "timeout": 20}
    raw["sync"] = {"batch_size": 50, "poll_interval": 0.1, "max_attempts": 5}
    raw["logging"] = {"format": "console", "level": "info"}
    env.config_path.write_text(yaml.safe_dump(raw))
    daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in read_daemon_log(env), 60, message="reloaded")
    line = next(x for x in read_daemon_log(env).splitlines() if "config reloaded" in x)
    assert not line.startswith("{")  # the console format, applied
    for key in ("typesense.api_key_file", "typesense.timeout", "sync.batch_size",
                "sync.poll_interval", "sync.max_attempts", "logging.format"):
        assert key in line, line
    try:
        delete_key(env.typesense, first_id)
        app_exec(env.db, "INSERT INTO items VALUES (2, 't', 'b', 2, 0)")
        wait_for(lambda: _doc_ids(env, env.collection("items")) == {"1", "2"}, 60,
                 message="synced with the new key")
    finally:
        delete_key(env.typesense, second_id)
    assert "Traceback" not in read_daemon_log(env)


def test_verify_counts_an_earlier_prefix_until_it_is_cleared(env: Env, daemons: list[Any]) -> None:
    """`id_prefix` added by reload while the loop is paused: the old, unprefixed documents are
    still there, and verify counts them (before the fix it skipped them as another host's). Once
    resumed they are deleted; a document of another host (`h2:1`, which a TEXT-typed key could
    also spell) stays."""
    _make_table(env, "c")
    port = free_port()
    admin = {"listen": f"127.0.0.1:{port}"}  # loopback without jwt: local callers are admin
    env.write_config([{"table": "c"}], admin=admin)
    env.cli("install", check=True)
    app_write(env.db, [[(
        "INSERT INTO c (id, title, body, n, hidden) VALUES (?, ?, ?, ?, 0)",
        [i, f"title {i}", f"body {i}", i],
    ) for i in range(1, 21)]])
    daemon = start_daemon_logged(env)
    daemons.append(daemon)
    alias = env.collection("c")
    wait_for(lambda: _doc_ids(env, alias) == _ids(env, "c"), 60, message="initial sync")
    other = {"id": "h2:1", "title": "another host", "body": "b", "n": 1, "hidden": 0}
    env.http.post(f"/collections/{alias}/documents", json=other).raise_for_status()
    url = f"http://127.0.0.1:{port}"
    assert httpx.post(url + "/v1/pause", timeout=30).status_code == 200

    _reload(env, daemon, [{"table": "c", "id_prefix": "h1:"}], admin=admin)
    assert _events(env, "config reloaded"), read_daemon_log(env)
    result = env.verify()
    table = result["tables"]["c"]
    assert result["in_sync"] is False
    assert table["extra"] == 20 and table["missing"] == 20, table
    assert env.status()["tables"]["c"]["leftovers"] == [f"{alias} (id_prefix '')"]

    assert httpx.post(url + "/v1/resume", timeout=30).status_code == 200
    expected = _ids(env, "c", prefix="h1:") | {"h2:1"}
    wait_for(lambda: _doc_ids(env, alias) == expected, 120,
             message="the old documents deleted, the other host's kept")
    wait_for(lambda: "leftovers" not in env.status()["tables"]["c"], 60,
             message="nothing left to clear")
    assert env.verify()["in_sync"] is True


def test_config_changed_while_stopped_is_applied_at_start(env: Env) -> None:
    """The same comparison at start (`run --once` here): the mappings the documents were made by
    are recorded, so a config edited while no daemon ran (then a restart, not a reload) brings
    the collections to the new truth too."""
    for name in ("a", "d"):
        _make_table(env, name)
    env.write_config([{"table": "a"}, {"table": "d"}])
    env.cli("install", check=True)
    for name in ("a", "d"):
        _fill(env, name)
    env.cli("run", "--once", check=True)
    assert _doc_ids(env, env.collection("a")) == _ids(env, "a")
    renamed = env.collection("d") + "_renamed"
    env.write_config([{"table": "a", "where": "n % 2 = 0"}, {"table": "d", "collection": renamed}])
    env.cli("run", "--once", check=True, timeout=180)
    assert _doc_ids(env, env.collection("a")) == _ids(env, "a", "n % 2 = 0")
    assert _doc_ids(env, renamed) == _ids(env, "d")
    assert env.http.get(f"/aliases/{env.collection('d')}").status_code == 404
    assert env.verify()["in_sync"] is True


def test_a_config_error_refuses_the_reload(env: Env, daemons: list[Any]) -> None:
    """A `where` typo (no such column) or a table that does not exist, by SIGHUP: the reload is
    refused as a whole naming the key, as `check` and start refuse it, and the running config
    keeps syncing both tables. Before the fix the typo was "reloaded" and its table skipped."""
    tables: list[dict[str, Any]] = [{"table": "items"},
                                    {"table": "other", "where": "body IS NOT NULL"}]
    for name in ("items", "other"):
        _make_table(env, name)
    env.write_config(tables)
    env.cli("install", check=True)
    for name in ("items", "other"):
        _fill(env, name)
    daemon = start_daemon_logged(env)
    daemons.append(daemon)
    wait_for(lambda: all(_doc_ids(env, env.collection(t)) == _ids(env, t)
                         for t in ("items", "other")), 60, message="initial sync")

    typo = [tables[0], {"table": "other", "where": "bdy IS NOT NULL"}]
    _reload(env, daemon, typo)
    refused = _events(env, "reload failed; keeping the previous config")
    assert refused and refused[-1]["error"].startswith("tables[1].where:"), read_daemon_log(env)
    assert "bdy" in refused[-1]["error"]
    _reload(env, daemon, [*tables, {"table": "missing"}])
    refused = _events(env, "reload failed; keeping the previous config")
    assert len(refused) == 2 and refused[-1]["error"].startswith("tables[2].table:"), refused
    assert not _events(env, "config reloaded")
    assert not [line for line in read_daemon_log(env).splitlines() if "table skipped" in line]

    # The previous config still syncs both tables.
    app_exec(env.db, "UPDATE items SET title = 'after'", "UPDATE other SET title = 'after'")
    for table in ("items", "other"):
        wait_for(lambda t=table: {d["title"] for d in
                                  collection_documents(env.http, env.collection(t)).values()}
                 == {"after"}, 60, message=f"{table} still syncing")
    assert daemon.poll() is None
