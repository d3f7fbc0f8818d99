"""A document Typesense rejects among good ones (retried, then dead-lettered, never blocking the
rest), and verify / verify --repair against documents changed behind the daemon's back."""

from __future__ import annotations

import json
from typing import Any

from support import (
    ELEMENTS_DDL,
    Env,
    app_exec,
    expected_elements,
    insert_elements,
    read_daemon_log,
    start_daemon_logged,
    stop_process,
    wait_for,
)

ELEMENTS = {
    "table": "elements",
    "fields": {"element_id": {"type": "int32"}, "sequence_number": {"type": "int32"},
               "version_number": {"type": "int32"}},
    "default_sorting_field": "sequence_number",
}


def setup(env: Env, **overrides: Any) -> None:
    app_exec(env.db, "PRAGMA journal_mode=WAL", ELEMENTS_DDL)
    env.write_config([ELEMENTS], **overrides)
    env.cli("install", check=True)


def dead_letters(env: Env) -> list[dict[str, Any]]:
    result = env.cli("dead-letters", "list", "--json", check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_rejected_document_is_retried_then_dead_lettered_and_can_be_retried(env: Env) -> None:
    setup(env, sync={"batch_size": 200, "poll_interval": 0.2, "max_attempts": 2})
    insert_elements(env.db, range(1, 41))
    # SQLite keeps text in an INTEGER column; Typesense rejects it for an int32 field.
    app_exec(env.db, "UPDATE elements SET element_id = 'abc' WHERE id = 7")

    daemon = start_daemon_logged(env)
    try:
        wait_for(lambda: env.status()["dead_letters"] == 1 or daemon.poll() is not None,
                 timeout=60, interval=0.3, message="the bad key dead-lettered")
        assert daemon.poll() is None, read_daemon_log(env)
        # Meanwhile the daemon keeps syncing other changes.
        app_exec(env.db, "UPDATE elements SET comment = 'still flowing' WHERE id = 8")
        wait_for(lambda: env.documents("elements").get("8", {}).get("comment")
                 == "still flowing", timeout=10, message="later change synced")
    finally:
        assert stop_process(daemon) == 0, read_daemon_log(env)

    expected = expected_elements(env.db)
    docs = env.documents("elements")
    assert "7" not in docs
    assert docs == {k: v for k, v in expected.items() if k != "7"}  # every other row synced
    letters = dead_letters(env)
    assert len(letters) == 1
    letter = letters[0]
    assert letter["table"] == "elements" and str(letter["key"]) == "7"
    assert letter["attempts"] == 2  # retried once after the first rejection
    assert "element_id" in letter["error"]
    assert {"first_seen", "last_seen"} <= set(letter)
    status = env.status()
    assert status["backlog"] == 0 and status["dead_letters"] == 1
    assert status["tables"]["elements"]["dead_letters"] == 1
    report = env.verify()  # a dead letter is a difference, not hidden
    assert report["in_sync"] is False and report["missing"] == 1
    assert report["tables"]["elements"]["examples"]["missing"] == ["7"]

    app_exec(env.db, "UPDATE elements SET element_id = 7 WHERE id = 7")
    retry = env.cli("dead-letters", "retry", check=True)
    assert "1" in retry.stdout
    env.cli("run", "--once", check=True)
    assert dead_letters(env) == []
    assert env.status()["dead_letters"] == 0
    report = env.verify()
    assert report["in_sync"] is True, report
    assert env.documents("elements") == expected_elements(env.db)


def test_dead_letter_retry_alone_requeues_the_key(env: Env) -> None:
    """`dead-letters retry` without any app change: the key goes back to the log and is tried
    again (and dead-lettered again while the row is still bad)."""
    setup(env, sync={"batch_size": 200, "poll_interval": 0.2, "max_attempts": 1})
    insert_elements(env.db, range(1, 6))
    app_exec(env.db, "UPDATE elements SET element_id = 'x' WHERE id = 3")
    assert env.cli("run", "--once").returncode == 1  # a rejected document: said, exit 1
    first = dead_letters(env)
    assert [str(d["key"]) for d in first] == ["3"]
    assert set(env.documents("elements")) == {"1", "2", "4", "5"}

    assert "1" in env.cli("dead-letters", "retry", check=True).stdout
    status = env.status()
    assert status["dead_letters"] == 0 and status["backlog"] == 1
    assert env.cli("run", "--once").returncode == 1
    letters = dead_letters(env)
    assert [str(d["key"]) for d in letters] == ["3"]
    assert letters[0]["last_seen"] > first[0]["last_seen"]  # it was really tried again

    env.cli("dead-letters", "purge", check=True)
    app_exec(env.db, "DELETE FROM elements WHERE id = 3")
    env.cli("run", "--once", check=True)
    assert dead_letters(env) == []
    assert env.verify()["in_sync"] is True
    assert env.documents("elements") == expected_elements(env.db)


def test_verify_reports_exact_differences_and_repair_fixes_them(env: Env) -> None:
    setup(env)
    insert_elements(env.db, range(1, 51))
    env.cli("run", "--once", check=True)
    assert env.verify()["in_sync"] is True

    base = f"/collections/{env.collection('elements')}/documents"
    for doc_id in ("3", "17", "42"):  # missing
        assert env.http.delete(f"{base}/{doc_id}").status_code == 200
    response = env.http.patch(f"{base}/10", json={"comment": "tampered"})  # stale
    assert response.status_code in (200, 201), response.text
    response = env.http.post(base, json={  # extra
        "id": "9999", "element_type": "ghost", "element_id": 1, "sequence_number": 1,
        "version_number": 1,
    })
    assert response.status_code == 201, response.text

    result = env.cli("verify", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["in_sync"] is False
    assert (report["missing"], report["stale"], report["extra"]) == (3, 1, 1), report
    examples = report["tables"]["elements"]["examples"]
    assert sorted(examples["missing"]) == ["17", "3", "42"]
    assert examples["stale"] == ["10"] and examples["extra"] == ["9999"]
    text = env.cli("verify")
    assert text.returncode == 1 and "NOT in sync" in text.stdout

    repaired = env.cli("verify", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert json.loads(repaired.stdout)["in_sync"] is True

    after = env.cli("verify", "--json")
    assert after.returncode == 0
    assert json.loads(after.stdout)["in_sync"] is True
    assert env.documents("elements") == expected_elements(env.db)
    assert env.status()["backlog"] == 0
