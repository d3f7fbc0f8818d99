"""The package as operators get it: `python -m build` (the wheel built from the sdist, so both
are complete), and a fresh virtualenv with only that wheel in it, outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_dist(outdir: Path) -> Path:
    """sdist + wheel of this repository in `outdir`; returns the wheel."""
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), str(ROOT)],
        capture_output=True, text=True, timeout=300, env=clean_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = outdir.glob("cdc_daemon-*.whl")
    return wheel


def install_wheel(wheel: Path, target: Path) -> Path:
    """A new virtualenv in `target` with `wheel` and its dependencies; returns its bin/."""
    venv.create(target, with_pip=False)  # this venv's pip installs into it: 5 s less
    bin_dir = target / "bin"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "--quiet",
         "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=600, env=clean_env(), cwd=target,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return bin_dir


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that points Python at the repository or this venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CDC_CONFIG", "NOTIFY_SOCKET")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)))
    return {**env, **extra}
