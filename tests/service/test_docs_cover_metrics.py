"""Every metric a running daemon serves is in docs/operations.md's Metrics table. The names come
from a real scrape (each family's `# TYPE` line, present even before a labelled series has a
sample) of a daemon whose key comes from a KMS, so the cdc_kms_* metrics are served too."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from security.helpers import KmsServer
from support import API_KEY, Env

from service.helpers import ELEMENTS_TABLE, DaemonProcess, free_port, wait_scrape

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "kms-token-docs-3b8e"


def metrics_section() -> str:
    text = (ROOT / "docs" / "operations.md").read_text()
    return text.split("\n### Metrics\n", 1)[1].split("\n### ", 1)[0]


def served_metrics(scrape_text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+) \S+$", scrape_text, re.MULTILINE))


def undocumented(names: set[str], docs: str) -> list[str]:
    """Names documented neither as `name` nor as `name{labels}`."""
    return sorted(n for n in names if f"`{n}`" not in docs and f"`{n}{{" not in docs)


def test_every_served_metric_is_in_operations_md(elements_env: Env) -> None:
    env = elements_env
    kms = KmsServer(TOKEN, {"svc": API_KEY}).start()
    token_file = env.tmp / "kms.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port = free_port()
    env.write_config([ELEMENTS_TABLE], metrics={"listen": f"127.0.0.1:{port}"})
    config = yaml.safe_load(env.config_path.read_text())
    config["typesense"] = {"nodes": [env.typesense_url], "timeout": 10,  # the key: KMS only
                           "kms": {"url": kms.url, "key_name": "svc", "token_file": "kms.token"}}
    env.config_path.write_text(yaml.safe_dump(config))
    daemon = DaemonProcess(env)
    try:
        scrape = wait_scrape(port, lambda m: m.value("cdc_kms_up") == 1,
                             message="the key fetched from the KMS", daemon=daemon)
    finally:
        assert daemon.stop() == 0
        kms.stop()
    served = served_metrics(scrape.text)
    assert {"cdc_kms_up", "cdc_api_key_age_seconds", "cdc_typesense_node_up"} <= served, served
    missing = undocumented(served, metrics_section())
    assert not missing, f"add these metrics to docs/operations.md's Metrics table: {missing}"


def test_a_new_metric_without_docs_fails() -> None:
    text = "# HELP cdc_new_total h\n# TYPE cdc_new_total counter\ncdc_new_total 1.0\n" \
           "# TYPE cdc_lag_seconds gauge\n# TYPE cdc_table_backlog_changes gauge\n"
    docs = "| `cdc_lag_seconds` | gauge |\n| `cdc_table_backlog_changes{table}` | gauge |"
    assert undocumented(served_metrics(text), docs) == ["cdc_new_total"]
