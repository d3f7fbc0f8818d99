"""config/prometheus/alerts.yml: valid for promtool, its unit tests pass (cases that fire and cases
that must not), the unit tests catch a broken rule, and every alert is documented with a runbook
anchor that exists in docs/operations.md."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool_command(*args: str) -> list[str]:
    tool = shutil.which("promtool")
    # Never skipped: scripts/test.sh installs it (Debian package `prometheus`).
    assert tool, "promtool not found: apt-get install prometheus (scripts/test.sh does it)"
    return [tool, *args]


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(promtool_command(*args), capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub generates for the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


# Plausible mistakes in the rules, each of which the rule tests must catch: (text, replacement).
BROKEN_RULES = {
    "lag-without-for": ("expr: cdc_lag_seconds > 120\n        for: 5m",
                        "expr: cdc_lag_seconds > 120\n        for: 0m"),
    "backlog-bursts": ("and min_over_time(cdc_backlog_changes[10m]) > 0", ""),
    "stalled-before-first-success": ("\n            and cdc_last_success_timestamp_seconds > 0)",
                                     ")"),
    "up-inverted": ("expr: cdc_typesense_up == 0", "expr: cdc_typesense_up == 1"),
    "no-absent": (' or absent(up{job="cdc-daemon"})', ""),
}


class RuleTestRuns:
    """`promtool test rules` on the real rules ("good") and on a broken copy of them per
    BROKEN_RULES entry (in a directory of its own), all started at once: each run is ~0.25 s of
    CPU, and side by side they take about the time of half of them on two cores."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self.dirs = {"good": RULES.parent}
        for name, (old, new) in BROKEN_RULES.items():
            self.dirs[name] = tmp_path_factory.mktemp(name)
            (self.dirs[name] / "alerts.yml").write_text(RULES.read_text().replace(old, new))
            shutil.copy(RULE_TESTS, self.dirs[name] / "alerts_test.yml")
        # GOMAXPROCS=1: the runs share the cores between them rather than each spreading its
        # threads over both (measured: 6 runs at once take 1.0 s instead of 1.4 s).
        env = {**os.environ, "GOMAXPROCS": "1"}
        self.running = {
            name: subprocess.Popen(promtool_command("test", "rules", RULE_TESTS.name), cwd=cwd,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
            for name, cwd in self.dirs.items()
        }
        self.results: dict[str, subprocess.CompletedProcess[str]] = {}

    def result(self, name: str) -> subprocess.CompletedProcess[str]:
        if name not in self.results:
            out, err = self.running[name].communicate(timeout=60)
            self.results[name] = subprocess.CompletedProcess(
                self.running[name].args, self.running[name].returncode, out, err)
        return self.results[name]

    def close(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def rule_test_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuleTestRuns]:
    runs = RuleTestRuns(tmp_path_factory)
    yield runs
    runs.close()


def test_promtool_test_rules(rule_test_runs: RuleTestRuns) -> None:
    result = rule_test_runs.result("good")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("name", BROKEN_RULES)
def test_rule_tests_catch_a_broken_rule(rule_test_runs: RuleTestRuns, name: str) -> None:
    """The unit tests are not vacuous: each of these plausible mistakes makes them fail."""
    old, _new = BROKEN_RULES[name]
    assert old in RULES.read_text()
    broken = rule_test_runs.dirs[name]
    assert promtool("check", "rules", "alerts.yml", cwd=broken).returncode == 0
    result = rule_test_runs.result(name)
    assert result.returncode != 0, result.stdout


def test_every_alert_is_documented_and_tested() -> None:
    anchors = github_anchors(OPERATIONS.read_text())
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [case for group in tests for case in group["alert_rule_test"]]
    wanted = {"CdcDaemonDown", "CdcLoopStalled", "CdcLagHigh", "CdcBacklogGrowing",
              "CdcTypesenseUnreachable", "CdcDeadLetters", "CdcTriggersMissing",
              "CdcDatabaseUnreadable"}
    names = {rule["alert"] for rule in rules()}
    assert wanted <= names, wanted - names
    for rule in rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        notes = rule["annotations"]
        assert notes["summary"] and len(notes["description"]) > 80, name
        anchor = notes["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{name}: #{anchor} is not a heading of docs/operations.md"
        fires = [c for c in cases if c["alertname"] == name and c["exp_alerts"]]
        silent = [c for c in cases if c["alertname"] == name and not c["exp_alerts"]]
        assert fires and silent, f"{name} needs a case that fires and one that must not"
