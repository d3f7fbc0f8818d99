"""systemd/cdc-daemon@.service and cdc-daemon.service, as shipped in the wheel, under a real
systemd (252, booted in a systemd-nspawn container with no network) against a Typesense running
in the same container.

The container is set up with the steps of docs/operations.md "Install as a service", in that
order (OPERATOR_STEPS). The one change to the shipped template is a drop-in for the test that
shortens WatchdogSec (90 s) to WATCHDOG_SEC, so that a hung loop is killed within seconds.
The tests share the container and run in file order, each from the state the one before left."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import wait_for
from support.wheel import ROOT, build_dist, clean_env
from systemd_container import Machine, booted, missing_tools, rootfs

from cdc_daemon.localserver import server_binary

pytestmark = pytest.mark.typesense  # a Typesense server runs in the container

KEY = "system-test-key"
WATCHDOG_SEC = 4
APPS = {"service-a": "articles", "service-b": "notes"}  # instance (= user, folder) → its table
TYPESENSE_UNIT = f"""[Service]
ExecStart=/usr/local/bin/typesense-server --data-dir=/var/lib/typesense --api-key={KEY} \
  --api-address=127.0.0.1 --api-port=8108 --peering-address=127.0.0.1 --peering-port=8107
StateDirectory=typesense
"""
# The app: stdlib sqlite3 as the app's own user, SQL on stdin.
APP = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(sys.stdin.read())"
SEARCH = """import json, sys, urllib.request as u
r = u.Request("http://127.0.0.1:8108/collections/%s/documents/search?q=*&per_page=250"
              % sys.argv[1], headers={"X-TYPESENSE-API-KEY": sys.argv[2]})
print(json.dumps(sorted(h["document"]["title"] for h in json.load(u.urlopen(r))["hits"])))"""

# docs/operations.md "Install as a service", in its order, for the app NAME (its user NAME, its
# database in /var/lib/NAME). The test's one change: pip installs from the wheels bound into the
# container (it has no network) instead of the wheel file. "the program" and "the unit" are once
# per host, the rest once per app.
OPERATOR_STEPS = {
    "the program": """
python3 -m venv /opt/cdc-daemon
/opt/cdc-daemon/bin/pip install --no-index --find-links /mnt/wheels cdc-daemon
ln -s /opt/cdc-daemon/bin/cdc-daemon /usr/local/bin/cdc-daemon
""",
    "the config": """
install -d -m 0755 /etc/cdc-daemon
sudo -u NAME cdc-daemon init --database /var/lib/NAME/app.db \\
  --api-key-env TYPESENSE_API_KEY > /etc/cdc-daemon/NAME.yaml
chown root:NAME /etc/cdc-daemon/NAME.yaml && chmod 0640 /etc/cdc-daemon/NAME.yaml
(umask 077 && echo "TYPESENSE_API_KEY=$TYPESENSE_API_KEY" > /etc/cdc-daemon/NAME.env)
""",
    "install, check, backfill": """
sudo -u NAME cdc-daemon --config /etc/cdc-daemon/NAME.yaml install
sudo -u NAME --preserve-env=TYPESENSE_API_KEY cdc-daemon --config /etc/cdc-daemon/NAME.yaml check
sudo -u NAME --preserve-env=TYPESENSE_API_KEY cdc-daemon --config /etc/cdc-daemon/NAME.yaml backfill
""",
    "the unit": """
SHARE=$(/opt/cdc-daemon/bin/python -c \\
  'import cdc_daemon, pathlib; print(pathlib.Path(cdc_daemon.__file__).parent / "share")')
install -m 0644 "$SHARE/systemd/cdc-daemon@.service" "$SHARE/systemd/cdc-daemon.service" \\
  /etc/systemd/system/
""",
    "enable": """
