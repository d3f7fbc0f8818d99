"""The Typesense key's actions as docs/security.md lists them (docs/operations.md links there) are
enough: a key scoped to exactly those runs check, install, backfill, run --once and verify. And
the list is not merely generous: without `aliases:*` backfill is refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
from support import (
    API_KEY,
    ELEMENTS_CONFIG,
    ELEMENTS_DDL,
    Env,
    app_exec,
    expected_elements,
    insert_elements,
)

from cdc_daemon.localserver import LocalTypesense

ROOT = Path(__file__).resolve().parents[2]
SECURITY = ROOT / "docs" / "security.md"
ELEMENTS = {k: v for k, v in ELEMENTS_CONFIG.items() if k != "collection"}  # env names it


def documented_actions() -> list[str]:
    """The required actions of the key table in docs/security.md (rows not marked optional)."""
    section = SECURITY.read_text().split("## The Typesense key and its rotation", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z]+:[a-z*]+)`( \(optional\))? \|", section, re.MULTILINE)
    required = [action for action, optional in rows if not optional]
    # The doc's curl example creates the same key as its table describes.
    example = re.search(r'"actions": (\[[^]]*\])', section)
    assert example and json.loads(example.group(1)) == required, (example, required)
    return required


def scoped_key(typesense: LocalTypesense, actions: list[str]) -> str:
    response = httpx.post(
        f"{typesense.url}/keys", headers={"X-TYPESENSE-API-KEY": API_KEY}, timeout=10,
        json={"description": "cdc-daemon docs test", "actions": actions, "collections": ["*"]},
    )
    response.raise_for_status()
    return str(response.json()["value"])


def app_with_key(env: Env, typesense: LocalTypesense, actions: list[str]) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    insert_elements(env.db, range(1, 21))  # before install: only backfill brings them
    env.write_config([ELEMENTS], typesense={"api_key": scoped_key(typesense, actions)})


def test_the_documented_actions_are_enough(env: Env, typesense: LocalTypesense) -> None:
    actions = documented_actions()
    assert "aliases:*" in actions  # every collection is behind an alias
    app_with_key(env, typesense, actions)
    for step in ("install", "check", "backfill"):
        result = env.cli(step)
        assert result.returncode == 0, (step, result.stdout, result.stderr)
    insert_elements(env.db, range(21, 31))  # logged by the triggers: run --once sends them
    result = env.cli("run", "--once")
    assert result.returncode == 0, result.stderr
    result = env.cli("verify")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert env.documents("elements") == expected_elements(env.db)


def test_without_aliases_the_steps_fail(env: Env, typesense: LocalTypesense) -> None:
    actions = [action for action in documented_actions() if action != "aliases:*"]
    app_with_key(env, typesense, actions)
    env.cli("install", check=True)  # SQLite only
    result = env.cli("backfill")
    assert result.returncode == 1, result.stdout
    assert "the API key was refused" in result.stderr, result.stderr
    assert env.documents("elements") == {}


def test_operations_md_links_to_the_one_list() -> None:
    """One list of the key's actions: the install guide links to it instead of keeping a copy."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "(security.md#the-typesense-key-and-its-rotation)" in operations
    assert not re.findall(r"`(?:documents|collections):", operations)
