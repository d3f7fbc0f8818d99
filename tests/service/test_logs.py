"""The daemon's log: one JSON object per stderr line with ts/level/event, one line per batch with
counts, duration and seq range; secrets never printed, even when Typesense echoes them back;
SIGTERM during a large backlog exits 0 quickly and loses nothing."""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import yaml
from support import Env, app_exec, insert_elements

from service.helpers import (
    ELEMENTS_TABLE,
    DaemonProcess,
    free_port,
    insert_rows,
    scrape,
    wait_scrape,
)

LEVELS = {"debug", "info", "warning", "error", "critical"}
KEY_ENV = "CDC_TEST_TYPESENSE_KEY"


def check_line(line: dict[str, object]) -> None:
    assert isinstance(line.get("event"), str) and line["event"], line
    assert line.get("level") in LEVELS, line
    assert isinstance(line.get("ts"), str), line
    datetime.fromisoformat(str(line["ts"]).replace("Z", "+00:00"))


def test_every_line_is_json_and_batches_carry_counts(elements_env: Env) -> None:
    env = elements_env  # batch_size 200
    insert_elements(env.db, range(1, 451))
    app_exec(env.db, "UPDATE elements SET comment = 'changed' WHERE id <= 100",
             "DELETE FROM elements WHERE id > 400")
    daemon = DaemonProcess(env)
    try:
        batches = daemon.wait_event("batch synced", count=3)
        while sum(int(b["changes"]) for b in batches) < 600:
            batches = daemon.wait_event("batch synced", count=len(batches) + 1)
    finally:
        assert daemon.stop() == 0
    lines = daemon.lines()
    for line in lines:
        check_line(line)
    assert daemon.stdout() == ""
    batches = [line for line in lines if line["event"] == "batch synced"]
    # 450 inserts + 100 updates + 50 deletes = 600 log entries, 200 per batch at most.
    assert sum(int(b["changes"]) for b in batches) == 600
    assert len(batches) <= 6  # one line per batch, never one per document
    assert len(lines) < 20
    last_seq = 0
    for batch in batches:
        assert batch["level"] == "info"
        assert batch["tables"] == ["elements"]
        assert 0 < int(batch["keys"]) <= int(batch["changes"]) <= 200
        assert int(batch["upserted"]) + int(batch["deleted"]) == int(batch["keys"])
        assert batch["failed"] == 0
        assert last_seq < int(batch["seq_first"]) <= int(batch["seq_last"])
        last_seq = int(batch["seq_last"])
        assert isinstance(batch["duration_ms"], float) and batch["duration_ms"] >= 0
    assert sum(int(b["deleted"]) for b in batches) == 50
    assert [line["event"] for line in lines][-1] == "stopped"


class _EchoKey(BaseHTTPRequestHandler):
    """A Typesense stand-in that is "not ready" and quotes the API key it got in its error."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        key = self.headers.get("X-TYPESENSE-API-KEY", "")
        body = json.dumps({"message": f"Not Ready or Lagging (request key: {key})"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoKey)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)  # shutdown() waits for its next look
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("scenario", ["wrong_key", "typesense_down", "key_echoed"])
def test_secret_never_printed(elements_env: Env, echo_server: str, scenario: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    env = elements_env
    secret = f"cdc-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, secret)
    port = free_port()
    node = {"wrong_key": env.typesense.url, "typesense_down": f"http://127.0.0.1:{free_port()}",
            "key_echoed": echo_server}[scenario]
    env.write_config([ELEMENTS_TABLE], metrics={"listen": f"127.0.0.1:{port}"},
                     logging={"level": "debug"})
    config = yaml.safe_load(env.config_path.read_text())
    config["typesense"] = {"nodes": [node], "api_key_env": KEY_ENV, "timeout": 5}
    env.config_path.write_text(yaml.safe_dump(config))
    insert_elements(env.db, range(1, 4))

    daemon = DaemonProcess(env)
    try:
        kind = "auth_error" if scenario == "wrong_key" else "target_unavailable"
        metrics = wait_scrape(port, lambda m: m.get("cdc_sync_errors_total", kind=kind) >= 2,
                              message=f"{kind} counted", daemon=daemon)
        retries = daemon.wait_event("retrying", count=2)
        metrics_text = metrics.text + scrape(port).text
        check = env.cli("check")
        assert check.returncode == 1, check.stdout
        status = env.cli("status", "--json")
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    outputs = {
        "daemon stderr": daemon.stderr(), "daemon stdout": daemon.stdout(),
        "metrics": metrics_text, "check": check.stdout + check.stderr,
        "status": status.stdout + status.stderr,
    }
    for where, text in outputs.items():
        assert secret not in text, f"the API key appears in the {where}"
    for line in daemon.lines():
        check_line(line)
    if scenario == "key_echoed":  # the server's error quoted the key: it was redacted, not lost
        assert any("(request key: [redacted])" in str(r["error"]) for r in retries), retries
        assert "[redacted]" in check.stdout
    assert env.status()["backlog"] == 3  # nothing acknowledged, nothing dead-lettered


def test_sigterm_during_a_large_backlog(elements_env: Env) -> None:
    env = elements_env
    env.write_config([ELEMENTS_TABLE], sync={"batch_size": 500})
    total = 20_000
    insert_rows(env.db, total)
    daemon = DaemonProcess(env)
    try:
        daemon.wait_event("batch synced", timeout=60)
    finally:
        daemon.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = daemon.stop(timeout=15)
    took = time.monotonic() - started
    assert code == 0, daemon.stderr()
    assert took < 5, f"exit took {took:.1f}s"
    lines = daemon.lines()
    assert lines[-1]["event"] == "stopped"
    synced = sum(int(line["changes"]) for line in lines if line["event"] == "batch synced")
    backlog = env.status()["backlog"]
    assert synced + backlog == total  # every change acknowledged exactly once or still logged
    assert backlog > 0, "the daemon drained everything before SIGTERM: the test proved nothing"

    once = env.cli("run", "--once", timeout=180)
    assert once.returncode == 0, once.stderr
    assert env.status()["backlog"] == 0
    report = env.verify()
    assert report["in_sync"] is True, report
    assert report["tables"]["elements"]["rows"] == total
    count = httpx.get(
        f"{env.typesense.url}/collections/{env.collection('elements')}",
        headers={"X-TYPESENSE-API-KEY": env.typesense.api_key}, timeout=10,
    ).json()["num_documents"]
    assert count == total