systemctl daemon-reload
systemctl enable --now cdc-daemon@NAME
systemctl is-active cdc-daemon@NAME
""",
}


def unit(name: str) -> str:
    return f"cdc-daemon@{name}.service"


def as_operator(machine: Machine, step: str, name: str) -> str:
    script = OPERATOR_STEPS[step].replace("NAME", name)
    return machine.out(f"export TYPESENSE_API_KEY={KEY}\n{script}", timeout=180)


def app_write(machine: Machine, name: str, sql: str) -> None:
    machine.sh(f"sudo -u {name} python3 -c '{APP}' /var/lib/{name}/app.db", stdin=sql)


def titles(machine: Machine, name: str) -> list[str]:
    out = machine.out(f"python3 -c '{SEARCH}' {APPS[name]} {KEY}")
    return list(json.loads(out))


def cli(machine: Machine, name: str, args: str,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """cdc-daemon ARGS as the app's user, as an operator runs it beside the service."""
    return machine.sh(f"sudo -u {name} TYPESENSE_API_KEY={KEY} cdc-daemon --config "
                      f"/etc/cdc-daemon/{name}.yaml {args}", check=check)


def wait_searchable(machine: Machine, name: str, title: str, timeout: float = 30) -> None:
    wait_for(lambda: title in titles(machine, name), timeout, f"{title!r} searchable", 0.2)


def main_pid(machine: Machine, name: str) -> int:
    pid = int(machine.show(unit(name), "MainPID"))
    assert pid > 0, f"{unit(name)} is not running"  # `kill -STOP 0` would stop the caller
    return pid


def wheelhouse(outdir: Path) -> Path:
    """The wheel and every dependency as wheels, from the host's pip (its cache, PyPI). Wheels
    for this venv's Python, 3.11, which is also the image's (Debian bookworm)."""
    wheel = build_dist(outdir / "dist")
    house = outdir / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(house), str(wheel)],
        capture_output=True, text=True, timeout=600, env=clean_env(), cwd=outdir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return house


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    problem = missing_tools()
    if problem:
        pytest.fail(problem, pytrace=False)
    work = tmp_path_factory.mktemp("system")
    binds = {wheelhouse(work): "/mnt/wheels",
             Path(server_binary()): "/usr/local/bin/typesense-server"}
    with booted(rootfs(), binds, work / "console.log") as machine:
        # systemd's debug lines name each notification it gets (READY=1, STOPPING=1, ...).
        machine.sh("systemd-analyze set-log-level debug")
        machine.sh("cat > /etc/systemd/system/typesense.service && systemctl start typesense",
                   stdin=TYPESENSE_UNIT)
        machine.sh("mkdir -p /etc/systemd/system/cdc-daemon@.service.d && cat > "
                   "/etc/systemd/system/cdc-daemon@.service.d/test.conf",
                   stdin=f"[Service]\nWatchdogSec={WATCHDOG_SEC}\n")
        for name, table in APPS.items():  # the apps, with their users and databases
            machine.sh(f"useradd --system --user-group --home-dir /var/lib/{name} {name}\n"
                       f"install -d -o {name} -g {name} -m 0750 /var/lib/{name}")
            app_write(machine, name, f"PRAGMA journal_mode=WAL; CREATE TABLE {table} (id INTEGER"
                      f" PRIMARY KEY, title TEXT NOT NULL); INSERT INTO {table} (title) VALUES"
                      f" ('before install');")
        wait_for(lambda: machine.sh("python3 -c 'import urllib.request as u; "
                                    "u.urlopen(\"http://127.0.0.1:8108/health\")'",
                                    check=False).returncode == 0,
                 60, "Typesense in the container", 0.2)
        as_operator(machine, "the program", "")
        yield machine


# Each test starts from what the tests before it in this file left, or from the fixtures alone
# (pytest-xdist may hand them to workers one by one): it starts what it needs itself.
@pytest.fixture(scope="module")
def service_a(machine: Machine) -> str:
    """service-a installed, configured and running: every step of the docs."""
    as_operator(machine, "the config", "service-a")
    as_operator(machine, "install, check, backfill", "service-a")
    as_operator(machine, "the unit", "")
    assert as_operator(machine, "enable", "service-a").splitlines()[-1] == "active"
    return "service-a"


