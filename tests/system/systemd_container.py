"""A real systemd booted in a container: a Debian bookworm root file system built once with
mmdebstrap (cached between runs, rebuilt when missing), booted with systemd-nspawn, driven with
`nsenter -t <its systemd> -a ...` (there is no host systemd to register it with).

The container has no network (--private-network): what it needs from the host comes in through
read-only bind mounts. Its root file system is an overlay on the cached tree (--volatile=overlay),
so nothing a test does there outlives the boot."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support import wait_for

# The Debian packages of the image: systemd as PID 1, Python for the daemon, sudo and ps for the
# operator's steps. A new list is a new cache entry.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "procps", "sudo")
SUITE = "bookworm"
# Inside the image: the journal in memory only (one file, never one per user), and a host name
# of its own that resolves (for sudo).
CUSTOMIZE = (
    'mkdir -p "$1/etc/systemd/journald.conf.d"',
    'printf "[Journal]\\nStorage=volatile\\n" > "$1/etc/systemd/journald.conf.d/volatile.conf"',
    'rm -rf "$1/var/log/journal"',
    'echo cdc-test > "$1/etc/hostname"',
    'printf "127.0.0.1 localhost cdc-test\\n" > "$1/etc/hosts"',
)
CACHE = Path(os.environ.get("CDC_TEST_ROOTFS_CACHE", "/var/cache/cdc-daemon-tests"))
TOOLS = {"systemd-nspawn": "systemd-container", "mmdebstrap": "mmdebstrap",
         "nsenter": "util-linux"}
CGROUP = Path("/sys/fs/cgroup")


def missing_tools() -> str:
    """One line naming what to install, or '' when every tool is there."""
    missing = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if missing:
        return (f"needs {', '.join(missing)}: apt-get install {' '.join(missing)} "
                "(scripts/test.sh installs them)")
    if os.geteuid() != 0:
        return "systemd-nspawn needs root: run the tests as root (CI does)"
    return ""


def rootfs() -> Path:
    """The cached image, built first if it is missing (under a lock: one builder at a time)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    recipe = hashlib.sha256(repr((SUITE, PACKAGES, CUSTOMIZE)).encode()).hexdigest()[:12]
    tree = CACHE / f"rootfs-{SUITE}-{recipe}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (tree / "usr/lib/systemd/systemd").exists():
            build_rootfs(tree)
    return tree


def build_rootfs(tree: Path) -> None:
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    result = subprocess.run(
        ["mmdebstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
         *[f"--customize-hook={hook}" for hook in CUSTOMIZE], SUITE, str(partial)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"mmdebstrap failed:\n{result.stderr[-3000:]}"
    partial.rename(tree)


class Machine:
    """A booted container: `sh()` runs a shell script in it as root."""

    def __init__(self, nspawn: subprocess.Popen[bytes], console: Path, cgroups: list[Path]):
        self.nspawn = nspawn
        self.console = console
        self.cgroups = cgroups
        self.pid = 0  # its systemd's, once `wait_booted()` saw it start

    def wait_booted(self) -> None:
        self.pid = wait_for(self._init_pid, 30, "the container's systemd to start")
        bus = Path(f"/proc/{self.pid}/root/run/systemd/private")
        wait_for(bus.exists, 30, "the container's systemd to listen on its bus", interval=0.05)
        state = self.sh("systemctl is-system-running --wait", check=False, timeout=60)
        assert state.stdout.strip() in ("running", "degraded"), state.stdout + state.stderr

    def _init_pid(self) -> int | None:
        if self.nspawn.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited: {self.console.read_text()[-2000:]}")
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        for pid in children.read_text().split():
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return int(pid)
        return None

    def sh(self, script: str, check: bool = True, timeout: float = 120,
           stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "/bin/sh", "-ec", script],
            input=stdin, capture_output=True, text=True, timeout=timeout, cwd="/",
            start_new_session=True,  # a `kill 0` in there must not reach this process group
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"},
        )
        if check:
            assert result.returncode == 0, (
                f"in the container: {script}\nexit {result.returncode}\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        return result

    def out(self, script: str, **kwargs: Any) -> str:
        return self.sh(script, **kwargs).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.out(f"systemctl show -P {prop} {unit}")

    def mark(self) -> str:
        """Now, to read the journal from: `journal(unit, after=mark)` holds what came later.
        (Not a cursor: journalctl 252 `-u UNIT --after-cursor=C` misses entries when C is
        another unit's entry.)"""
        return self.out("date +%s%6N")

    def journal(self, unit: str, after: str = "") -> list[str]:
        """The unit's journal messages (the daemon's lines and systemd's about it), oldest first."""
        lines = self.out(f"journalctl -u {unit} -o json --no-pager").splitlines()
        entries = [json.loads(line) for line in lines]
        return [str(e.get("MESSAGE")) for e in entries
                if not after or int(e["__REALTIME_TIMESTAMP"]) > int(after)]

    def events(self, unit: str, after: str = "") -> list[dict[str, Any]]:
        """The daemon's JSON log lines in the unit's journal (systemd's own lines skipped)."""
        return [json.loads(line) for line in self.journal(unit, after) if line.startswith("{")]

    def wait_event(self, unit: str, event: str, after: str, timeout: float = 30) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events(unit, after) if e.get("event") == event), None)
        try:
            return wait_for(found, timeout, f"{event!r} in journalctl -u {unit}", interval=0.2)
        except AssertionError as timeout_error:
            tail = "\n".join(line for line in self.journal(unit) if "WATCHDOG=1" not in line)
            raise AssertionError(f"{timeout_error}; the unit's journal:\n{tail}") from None

    def wait_state(self, unit: str, state: str, timeout: float = 30) -> None:
        wait_for(lambda: self.show(unit, "ActiveState") == state, timeout,
                 f"{unit} {state}", interval=0.2)

    def shutdown(self) -> None:
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)  # nspawn: an orderly poweroff of the container
            try:
                self.nspawn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=10)
        for cgroup in self.cgroups:  # deepest first: the container's systemd made sub-groups
            for path in [*sorted(cgroup.rglob("*"), key=lambda p: -len(p.parts)), cgroup]:
                if path.is_dir():
                    with contextlib.suppress(OSError):
                        path.rmdir()


def own_cgroups(name: str) -> list[Path]:
    """Cgroups of our own for nspawn (--keep-unit runs the container in the caller's cgroup): in
    the name=systemd and unified hierarchies of a cgroup v1 host, or at the top of a v2 one."""
    roots = [CGROUP / h for h in ("systemd", "unified") if (CGROUP / h / "cgroup.procs").exists()]
    if not roots and (CGROUP / "cgroup.procs").exists():
        roots = [CGROUP]
    return [root / name for root in roots]


@contextlib.contextmanager
def booted(image: Path, binds: dict[Path, str], console: Path) -> Iterator[Machine]:
    """Boot `image` with each host path of `binds` read-only at its path inside."""
    name = f"cdc-test-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    cgroups = own_cgroups(name)

    def enter_own_cgroups() -> None:  # in the child, before exec
        for cgroup in cgroups:
            cgroup.mkdir(exist_ok=True)
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    args = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
            "--volatile=overlay", f"--machine={name}", "--directory", str(image),
            *[f"--bind-ro={host}:{inside}" for host, inside in binds.items()], "--boot"]
    with open(console, "wb") as out:
        nspawn = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, preexec_fn=enter_own_cgroups,
                                  start_new_session=True)
    machine = Machine(nspawn, console, cgroups)
    try:
        machine.wait_booted()
        yield machine
    finally:
        machine.shutdown()
