"""log_schema.py is the one home of the daemon's footprint in the app's database: every op letter
and state name is written once there, documented in docs/architecture.md ("The change log"),
and stays what earlier versions stored (a database written by one version is read by the
next)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from cdc_daemon import log_schema
from cdc_daemon.log_schema import STATE_PREFIXES, LogTables, Op
from cdc_daemon.triggers import expected_triggers, log_guard_trigger

from .helpers import table

ROOT = Path(__file__).resolve().parents[2]
# What earlier versions stored: changing any of these strands an existing database.
STORED_OPS = {"INSERT": "I", "UPDATE": "U", "DELETE": "D", "BACKFILL": "B", "RETRY": "R",
              "RESEND": "T", "REPAIR": "V", "JOINED": "J", "EXPANDED": "E"}
STORED_STATE_NAMES = {
    "ACKNOWLEDGING": "acknowledging",
    "DELETED_BY_OTHERS": "deleted-by-others",
    "DATABASE_FILE": "database-file",
    "LAST_SYNCED": "last-synced",
    "BACKFILL_PREFIX": "backfill:",
    "REBUILD_PREFIX": "rebuild:",
    "RETIRE_PREFIX": "retire:",
    "CREATED_PREFIX": "created:",
    "FOLLOW_PREFIX": "follow:",
    "MAPPING_PREFIX": "mapping:",
    "LEFTOVER_PREFIX": "leftover:",
    "SWEEP_PREFIX": "sweep:",
    "TRIGGERS_MISSING_PREFIX": "triggers-missing:",
}


def _documented_section(title: str) -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_op_letters_are_the_ones_stored_so_far() -> None:
    assert {op.name: op.value for op in Op} == STORED_OPS
    assert all(op == letter for op, letter in zip(Op, STORED_OPS.values(), strict=True))


def test_the_state_names_are_the_ones_stored_so_far() -> None:
    assert {name: getattr(log_schema, name) for name in STORED_STATE_NAMES} == STORED_STATE_NAMES
    assert set(STATE_PREFIXES) == {v for v in STORED_STATE_NAMES.values() if v.endswith(":")}


def test_no_state_prefix_holds_a_like_wildcard_or_starts_another() -> None:
    """StateStore.with_prefix reads with LIKE '<prefix>%'."""
    for prefix in STATE_PREFIXES:
        assert not set(prefix) & {"%", "_"}, prefix
        assert [p for p in STATE_PREFIXES if p.startswith(prefix)] == [prefix]


def test_every_op_is_documented_in_the_readme() -> None:
    section = _documented_section("The change log")
    documented = re.findall(r"^\| `([A-Z])` \|", section, flags=re.MULTILINE)
    assert sorted(documented) == sorted(op.value for op in Op)


def test_the_readme_names_every_state_name() -> None:
    section = _documented_section("The change log")
    for name in STORED_STATE_NAMES.values():
        assert f"`{name}" in section, name


def test_no_sql_template_spells_an_op_letter() -> None:
    """The letters exist once, in Op: the templates get them as parameters."""
    for path in (ROOT / "sql").glob("*.sql"):
        assert not re.search(r"'[A-Z]'", path.read_text(encoding="utf-8")), path.name


def test_every_letter_the_triggers_write_is_an_op() -> None:
    info = table(
        "t", [("id", "TEXT COLLATE NOCASE"), ("email", "TEXT")], ("id",), unique=(("email",),)
    )
    info = dataclasses.replace(info, key_collations=("NOCASE",))
    triggers = expected_triggers(LogTables("change_log"), info)
    written = [re.findall(r"'([A-Z])'", sql) for sql in triggers.values()]
    assert all(len(letters) == 1 for letters in written), triggers  # one op per trigger
    assert {letters[0] for letters in written} == {Op.INSERT, Op.UPDATE, Op.DELETE}
    assert len(triggers) == 8  # insert, update, update_key, delete, 2 unique, 2 key collation


def test_the_trigger_text_is_what_earlier_versions_installed() -> None:
    """Installed triggers are compared by their text: a changed byte would make every existing
    database report its triggers as outdated."""
    names = LogTables("change_log")
    triggers = expected_triggers(names, table("t", [("id", "INTEGER")], ("id",)))
    assert triggers["change_log:t:insert"] == (
        'CREATE TRIGGER "change_log:t:insert" AFTER INSERT ON "t" BEGIN\n'
        "  INSERT INTO \"change_log\" (tbl, pk, op) VALUES ('t', NEW.\"id\", 'I');\n"
        "END"
    )
    assert log_guard_trigger(names)["change_log:change_log:guard"] == (
        'CREATE TRIGGER "change_log:change_log:guard" AFTER DELETE ON "change_log"\n'
        "WHEN NOT EXISTS (SELECT 1 FROM \"change_log_state\" WHERE name = 'acknowledging') BEGIN\n"
        "  INSERT INTO \"change_log_state\" (name, value) VALUES ('deleted-by-others', 1)\n"
        "    ON CONFLICT (name) DO UPDATE SET value = value + 1;\n"
        "END"
    )
