"""The admin API: a small Starlette app, served by uvicorn on a thread of the daemon process.

| method, path | role |
| GET /healthz | none: 200 while the sync loop is alive (it beat recently), else 503 |
| GET /v1/status | viewer, operator, admin |
| POST /v1/pause, /v1/resume | operator, admin |
| POST /v1/dead-letters/retry (body {"table": name} optional) | operator, admin |
| POST /v1/verify (body {"repair": false, "table": name}) | operator, admin; repair: admin |
| POST /v1/backfill (body {"table": name} optional) | admin |

A `databases:` daemon serves many databases: each route then takes a `database` (the query
parameter `?database=NAME` for status, a body key for the others) to act on that one only;
without it, on all (status and verify answer {"databases": {NAME: ...}} with the totals).

The one-processor rule holds: only the daemon's loop syncs (sends the log's changes, acknowledges
them). Requests run on worker threads (run_in_threadpool), each on a SQLite connection and
objects of its own (wiring.DaemonControls): verify compares; repair and backfill log keys (as
`verify --repair` and `backfill` do) and the loop syncs them. The one document write a request
makes itself: repair deletes stray documents, ids no row of the table can produce (the loop never
writes those; Verifier.repair). Every action is logged with the token's `sub`. With no
`admin.jwt` (allowed on loopback only, config.py) every local caller is treated as admin.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cdc_daemon.auth import JwtVerifier, Principal, Unauthorized
from cdc_daemon.control import Controls
from cdc_daemon.errors import CdcError
from cdc_daemon.logs import redact

log = structlog.get_logger("cdc_daemon.admin")

VIEWER = frozenset({"viewer", "operator", "admin"})
OPERATOR = frozenset({"operator", "admin"})
ADMIN = frozenset({"admin"})
MAX_BODY = 64 * 1024  # bytes
LOCAL = Principal(subject="local (no jwt configured)", roles=ADMIN)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdminApi:
    """The routes, over `controls` (control.py: what the running daemon lets them do)."""

    def __init__(
        self, controls: Controls, verifier: JwtVerifier | None, stale_after: float = 60.0
    ) -> None:
        self.controls = controls
        self.verifier = verifier
        self.stale_after = stale_after  # seconds without a loop iteration before /healthz 503

    def prepare_reload(
        self, verifier: JwtVerifier | None, stale_after: float
    ) -> Callable[[], None]:
        """SIGHUP: the new `admin.jwt` was read by the root already (a bad one refused the
        reload before anything changed). The function returned puts it in place: from then on
        a token of a revoked key gets 401."""

        def apply() -> None:
            self.verifier = verifier  # one assignment: a request sees the old or the new one
            self.stale_after = stale_after
            log.info("admin api reconfigured", auth=auth_kind(verifier))

        return apply

    def app(self) -> Starlette:
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/status", self.status, methods=["GET"]),
            Route("/v1/pause", self.pause, methods=["POST"]),
            Route("/v1/resume", self.resume, methods=["POST"]),
            Route("/v1/dead-letters/retry", self.retry_dead_letters, methods=["POST"]),
            Route("/v1/verify", self.verify, methods=["POST"]),
            Route("/v1/backfill", self.backfill, methods=["POST"]),
        ]
        handlers: dict[Any, Callable[..., Any]] = {
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        }
        return Starlette(routes=routes, exception_handlers=handlers)

    # -- auth -------------------------------------------------------------------------------

    def _authorize(self, request: Request, roles: frozenset[str], action: str) -> Principal:
        """The caller, if its token is valid (else 401) and has one of `roles` (else 403)."""
        if self.verifier is None:
            return LOCAL
        client = request.client.host if request.client else "?"
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            log.warning("admin request refused", action=action, client=client, reason="no token")
            raise ApiError(401, "a bearer token is required")
        try:
            principal = self.verifier.verify(token)
        except Unauthorized as exc:
            log.warning("admin request refused", action=action, client=client, reason=str(exc))
            raise ApiError(401, f"invalid token: {exc}") from None
        if not principal.has_any(roles):
            log.warning(
                "admin request forbidden",
                action=action,
                sub=principal.subject,
                roles=sorted(principal.roles),
                needs=sorted(roles),
            )
            raise ApiError(403, f"{action} needs one of the roles {', '.join(sorted(roles))}")
        return principal

    def _audit(self, principal: Principal, action: str, **details: Any) -> None:
        log.info("admin action", action=action, sub=principal.subject, **details)

    # -- routes -----------------------------------------------------------------------------

    async def healthz(self, _request: Request) -> Response:
        idle = self.controls.loop_idle_seconds()
        ok = idle < self.stale_after
        body: dict[str, Any] = {"ok": ok, "paused": self.controls.paused()}
        if not ok:
            body["error"] = f"the sync loop has not run for {idle:.0f} s"
        return JSONResponse(body, status_code=200 if ok else 503)

    async def status(self, request: Request) -> Response:
        self._authorize(request, VIEWER, "status")
        controls = self._controls(request.query_params.get("database"))
        return JSONResponse(await run_in_threadpool(controls.status))

    async def pause(self, request: Request) -> Response:
        principal = self._authorize(request, OPERATOR, "pause")
        database = (await _body(request)).get("database")
        self._controls(database).pause()
        self._audit(principal, "pause", **_named(database))
        return JSONResponse({"paused": True})

    async def resume(self, request: Request) -> Response:
        principal = self._authorize(request, OPERATOR, "resume")
        database = (await _body(request)).get("database")
        self._controls(database).resume()  # and wakes the loop: it syncs again at once
        self._audit(principal, "resume", **_named(database))
        return JSONResponse({"paused": False})

    async def retry_dead_letters(self, request: Request) -> Response:
        principal = self._authorize(request, OPERATOR, "dead-letters retry")
        body = await _body(request)
        controls, table = self._chosen(body)
        count = await run_in_threadpool(controls.retry_dead_letters, table)
        self._audit(
            principal, "dead-letters retry", table=table, retried=count, **_named(body)
        )
        return JSONResponse({"retried": count})

    async def verify(self, request: Request) -> Response:
        principal = self._authorize(request, OPERATOR, "verify")
        body = await _body(request)
        repair = body.get("repair", False)
        if not isinstance(repair, bool):
            raise ApiError(400, "repair must be true or false")
        if repair and not principal.has_any(ADMIN):
            self._authorize(request, ADMIN, "verify with repair")  # logs and raises 403
        controls, table = self._chosen(body)
        self._audit(principal, "verify", repair=repair, table=table, **_named(body))
        result = await run_in_threadpool(controls.verify, table, repair)
        log.info(
            "admin verify finished",
            sub=principal.subject,
            in_sync=result["in_sync"],
            missing=result["missing"],
            extra=result["extra"],
            stale=result["stale"],
        )
        return JSONResponse(result)

    async def backfill(self, request: Request) -> Response:
        principal = self._authorize(request, ADMIN, "backfill")
        body = await _body(request)
        controls, table = self._chosen(body)
        result = await run_in_threadpool(controls.backfill, table)
        self._audit(principal, "backfill", table=table, **_named(body), **result)
        return JSONResponse(result, status_code=202)

    def _chosen(self, body: dict[str, Any]) -> tuple[Controls, str | None]:
        """What a request body names: its `database`'s controls and its `table` (None: all)."""
        return self._controls(body.get("database")), self._table(body)

    def _controls(self, database: object) -> Controls:
        """`database` (a `databases:` daemon): that database's controls; None: all of them."""
        if database is None:
            return self.controls
        if not isinstance(database, str) or database not in self.controls.databases():
            raise ApiError(400, f"database {str(database)[:100]!r} is not served")
        try:
            return self.controls.for_database(database)
        except CdcError as exc:  # not syncing now (not installed, locked, failing)
            raise ApiError(409, redact(str(exc))) from None

    def _table(self, body: dict[str, Any]) -> str | None:
        table = body.get("table")
        if table is None:
            return None
        if not isinstance(table, str) or table not in self.controls.tables():
            raise ApiError(400, f"table {str(table)[:100]!r} is not configured")
        return table


