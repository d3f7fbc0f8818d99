"""A real 3-node Typesense Raft cluster on loopback, hosts (a database + a daemon process each),
the app workload, and a bandwidth-limited loopback proxy standing in for a slow network."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from support import app_exec, db_rows, db_scalar, launcher, log_backlog, wait_for

from cdc_daemon.localserver import LocalTypesense, free_port, server_binary

from .workload import DDL as ITEMS_DDL

HERE = Path(__file__).parent
API_KEY = "cluster-test-key"
HEADERS = {"X-TYPESENSE-API-KEY": API_KEY}


class Cluster:
    """Three Typesense servers forming one Raft cluster (nodes file, peering on 127.0.0.1)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        ports = [(free_port(), free_port()) for _ in range(size)]
        self.nodes_file = root / "nodes"
        self.nodes_file.write_text(",".join(f"127.0.0.1:{peer}:{api}" for peer, api in ports))
        self.nodes = [
            LocalTypesense(
                root / f"node{i}", API_KEY, port=api, peering_port=peer, nodes_file=self.nodes_file
            )
            for i, (peer, api) in enumerate(ports)
        ]
        self.http = httpx.Client(headers=HEADERS, timeout=10)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 90) -> None:
        server_binary()  # assembles the binary once, before the parallel starts
        for node in self.nodes:
            node.start(wait=0)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.wait_healthy(timeout), self.nodes))
        self.wait_writable(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        self.http.close()

    def alive(self) -> list[LocalTypesense]:
        return [n for n in self.nodes if n.process is not None and n.process.poll() is None]

    def leader(self) -> LocalTypesense | None:
        for node in self.alive():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if self.http.get(node.url + "/debug", timeout=2).json().get("state") == 1:
                    return node
        return None

    def _write_through(self, node: LocalTypesense) -> bool:
        """A tiny write sent to `node` (forwarded when it is a follower) succeeds."""
        try:
            response = self.http.post(
                node.url + "/collections/_ready/documents/import?action=upsert",
                content=json.dumps({"id": "probe", "at": time.time()}),
                timeout=3,
            )
            return response.status_code == 200 and '"success":true' in response.text
        except httpx.HTTPError:
            return False

    def wait_writable(self, timeout: float = 60) -> float:
        """Until there is a leader and a write through every live node succeeds; seconds."""
        started = time.monotonic()

        def ready() -> bool:
            for node in self.alive():
                try:
                    self.http.post(
                        node.url + "/collections",
                        json={"name": "_ready", "fields": [{"name": "at", "type": "float"}]},
                        timeout=3,
                    )
                    break
                except httpx.HTTPError:
                    continue
            return all(self._write_through(node) for node in self.alive())

        wait_for(ready, timeout, "a leader and writes through every node", interval=0.2)
        return time.monotonic() - started

    def restart(self, node: LocalTypesense, timeout: float = 90) -> None:
        node.start(wait=0)
        node.wait_healthy(timeout)
        self.wait_writable(timeout)

    def export(self, node: LocalTypesense, collection: str) -> dict[str, dict[str, Any]] | None:
        """Every document of `collection` (an alias works) as `node` itself has it; None when
        the node can't answer right now."""
        try:
            response = self.http.get(
                f"{node.url}/collections/{collection}/documents/export", timeout=10
            )
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            return {}
        if response.status_code != 200:
            return None
        docs = [json.loads(line) for line in response.text.splitlines() if line.strip()]
        return {d["id"]: d for d in docs}


# -- a host: one app database and one cdc-daemon process ------------------------------------------


class Host:
    def __init__(self, root: Path, name: str, nodes: list[str], **table: Any) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.db = self.dir / "app.db"
        self.config = self.dir / "cdc.yaml"
        self.metrics_port = free_port()
        self.process: subprocess.Popen[str] | None = None
        self.workload: subprocess.Popen[str] | None = None
        self.table: dict[str, Any] = {"table": "items", **table}
        self.typesense: dict[str, Any] = {"nodes": nodes, "api_key": API_KEY, "timeout": 5}
        self.sync: dict[str, Any] = {"batch_size": 500, "poll_interval": 0.2, "max_attempts": 3}
        app_exec(self.db, "PRAGMA journal_mode = WAL", ITEMS_DDL)

    @property
    def collection(self) -> str:
        prefix = self.typesense.get("collection_prefix", "")
        return prefix + str(self.table.get("collection", "items"))

    @property
    def id_prefix(self) -> str:
        return str(self.table.get("id_prefix") or "")

    def write_config(self) -> None:
        config = {
            "database": "app.db",
            "typesense": self.typesense,
            "sync": self.sync,
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "logging": {"format": "json", "level": "info"},
            "tables": [self.table],
        }
        self.config.write_text(yaml.safe_dump(config))

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return launcher.run(*args, config=self.config, cwd=self.dir, timeout=timeout)

    def install(self) -> None:
        self.write_config()
        result = self.cli("install")
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        self.process = launcher.start_logged("run", config=self.config, cwd=self.dir,
                                             log=self.dir / "daemon.log")

    def stop(self) -> None:
        for process in (self.workload, self.process):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def reload(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def start_workload(self, seed: int, low: int, high: int) -> None:
        self.workload = subprocess.Popen(
            [sys.executable, str(HERE / "workload.py"), str(self.db), "run", str(seed), str(low),
             str(high)],
            stdout=subprocess.PIPE, text=True,
        )

    def stop_workload(self) -> int:
        """SIGTERM the app; the number of transactions it committed."""
        assert self.workload is not None
        self.workload.send_signal(signal.SIGTERM)
        out, _err = self.workload.communicate(timeout=30)
        assert self.workload.returncode == 0
        return int(out.strip() or 0)

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in (self.dir / "daemon.log").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def expected(self) -> dict[str, dict[str, Any]]:
        """The documents the rows map to now (docs/documents.md; NULL leaves a field out)."""
        rows = db_rows(self.db, "SELECT id, name, n, note FROM items")
        docs = {}
        for key, name, n, note in rows:
            doc_id = f"{self.id_prefix}{key}"
            docs[doc_id] = {"id": doc_id, "name": name, "n": n}
            if note is not None:
                docs[doc_id]["note"] = note
        return docs

    def backlog(self) -> int:
        return log_backlog(self.db)

    def dead_letters(self) -> int:
        return int(db_scalar(self.db, "SELECT COUNT(*) FROM change_log_dead"))

    def metrics(self) -> str:
        """The daemon's /metrics page; "" while it is not listening yet."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""


def app(db: Path, *args: str) -> None:
    """The workload script's `burst` (or `run`) mode, to its end."""
    subprocess.run([sys.executable, str(HERE / "workload.py"), str(db), *args], check=True,
                   timeout=60)


def own(docs: dict[str, dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in docs.items() if k.startswith(prefix)}


def differences(expected: dict[str, Any], actual: dict[str, Any] | None) -> str:
    if actual is None:
        return "no answer"
    missing = expected.keys() - actual.keys()
    extra = actual.keys() - expected.keys()
    stale = [k for k in expected.keys() & actual.keys() if expected[k] != actual[k]]
    if not (missing or extra or stale):
        return ""
    return f"{len(missing)} missing, {len(extra)} extra, {len(stale)} stale"


def converged_everywhere(cluster: Cluster, hosts: list[Host]) -> Callable[[], bool]:
    """A condition: on every live node, each host's documents are exactly its rows."""

    def check() -> bool:
        for host in hosts:
            expected = host.expected()
            for node in cluster.alive():
                actual = cluster.export(node, host.collection)
                if actual is not None and host.id_prefix:
                    actual = own(actual, host.id_prefix)
                if differences(expected, actual):
                    return False
        return True

    return check


def describe(cluster: Cluster, hosts: list[Host]) -> str:
    lines = []
    for host in hosts:
        expected = host.expected()
        for node in cluster.alive():
            actual = cluster.export(node, host.collection)
            if actual is not None and host.id_prefix:
                actual = own(actual, host.id_prefix)
            lines.append(f"{host.name} on {node.url}: {differences(expected, actual) or 'ok'}")
        lines.append(f"{host.name} backlog {host.backlog()}, dead {host.dead_letters()}")
    return "\n".join(lines)


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


# -- a slow network: bandwidth-limited loopback TCP proxy -----------------------------------------


class SlowProxy:
    """Forwards 127.0.0.1:port → upstream, letting the client's bytes through at `rate` bytes/s
    per connection (answers come back at full speed). Small requests (/health, GETs) pass almost
    at once; a big import outlives the client's timeout and is still delivered afterwards, the
    way a slow link delivers what was already sent: Typesense then applies it late.
    `late_requests` counts connections whose client had given up before its bytes arrived."""

    def __init__(self, upstream_port: int, rate: float) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.port = free_port()
        self.late_requests = 0
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _addr = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        pending: deque[bytes] = deque()
        state = {"client_gone": False, "late": False, "sending": False}
        ready = threading.Condition()

        def read_client() -> None:
            while True:
                try:
                    data = client.recv(65536)
                except OSError:
                    data = b""
                with ready:
                    if not data:
                        state["client_gone"] = True
                        if pending or state["sending"]:
                            state["late"] = True
                    else:
                        pending.append(data)
                    ready.notify()
                if not data:
                    return

        def send_upstream() -> None:
            chunk_time = 0.05
            while True:
                with ready:
                    while not pending and not state["client_gone"]:
                        ready.wait()
                    if not pending:
                        break
                    data = pending.popleft()
                    state["sending"] = True
                step = max(1, int(self.rate * chunk_time))
                for start in range(0, len(data), step):
                    time.sleep(len(data[start : start + step]) / self.rate)
                    try:
                        upstream.sendall(data[start : start + step])
                    except OSError:
                        return
                with ready:
                    state["sending"] = False
            if state["late"]:
                with self._lock:
                    self.late_requests += 1
                answered.wait(10)  # the server applies it and answers nobody
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)
            upstream.close()

        answered = threading.Event()

        def read_upstream() -> None:
            while True:
                try:
                    data = upstream.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                if state["client_gone"]:
                    answered.set()
                with contextlib.suppress(OSError):
                    client.sendall(data)
            answered.set()
            with contextlib.suppress(OSError):
                client.close()

        threading.Thread(target=read_client, daemon=True).start()
        threading.Thread(target=read_upstream, daemon=True).start()
        send_upstream()


@contextlib.contextmanager
def hosts_stopped_at_exit(*hosts: Host) -> Iterator[None]:
    try:
        yield
    finally:
        for host in hosts:
            host.stop()

