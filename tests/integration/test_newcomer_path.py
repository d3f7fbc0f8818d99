"""What a newcomer runs first, end to end: the demo (scripts/demo.py), the commands it prints
afterwards, and `cdc-daemon local-typesense` (the bundled server, to try cdc-daemon with).

Before, the demo stopped its server and left a config pointing at a dead random port with a key
in a variable nobody had exported: no command could be tried afterwards."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import app_exec, run_cdc, stop_process, wait_for
from support.launcher import environment, start

from cdc_daemon.localserver import free_port, port_free

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.typesense  # each test starts a server of its own


class LocalServer:
    """`cdc-daemon local-typesense` as a user starts it, its output in a file."""

    def __init__(self, tmp_path: Path, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.out = tmp_path / f"local-typesense-{port}.out"
        with open(self.out, "w") as out:
            self.process = start("local-typesense", "--data-dir", str(data_dir), "--port",
                                 str(port), cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        wait_for(self._up, 90, message=f"'Typesense is up' in {self.out}")

    def _up(self) -> bool:
        text = self.out.read_text()
        assert self.process.poll() is None, text
        return "Typesense is up" in text

    def key(self) -> str:
        return (self.data_dir / "api.key").read_text().strip()

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                            headers={"X-TYPESENSE-API-KEY": self.key()}, timeout=10)

    def stop(self) -> None:
        stop_process(self.process, timeout=30)


def command_lines() -> list[str]:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile
            continue
    return lines


@pytest.fixture
def servers() -> Iterator[list[LocalServer]]:
    started: list[LocalServer] = []
    yield started
    for server in started:
        server.stop()


def test_local_typesense_serves_with_a_key_file_until_ctrl_c(
    tmp_path: Path, servers: list[LocalServer]
) -> None:
    port = free_port()
    server = LocalServer(tmp_path, tmp_path / "ts", port)
    servers.append(server)
    key_file = tmp_path / "ts" / "api.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert f'export TYPESENSE_API_KEY="$(cat {key_file})"' in server.out.read_text()
    assert server.http().get("/collections").status_code == 200
    # The key is in no command line (`ps` shows those to every user).
    lines = [line for line in command_lines() if f"--data-dir={tmp_path / 'ts'}" in line]
    assert lines and not any(server.key() in line for line in lines), lines

    # A second one on the same port: one line, exit 1, nothing started.
    again = run_cdc(["local-typesense", "--data-dir", str(tmp_path / "other"), "--port",
                     str(port)], cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    assert again.stderr.strip() == (f"cdc-daemon: error: 127.0.0.1:{port} is in use"
                                    " (a Typesense already?): pick --port")

    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=30) == 0, server.out.read_text()
    assert "Traceback" not in server.out.read_text()
    wait_for(lambda: port_free(port), 10, message="the server's port free again")


def test_the_printed_export_line_works_for_a_data_dir_with_a_space(
    tmp_path: Path, servers: list[LocalServer]
) -> None:
    server = LocalServer(tmp_path, tmp_path / "my data", free_port())
    servers.append(server)
    [export] = [line.strip() for line in server.out.read_text().splitlines()
                if line.strip().startswith("export TYPESENSE_API_KEY=")]
    shell = subprocess.run(["bash", "-c", f'{export} && printf %s "$TYPESENSE_API_KEY"'],
                           capture_output=True, text=True, timeout=30, check=True)
    assert shell.stdout == server.key(), (export, shell.stderr)


def test_the_demo_leaves_a_setup_the_printed_next_steps_work_on(
    tmp_path: Path, servers: list[LocalServer]
) -> None:
    demo, port = tmp_path / "demo", free_port()
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--dir", str(demo), "--port",
         str(port)],
        capture_output=True, text=True, timeout=300, env=environment(), cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in sync" in result.stdout
    assert f"local-typesense --data-dir demo/typesense --port {port}" in result.stdout
    assert port_free(port), "the demo left its Typesense running"

    # The next steps, as printed: Typesense back on the same port and key, then the commands.
    servers.append(LocalServer(tmp_path, demo / "typesense", port))
    assert run_cdc(["status"], cwd=demo).returncode == 0
    app_exec(demo / "app.db",
             "UPDATE elements SET comment = 'hello world' WHERE element_id = 1")
    once = run_cdc(["run", "--once"], cwd=demo)
    assert once.returncode == 0, once.stderr
    found = servers[0].http().get(
        "/collections/service_a_collection/documents/search",
        params={"q": "hello", "query_by": "comment"},
    ).json()
    assert [hit["document"]["id"] for hit in found["hits"]] == ["1"], found
    verify = run_cdc(["verify"], cwd=demo)
    assert verify.returncode == 0, verify.stdout + verify.stderr