@pytest.fixture(scope="module")
def service_b(machine: Machine, service_a: str) -> str:
    """service-b installed and configured, not started."""
    as_operator(machine, "the config", "service-b")
    as_operator(machine, "install, check, backfill", "service-b")
    return "service-b"


def test_start_is_active_only_after_ready(machine: Machine, service_b: str) -> None:
    """With Typesense down the unit stays `activating` (no READY=1): the daemon retries; once
    Typesense is back the first iteration succeeds, READY=1 arrives and only then `active`."""
    machine.sh(f"systemctl stop {unit(service_b)} typesense")
    mark = machine.mark()
    machine.sh(f"systemctl enable {unit(service_b)}")
    machine.sh(f"systemctl start --no-block {unit(service_b)}")
    machine.wait_event(unit(service_b), "retrying", mark)
    assert machine.show(unit(service_b), "ActiveState") == "activating"
    machine.sh("systemctl start typesense")
    machine.wait_state(unit(service_b), "active", timeout=60)
    lines = machine.journal(unit(service_b), mark)
    ready = next(i for i, line in enumerate(lines) if "READY=1" in line and "notification" in line)
    started = next(i for i, line in enumerate(lines) if line.startswith("Started "))
    assert ready < started, lines[ready - 2:started + 2]
    assert machine.out(f"systemctl is-enabled {unit(service_b)}") == "enabled"


def test_app_rows_are_searchable_and_the_logs_are_json_in_the_journal(
        machine: Machine, service_a: str) -> None:
    mark = machine.mark()
    app_write(machine, service_a, "INSERT INTO articles (title) VALUES ('written by the app');")
    wait_searchable(machine, service_a, "written by the app")
    assert "before install" in titles(machine, service_a)  # the backfill's
    synced = machine.wait_event(unit(service_a), "batch synced", mark)
    assert synced["level"] == "info" and synced["upserted"] >= 1
    events = machine.events(unit(service_a))
    assert {"running", "batch synced"} <= {e["event"] for e in events}
    assert all({"ts", "level", "event"} <= set(e) for e in events)
    assert KEY not in "\n".join(machine.journal(unit(service_a)))


def test_reload_applies_a_changed_config_and_keeps_the_old_one_when_it_is_bad(
        machine: Machine, service_a: str) -> None:
    config = f"/etc/cdc-daemon/{service_a}.yaml"
    good = machine.out(f"cat {config}")
    changed = good.replace('collection: "articles"',
                           'collection: "articles"\n    where: "title NOT LIKE \'draft%\'"')
    assert changed != good
    machine.sh(f"cat > {config}", stdin=changed + "\n")
    mark = machine.mark()
    machine.sh(f"systemctl reload {unit(service_a)}")
    reloaded = machine.wait_event(unit(service_a), "config reloaded", mark)
    assert "tables" in json.dumps(reloaded), reloaded
    app_write(machine, service_a, "INSERT INTO articles (title) VALUES ('draft one'), "
                                  "('published one');")
    wait_searchable(machine, service_a, "published one")
    assert "draft one" not in titles(machine, service_a)  # the new `where` is in effect

    machine.sh(f"cat > {config}", stdin=changed + "\nbogus_key: 1\n")
    mark = machine.mark()
    machine.sh(f"systemctl reload {unit(service_a)}")
    refused = machine.wait_event(unit(service_a), "reload failed; keeping the previous config",
                                 mark)
    assert "bogus_key" in refused["error"], refused
    machine.wait_state(unit(service_a), "active")
    app_write(machine, service_a, "INSERT INTO articles (title) VALUES ('draft two'), "
                                  "('published two');")
    wait_searchable(machine, service_a, "published two")  # still running, the old config:
    assert "draft two" not in titles(machine, service_a)
    machine.sh(f"cat > {config}", stdin=changed + "\n")