# -- errors as JSON --------------------------------------------------------------------------


def _named(body: object) -> dict[str, Any]:
    """The `database` a request named, for its audit line (nothing when it named none)."""
    database = body.get("database") if isinstance(body, dict) else body
    return {"database": database} if database is not None else {}


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, "request body too large")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": 'Bearer realm="cdc-daemon"'} if exc.status == 401 else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code)


async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, CdcError):
        message = redact(str(exc))
        log.warning("admin request failed", path=request.url.path, error=message)
        return JSONResponse({"error": message}, status_code=503 if exc.retryable else 500)
    log.error("admin request crashed", path=request.url.path, error=redact(repr(exc)))
    return JSONResponse({"error": "internal error"}, status_code=500)


# -- the server ------------------------------------------------------------------------------


class _ToStructlog(logging.Handler):
    """uvicorn's own warnings, as JSON lines like every other log line."""

    def emit(self, record: logging.LogRecord) -> None:
        log.warning("admin server", message=redact(record.getMessage()))


def _quiet_uvicorn() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = [_ToStructlog(logging.WARNING)]
        logger.propagate = False
        logger.setLevel(logging.WARNING)


class AdminServer:
    """uvicorn on a daemon thread, on a socket bound here (so a busy port is a clean error)."""

    def __init__(self, app: Starlette, listen: str) -> None:
        self.app = app
        self.listen = listen
        self.api: AdminApi | None = None  # its routes, for a reload (prepare_reload)
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    def start(self, timeout: float = 10.0) -> None:
        host, _, port = self.listen.rpartition(":")
        host = host.strip("[]")
        try:
            family, kind, proto, _name, address = socket.getaddrinfo(
                host, int(port), type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise CdcError(f"admin.listen: cannot listen on {self.listen}: {reason}") from None
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        _quiet_uvicorn()
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cdc-admin", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.close()
                raise CdcError(f"admin.listen: the admin server did not start on {self.listen}")
            time.sleep(0.01)

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None


def auth_kind(verifier: JwtVerifier | None) -> str:
    return "jwt" if verifier is not None else "none (loopback)"
