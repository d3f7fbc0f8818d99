"""The admin API over real HTTP, in a real daemon process: JWT attack cases (401), roles (403),
and that pause/resume, verify/repair, backfill and dead-letter retry really act on the sync."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml
from support import (
    API_KEY,
    ELEMENTS_DDL,
    Env,
    app_exec,
    expected_elements,
    insert_elements,
    log_backlog,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

from cdc_daemon.localserver import LocalTypesense, free_port
from security.helpers import Keys, bearer, claims, lines_of, raw_token, sign_rs256, tamper

ISSUER = "https://auth.test"
AUDIENCE = "cdc-daemon"


@dataclass
class Admin:
    env: Env
    keys: Keys
    url: str
    http: httpx.Client

    def token(self, roles: list[str] | None, sub: str = "alice", **extra: Any) -> str:
        payload = claims(roles, sub=sub, iss=ISSUER, aud=AUDIENCE)
        payload.update(extra)
        return sign_rs256(self.keys, {k: v for k, v in payload.items() if v is not None})

    def call(self, method: str, path: str, token: str | None = None,
             body: dict[str, Any] | None = None) -> httpx.Response:
        headers = bearer(token) if token is not None else {}
        return self.http.request(method, self.url + path, headers=headers, json=body)


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory, typesense: LocalTypesense) -> Iterator[Admin]:
    tmp = tmp_path_factory.mktemp("admin")
    env = Env(tmp, typesense, "adm" + str(int(time.time() * 1000) % 10**9))
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    keys = Keys()
    (tmp / "jwt.pub").write_bytes(keys.public_pem)
    port = free_port()
    env.write_config(
        [{"table": "elements"}],
        admin={"listen": f"127.0.0.1:{port}",
               "jwt": {"algorithms": ["RS256"], "public_key_file": "jwt.pub",
                       "issuer": ISSUER, "audience": AUDIENCE}},
    )
    env.cli("install", check=True)
    insert_elements(env.db, range(1, 21))
    daemon = start_daemon_logged(env)
    http = httpx.Client(timeout=30)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert daemon.poll() is None, read_daemon_log(env)
        try:
            return http.get(url + "/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 30, message="admin API up")
    wait_for(lambda: env.documents("elements") == expected_elements(env.db), 30,
             message="initial rows synced")
    try:
        yield Admin(env, keys, url, http)
    finally:
        http.close()
        assert stop_process(daemon) == 0
        env.http.close()


def _attacks(admin: Admin) -> dict[str, str | None]:
    """Name → a token that must get 401 (None: no Authorization header at all)."""
    good = admin.token(["admin"])
    other = Keys()
    now = int(time.time())
    base = claims(["admin"], iss=ISSUER, aud=AUDIENCE)
    return {
        "no token": None,
        "empty bearer": "",
        "garbage": "not-a-jwt",
        "alg none": raw_token({"alg": "none", "typ": "JWT"}, base, None),
        "alg None spelled": raw_token({"alg": "None", "typ": "JWT"}, base, None),
        # HS/RS confusion: an HMAC over the token made with the *public* key as the secret.
        "HS256 with the public key as secret": raw_token(
            {"alg": "HS256", "typ": "JWT"}, base, admin.keys.public_pem
        ),
        "signed by another key": sign_rs256(other, base),
        "tampered payload": tamper(admin.token(["viewer"]), roles=["admin"]),
        "tampered signature": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "expired beyond leeway": admin.token(["admin"], exp=now - 120),
        "missing exp": admin.token(["admin"], exp=None),
        "nbf in the future": admin.token(["admin"], nbf=now + 300),
        "iat in the future": admin.token(["admin"], iat=now + 300),
        "wrong issuer": admin.token(["admin"], iss="https://evil.test"),
        "no issuer": admin.token(["admin"], iss=None),
        "wrong audience": admin.token(["admin"], aud="someone-else"),
        "RS512 not allowed": jwt.encode(base, admin.keys.private, algorithm="RS512"),
    }


ATTACKS = [
    "no token", "empty bearer", "garbage", "alg none", "alg None spelled",
    "HS256 with the public key as secret", "signed by another key", "tampered payload",
    "tampered signature", "expired beyond leeway", "missing exp", "nbf in the future",
    "iat in the future", "wrong issuer", "no issuer", "wrong audience", "RS512 not allowed",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_hostile_tokens_get_401(admin: Admin, attack: str) -> None:
    token = _attacks(admin)[attack]
    for method, path in (("GET", "/v1/status"), ("POST", "/v1/pause"), ("POST", "/v1/backfill")):
        if token is None:
            response = admin.http.request(method, admin.url + path)
        else:
            header = f"Bearer {token}" if token else "Bearer"
            response = admin.http.request(method, admin.url + path,
                                          headers={"Authorization": header})
        assert response.status_code == 401, (attack, path, response.text)
        assert response.headers["content-type"] == "application/json"
        assert "error" in response.json()
        assert response.headers.get("www-authenticate", "").startswith("Bearer")
    status = admin.call("GET", "/v1/status", admin.token(["viewer"]))
    assert status.json()["daemon"]["paused"] is False


def test_leeway_and_healthz(admin: Admin) -> None:
    now = int(time.time())
    assert admin.call("GET", "/v1/status", admin.token(["viewer"], exp=now - 10)).status_code == 200
    assert admin.call("GET", "/v1/status", admin.token(["viewer"], nbf=now + 10)).status_code == 200
    response = admin.http.get(admin.url + "/healthz")  # no auth
    assert response.status_code == 200 and response.json()["ok"] is True
    assert admin.http.get(admin.url + "/v1/nothing").status_code == 404
    assert admin.http.get(admin.url + "/v1/pause").status_code == 405


def test_roles(admin: Admin) -> None:
    viewer, operator, boss = (admin.token([r], sub=r) for r in ("viewer", "operator", "admin"))
    nobody = admin.token([], sub="nobody")
    odd_claim = sign_rs256(admin.keys, {**claims(None, sub="odd", iss=ISSUER, aud=AUDIENCE),
                                        "roles": "admin"})  # a string, not a list: no role
    status = admin.call("GET", "/v1/status", viewer)
    assert status.status_code == 200
    body = status.json()
    assert {"backlog", "oldest_age_seconds", "dead_letters", "tables"} <= body.keys()
    assert body["daemon"]["api_key_source"] == "static"
    assert API_KEY not in status.text
    for token in (nobody, odd_claim):
        response = admin.call("GET", "/v1/status", token)
        assert response.status_code == 403, response.text
    forbidden = [
        (viewer, "/v1/pause", None), (viewer, "/v1/resume", None),
        (viewer, "/v1/dead-letters/retry", None), (viewer, "/v1/verify", {"repair": False}),
        (operator, "/v1/verify", {"repair": True}), (operator, "/v1/backfill", None),
        (viewer, "/v1/backfill", {"table": "elements"}),
    ]
    for token, path, request_body in forbidden:
        response = admin.call("POST", path, token, request_body)
        assert response.status_code == 403, (path, response.text)
        assert "error" in response.json()
    retried = admin.call("POST", "/v1/dead-letters/retry", operator)
    assert retried.status_code == 200 and retried.json() == {"retried": 0}
    bad = admin.call("POST", "/v1/backfill", boss, {"table": "x; DROP TABLE elements"})
    assert bad.status_code == 400 and "not configured" in bad.json()["error"]
    not_json = admin.http.post(admin.url + "/v1/verify", headers=bearer(operator),
                               content=b"{nope")
    assert not_json.status_code == 400


def wait_for_a_loop_turn(admin: Admin, token: str, since: float) -> None:
    """Until the loop has beaten twice after `since`: an iteration begun after it has ended, so
    a running loop would have synced what was committed before `since`. A beat's time comes from
    the status' loop_idle_seconds (time.monotonic is one clock for all processes here): it lies
    between (asked - idle) and (answered - idle)."""
    first: list[float] = []  # the latest time the first beat seen after `since` can have been

    def turned() -> bool:
        asked = time.monotonic()
        idle = admin.call("GET", "/v1/status", token).json()["daemon"]["loop_idle_seconds"]
        earliest, latest = asked - idle, time.monotonic() - idle
        if earliest > since and not first:
            first.append(latest)
        return bool(first) and earliest > first[0]  # surely a later beat than the first one

    wait_for(turned, 30, message="a turn of the paused loop")


def test_pause_resume_verify_repair_backfill(admin: Admin) -> None:
    env = admin.env
    operator, boss = admin.token(["operator"], sub="op-1"), admin.token(["admin"], sub="boss-1")
    assert admin.call("POST", "/v1/pause", operator).json() == {"paused": True}
    insert_elements(env.db, range(100, 110), comment="while paused")
    wait_for_a_loop_turn(admin, operator, since=time.monotonic())
    assert log_backlog(env.db) >= 10
    assert "100" not in env.documents("elements")
    assert admin.call("GET", "/v1/status", operator).json()["daemon"]["paused"] is True
    assert admin.call("POST", "/v1/resume", operator).json() == {"paused": False}
    wait_for(lambda: env.documents("elements") == expected_elements(env.db), 30,
             message="synced after resume")

    # A document removed behind the daemon's back: verify sees it, repair (admin) fixes it.
    env.http.delete(f"/collections/{env.collection('elements')}/documents/5").raise_for_status()
    result = admin.call("POST", "/v1/verify", operator, {"repair": False})
    assert result.status_code == 200, result.text
    assert result.json()["in_sync"] is False and result.json()["missing"] == 1
    repaired = admin.call("POST", "/v1/verify", boss, {"repair": True})
    assert repaired.status_code == 200 and repaired.json()["repair_queued"] == 1
    wait_for(lambda: env.documents("elements") == expected_elements(env.db), 30,
             message="repaired by the loop")
    assert admin.call("POST", "/v1/verify", operator, {}).json()["in_sync"] is True

    # Backfill: started by the API, paged through the log by the daemon's own loop.
    env.http.delete(f"/collections/{env.collection('elements')}/documents/7").raise_for_status()
    started = admin.call("POST", "/v1/backfill", boss, {"table": "elements"})
    assert started.status_code == 202 and started.json()["started"] == ["elements"]
    wait_for(lambda: env.documents("elements") == expected_elements(env.db), 30,
             message="backfilled")
    wait_for(lambda: "backfill_logged_rows" not in admin.call(
        "GET", "/v1/status", boss).json()["tables"].get("elements", {}), 30)

    log = read_daemon_log(env)
    for line in log.splitlines():  # uvicorn's own lines too: JSON like every other line
        assert line.startswith("{") and line.endswith("}"), line
    actions = {(line.get("action"), line.get("sub")) for line in lines_of(log)
               if line.get("event") == "admin action"}
    assert {("pause", "op-1"), ("resume", "op-1"), ("verify", "op-1"), ("verify", "boss-1"),
            ("backfill", "boss-1")} <= actions
    assert operator not in log and boss not in log  # tokens are never logged
    assert any(line.get("event") == "admin request forbidden" for line in lines_of(log))


def test_non_loopback_without_jwt_is_refused(tmp_path: Path, typesense: LocalTypesense) -> None:
    env = Env(tmp_path, typesense, "nolo")
    app_exec(env.db, ELEMENTS_DDL)
    env.write_config([{"table": "elements"}], admin={"listen": f"0.0.0.0:{free_port()}"})
    for command in ("run", "check"):
        result = env.cli(command, timeout=30)
        assert result.returncode == 2, result.stderr
        assert "admin.listen" in result.stderr and "loopback" in result.stderr
        assert "Traceback" not in result.stderr
    # A jwt section whose key can't be used: also a config error naming the key.
    (tmp_path / "not-a-key.pem").write_text("hello")
    config = yaml.safe_load(env.config_path.read_text())
    config["admin"]["jwt"] = {"algorithms": ["RS256"], "public_key_file": "not-a-key.pem"}
    env.config_path.write_text(yaml.safe_dump(config))
    env.cli("install", check=True)
    result = env.cli("run", timeout=30)
    assert result.returncode == 2, result.stderr
    assert "admin.jwt.public_key_file" in result.stderr and "Traceback" not in result.stderr
    env.http.close()
