"""config/prometheus/alerts.yml: valid for promtool, its unit tests pass (cases that fire and cases
that must not), the unit tests catch a broken rule, and every alert is documented with a runbook
anchor that exists in docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    # Never skipped: scripts/test.sh installs it (Debian package `prometheus`).
    assert tool, "promtool not found: apt-get install prometheus (scripts/test.sh does it)"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


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


def test_promtool_test_rules() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("expr: cdc_lag_seconds > 120\n        for: 5m",
         "expr: cdc_lag_seconds > 120\n        for: 0m"),
        ("and min_over_time(cdc_backlog_changes[10m]) > 0", ""),
        ("\n            and cdc_last_success_timestamp_seconds > 0)", ")"),
        ("expr: cdc_typesense_up == 0", "expr: cdc_typesense_up == 1"),
        (' or absent(up{job="cdc-daemon"})', ""),
    ],
    ids=["lag-without-for", "backlog-bursts", "stalled-before-first-success", "up-inverted",
         "no-absent"],
)
def test_rule_tests_catch_a_broken_rule(tmp_path: Path, old: str, new: str) -> None:
    """The unit tests are not vacuous: each of these plausible mistakes makes them fail."""
    text = RULES.read_text()
    assert old in text
    (tmp_path / "alerts.yml").write_text(text.replace(old, new))
    shutil.copy(RULE_TESTS, tmp_path / "alerts_test.yml")
    assert promtool("check", "rules", "alerts.yml", cwd=tmp_path).returncode == 0
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
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
