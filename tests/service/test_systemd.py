"""systemd/cdc-daemon.service and cdc-daemon@.service: `systemd-analyze verify` prints nothing,
the service settings the daemon relies on are there, the exposure score stays below 2.0, and the
daemon runs under MemoryDenyWriteExecute (emulated with PR_SET_MDWE)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import Env, insert_elements

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("cdc-daemon.service", "cdc-daemon@.service")
CDC_DAEMON = Path(sys.executable).parent / "cdc-daemon"  # the venv's console script


def systemd_analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("systemd-analyze")
    # Never skipped: scripts/test.sh installs it (Debian package `systemd`).
    assert tool, "systemd-analyze not found: apt-get install systemd (scripts/test.sh does it)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """`Section.Key` → every value assigned, in order (comments and blank lines skipped)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this venv's cdc-daemon (verify checks it exists)."""
    for name in UNITS:
        text = (ROOT / "systemd" / name).read_text()
        assert "ExecStart=/usr/local/bin/cdc-daemon run" in text
        (tmp_path / name).write_text(
            text.replace("ExecStart=/usr/local/bin/cdc-daemon", f"ExecStart={CDC_DAEMON}")
        )
    return tmp_path


@pytest.mark.parametrize("unit", [*UNITS, "cdc-daemon@service-a.service"])
def test_systemd_analyze_verify_is_silent(units: Path, unit: str) -> None:
    result = systemd_analyze("verify", "--man=no", str(units / unit), cwd=units)
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )


def test_verify_would_notice_a_broken_unit(units: Path) -> None:
    text = (units / "cdc-daemon.service").read_text()
    (units / "broken.service").write_text(
        text.replace("WatchdogSec=90", "WatchdogSec=ninety").replace(str(CDC_DAEMON), "/nope/x")
    )
    result = systemd_analyze("verify", "--man=no", str(units / "broken.service"), cwd=units)
    assert "WatchdogSec" in result.stderr or "ninety" in result.stderr, result.stderr
    assert "/nope/x" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_service_settings(unit: str) -> None:
    s = unit_settings(ROOT / "systemd" / unit)
    expected = {
        "Service.Type": "notify", "Service.NotifyAccess": "main",
        "Service.ExecReload": "/bin/kill -HUP $MAINPID", "Service.Restart": "on-failure",
        "Service.RestartPreventExitStatus": "2",
        "Service.NoNewPrivileges": "yes", "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes", "Service.PrivateTmp": "yes", "Service.PrivateDevices": "yes",
        "Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "Service.CapabilityBoundingSet": "", "Service.MemoryDenyWriteExecute": "yes",
        "Service.SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], (key, s.get(key))
    assert s["Service.SystemCallFilter"][0] == "@system-service"
    assert s["Service.ExecStart"] == ["/usr/local/bin/cdc-daemon run"]
    for key in ("Service.User", "Service.Group", "Service.ReadWritePaths", "Service.RestartSec",
                "Unit.StartLimitIntervalSec", "Unit.StartLimitBurst"):
        assert s.get(key), key
    if "@" in unit:  # one instance per /etc/cdc-daemon/NAME.yaml, as user NAME
        assert s["Service.Environment"] == ["CDC_CONFIG=/etc/cdc-daemon/%i.yaml"]
        assert s["Service.User"] == ["%i"] and s["Service.ReadWritePaths"] == ["/var/lib/%i"]
    # One stalled HTTP write plus read can take 2 x typesense.timeout (+ connect): the watchdog
    # (fed before and during every request, see cdc_daemon/heartbeat.py) must outlast that.
    timeout = yaml.safe_load((ROOT / "config" / "cdc.yaml").read_text())["typesense"]["timeout"]
    assert int(s["Service.WatchdogSec"][0]) >= 2 * timeout + 10
    assert int(s["Service.TimeoutStopSec"][0]) > timeout  # a batch in flight may finish


@pytest.mark.parametrize("unit", [*UNITS, "cdc-daemon@service-a.service"])
def test_security_exposure_below_2(units: Path, unit: str) -> None:
    result = systemd_analyze("security", "--offline=yes", "--no-pager", str(units / unit),
                             cwd=units)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) < 2.0, result.stdout
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"exposure {match.group(1)}" in operations, "the reported exposure is out of date"


MDWE = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(78)  # MDWE is not in force
except PermissionError:
    pass
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_runs_under_memory_deny_write_execute(elements_env: Env) -> None:
    """MemoryDenyWriteExecute=yes must not break Python, ctypes (inotify), APSW or httpx."""
    env = elements_env
    insert_elements(env.db, range(1, 21))
    result = subprocess.run(
        [sys.executable, "-c", MDWE, str(CDC_DAEMON), "--config", str(env.config_path), "run",
         "--once"],
        capture_output=True, text=True, timeout=120, cwd=env.tmp,
    )
    # Never a skip: a kernel without PR_SET_MDWE fails here (tests/system runs the shipped units,
    # MemoryDenyWriteExecute=yes included, under a real systemd on any kernel).
    assert result.returncode != 77, "this kernel has no PR_SET_MDWE (Linux < 6.3)"
    assert result.returncode == 0, result.stderr
    assert len(env.documents("elements")) == 20