def test_a_hung_loop_is_killed_by_the_watchdog_and_restarted_losing_nothing(
        machine: Machine, service_a: str) -> None:
    before = main_pid(machine, service_a)
    mark = machine.mark()
    machine.sh(f"kill -STOP {before}")
    app_write(machine, service_a, "INSERT INTO articles (title) VALUES ('while hung');"
                                  "UPDATE articles SET title = 'published, edited while hung' "
                                  "WHERE title = 'published one';")
    wait_for(lambda: any("Watchdog timeout" in line for line in machine.journal(unit(service_a),
                                                                             mark)),
             WATCHDOG_SEC + 10, "systemd's watchdog timeout", 0.2)
    # Restart=on-failure, RestartSec=10 as shipped: a new process, active after its READY=1.
    wait_for(lambda: machine.show(unit(service_a), "MainPID") not in ("0", str(before))
             and machine.show(unit(service_a), "ActiveState") == "active",
             60, "the restarted daemon active", 0.2)
    lines = "\n".join(machine.journal(unit(service_a), mark))
    assert f"Killing process {before} (cdc-daemon) with signal SIGABRT" in lines, lines[-3000:]
    assert "status=6/ABRT" in lines, lines[-3000:]
    assert machine.show(unit(service_a), "NRestarts") != "0"
    wait_searchable(machine, service_a, "published, edited while hung")
    wait_for(lambda: cli(machine, service_a, "verify", check=False).returncode == 0, 30,
             "verify in sync")
    assert "while hung" in titles(machine, service_a)


def test_the_sandbox_holds(machine: Machine, service_a: str) -> None:
    """The daemon runs as the instance's user; its file system is read-only but for the
    database's folder (it needs nothing else: it runs and syncs in it)."""
    pid = main_pid(machine, service_a)
    assert machine.out(f"ps -o user= -p {pid}") == service_a
    inside = f"nsenter -t {pid} -m"  # the daemon's own mount namespace
    uid = machine.out(f"id -u {service_a}")
    machine.sh(f"{inside} -S {uid} -G {uid} touch /var/lib/{service_a}/probe && "
               f"rm /var/lib/{service_a}/probe")
    for elsewhere in ("/etc/probe", "/var/lib/service-b/probe", "/opt/cdc-daemon/probe",
                      "/usr/local/bin/probe", "/root/probe", "/home/probe"):
        refused = machine.sh(f"{inside} touch {elsewhere}", check=False)  # even as root
        assert refused.returncode != 0, elsewhere
        assert re.search("Read-only file system|Permission denied|No such file",
                         refused.stderr), refused.stderr
    for private in ("/tmp", "/var/tmp"):  # PrivateTmp=yes: its own, seen by nothing else
        machine.sh(f"{inside} -S {uid} -G {uid} touch {private}/probe")
        assert machine.sh(f"test -e {private}/probe", check=False).returncode == 1
    # The key file is root's alone (systemd reads it before dropping to the app's user); the
    # config is readable by the app's group.
    assert machine.out(f"stat -c '%a %U' /etc/cdc-daemon/{service_a}.env") == "600 root"
    assert machine.out(f"stat -c '%a %U %G' /etc/cdc-daemon/{service_a}.yaml") == (
        f"640 root {service_a}")
    assert machine.sh(f"sudo -u {service_a} cat /etc/cdc-daemon/{service_a}.env",
                      check=False).returncode != 0
    assert machine.show(unit(service_a), "ActiveState") == "active"
    events = machine.events(unit(service_a))  # the daemon met no wall of its sandbox
    assert not [e for e in events if re.search(
        "Read-only file system|Permission denied|Operation not permitted", json.dumps(e))]


