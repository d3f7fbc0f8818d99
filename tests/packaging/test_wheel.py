"""`python -m build` makes a wheel and an sdist with everything cdc-daemon needs at run time;
the wheel, installed into a fresh virtualenv outside the repository, syncs an app end to end."""

from __future__ import annotations

import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest
from support import API_KEY, app_exec
from support.wheel import ROOT, build_dist, clean_env, install_wheel

from cdc_daemon.localserver import LocalTypesense

# At run time: the SQL templates. For the operator: the example config, the alert rules and the
# dashboard, the systemd units (README: "Running as a service" says where they are).
PACKAGED = {
    "cdc_daemon/sql/log.sql": "sql/log.sql",
    "cdc_daemon/share/config/cdc.yaml": "config/cdc.yaml",
    "cdc_daemon/share/config/prometheus/alerts.yml": "config/prometheus/alerts.yml",
    "cdc_daemon/share/config/grafana/cdc-daemon.json": "config/grafana/cdc-daemon.json",
    "cdc_daemon/share/systemd/cdc-daemon.service": "systemd/cdc-daemon.service",
    "cdc_daemon/share/systemd/cdc-daemon@.service": "systemd/cdc-daemon@.service",
}


# The whole file runs with the full suite only: building the wheel takes ~10 s, too long for the
# fast subset, and the smoke test needs the server.
pytestmark = pytest.mark.typesense


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dist(tmp_path_factory.mktemp("dist"))


def test_wheel_and_sdist_hold_the_run_time_files(dist: Path) -> None:
    with zipfile.ZipFile(dist) as wheel:
        names = set(wheel.namelist())
        for packaged, source in PACKAGED.items():
            assert packaged in names, packaged
            assert wheel.read(packaged) == (ROOT / source).read_bytes(), packaged
    templates = {p.name for p in (ROOT / "sql").glob("*.sql")}
    assert templates <= {Path(n).name for n in names if n.startswith("cdc_daemon/sql/")}
    (sdist,) = dist.parent.glob("cdc_daemon-*.tar.gz")
    top = f"{dist.name.split('-')[0]}-{dist.name.split('-')[1]}"
    with tarfile.open(sdist) as archive:
        in_sdist = {name.removeprefix(top + "/") for name in archive.getnames()}
    assert set(PACKAGED.values()) | {"pyproject.toml", "README.md"} <= in_sdist


def test_installed_wheel_syncs_an_app(dist: Path, tmp_path: Path,
                                      typesense: LocalTypesense) -> None:
    bin_dir = install_wheel(dist, tmp_path / "venv")
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import cdc_daemon; print(cdc_daemon.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=clean_env(),
    ).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "venv"), where  # not the repository's sources
    assert not tmp_path.is_relative_to(ROOT)
    site_packages = Path(where).parent.parent  # cdc_daemon/share/: docs/operations.md
    for packaged in PACKAGED:
        assert (site_packages / packaged).is_file(), packaged

    table = f"wheel_smoke_{tmp_path.name[-12:].replace('-', '_')}"
    app = tmp_path / "app.db"
    app_exec(app, f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
             f"INSERT INTO {table} (title) VALUES ('before install'), ('second')")
    env = clean_env(TYPESENSE_API_KEY=API_KEY)

    def cli(*args: str) -> str:
        result = subprocess.run([str(bin_dir / "cdc-daemon"), *args], capture_output=True,
                                text=True, timeout=180, cwd=tmp_path, env=env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    (tmp_path / "cdc.yaml").write_text(cli("init", "--database", str(app), "--typesense-url",
                                           typesense.url, "--api-key-env", "TYPESENSE_API_KEY"))
    cli("install")
    cli("backfill")
    app_exec(app, f"INSERT INTO {table} (title) VALUES ('after install')")
    cli("run", "--once")
    cli("verify")