def test_security_exposure_is_the_one_the_docs_quote(machine: Machine, service_a: str) -> None:
    report = machine.out(f"systemd-analyze security --no-pager {unit(service_a)}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) OK", report)
    assert match, report
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert f"exposure {match.group(1)}" in operations, report[-600:]
    assert f'`systemd-analyze security` rates {match.group(1)}, "OK"' in (
        ROOT / "README.md").read_text().replace("\n", " ")


def test_two_instances_run_side_by_side(machine: Machine, service_a: str,
                                        service_b: str) -> None:
    assert as_operator(machine, "enable", service_b).splitlines()[-1] == "active"
    app_write(machine, service_b, "INSERT INTO notes (title) VALUES ('a note');")
    app_write(machine, service_a, "INSERT INTO articles (title) VALUES ('an article');")
    wait_searchable(machine, service_b, "a note")
    wait_searchable(machine, service_a, "an article")
    assert "an article" not in titles(machine, service_b)
    assert machine.out(f"ps -o user= -p {main_pid(machine, service_b)}") == service_b
    assert main_pid(machine, service_b) != main_pid(machine, service_a)
    for name in APPS:  # the "see the backlog" line of the day-to-day table
        status = cli(machine, name, "status").stdout
        assert f"daemon: running (pid {main_pid(machine, name)})" in status, status
    assert machine.show(unit(service_a), "ActiveState") == "active"


def test_stop_exits_0_in_time_without_acknowledging_unsynced_changes(
        machine: Machine, service_a: str) -> None:
    machine.sh(f"systemctl start {unit(service_a)}")
    mark = machine.mark()
    values = ", ".join(f"('stop burst {i}')" for i in range(2000))
    app_write(machine, service_a, f"INSERT INTO articles (title) VALUES {values};")
    started = time.monotonic()
    machine.sh(f"systemctl stop {unit(service_a)}")
    took = time.monotonic() - started
    assert took < int(machine.show(unit(service_a), "TimeoutStopUSec").rstrip("s") or 45), took
    assert machine.show(unit(service_a), "Result") == "success"
    assert machine.show(unit(service_a), "ExecMainStatus") == "0"
    lines = machine.journal(unit(service_a), mark)
    assert any("STOPPING=1" in line and "notification" in line for line in lines), lines[-20:]
    assert "stopped" in {e["event"] for e in machine.events(unit(service_a), mark)}
    # What the stopped daemon did not acknowledge is still in the log: draining only the log
    # brings Typesense in step, so nothing was acknowledged unsynced.
    cli(machine, service_a, "run --once")
    cli(machine, service_a, "verify")
    machine.sh(f"systemctl start {unit(service_a)}")


def test_the_single_app_unit_runs_as_shipped(machine: Machine, service_a: str) -> None:
    """systemd/cdc-daemon.service: /etc/cdc-daemon/cdc.yaml, user service-a, /var/lib/service-a
    (instead of the instance for the same database, for a while)."""
    machine.sh(f"systemctl stop {unit(service_a)}")
    machine.sh(f"cp -p /etc/cdc-daemon/{service_a}.yaml /etc/cdc-daemon/cdc.yaml && "
               f"cp -p /etc/cdc-daemon/{service_a}.env /etc/cdc-daemon/cdc.env")
    started = machine.out("systemctl daemon-reload && systemctl enable --now cdc-daemon && "
                          "systemctl is-active cdc-daemon")
    assert started.splitlines()[-1] == "active"
    assert machine.show("cdc-daemon.service", "DropInPaths") == ""  # exactly as shipped
    assert machine.out(f"ps -o user= -p {machine.show('cdc-daemon.service', 'MainPID')}") == (
        service_a)
    app_write(machine, service_a, "INSERT INTO articles (title) VALUES ('single unit');")
    wait_searchable(machine, service_a, "single unit")
    machine.sh("systemctl disable --now cdc-daemon")
    assert machine.show("cdc-daemon.service", "Result") == "success"
    machine.sh(f"systemctl start {unit(service_a)}")
