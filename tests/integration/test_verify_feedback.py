"""verify's feedback (issue 15, item 4): its progress (the counts told in-process; a bar on a
terminal's stderr, none when piped or with --json) and what `--repair` names (the ids it repaired,
next to counts from after the repair). Real Typesense, the app's writes from a process of its
own, the CLI as a subprocess (under a pseudo-terminal for the bar)."""

from __future__ import annotations

import json
import os
import pty
import select
from typing import Any
from urllib.parse import quote

import pytest
from support import Env, app_exec, app_write, launcher

from cdc_daemon import verify, wiring
from cdc_daemon.config import load_config
from cdc_daemon.verify import VerifyProgress, verify_tables

ROWS = 25


def _items(env: Env, synced: bool = True) -> None:
    """ROWS rows, installed; `synced`: their documents made (else the log holds them)."""
    app_exec(env.db, "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER, t TEXT)")
    env.write_config([{"table": "items", "fields": {"n": {"type": "int32"}}}])
    env.cli("install", check=True)
    app_write(env.db, [[("INSERT INTO items VALUES (?, ?, 'x')", [i, i]) for i in
                        range(1, ROWS + 1)]])
    if synced:
        env.cli("run", "--once", check=True)


def _told(env: Env) -> list[tuple[str, int, int | None]]:
    """verify's progress, as its callback is told it: (stage, done, total) each time."""
    told: list[tuple[str, int, int | None]] = []

    def tell(progress: VerifyProgress) -> None:
        assert progress.table == "items"
        told.append((progress.stage, progress.done, progress.total))

    with wiring.command_runtime(load_config(env.config_path)) as runtime:
        drainer = wiring.drainer(runtime)
        try:
            summary, _ = verify_tables(
                wiring.command_verifier(runtime, drainer),
                list(runtime.mappings.values()),
                runtime.syncer.collections,
                lambda: runtime.log_status.summary(list(runtime.mappings)),
                on_progress=tell,
            )
        finally:
            drainer.close()
    assert summary["in_sync"], summary
    return told


def test_the_progress_counts_grow_to_each_total(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    _items(env)
    monkeypatch.setattr(verify, "PAGE_SIZE", 4)  # told every page of rows
    monkeypatch.setattr(verify, "DOCUMENT_BATCH", 6)  # and every batch of documents
    told = _told(env)
    stages = [stage for stage, _, _ in told]
    assert stages == sorted(stages), told  # the documents are read, then the rows compared
    documents = [(done, total) for stage, done, total in told if stage == "documents"]
    rows = [(done, total) for stage, done, total in told if stage == "rows"]
    assert documents == [(n, ROWS) for n in (0, 6, 12, 18, 24, 25)], told
    assert rows == [(n, ROWS) for n in (0, 4, 8, 12, 16, 20, 24, 25)], told


def _on_terminal(env: Env, *args: str) -> tuple[int, str, str]:
    """The CLI with its stderr on a pseudo-terminal: (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    try:
        process = launcher.start(*args, config=env.config_path, cwd=env.tmp, stderr=slave,
                                 extra_env={"TERM": "xterm", "COLUMNS": "120"})
    finally:
        os.close(slave)
    screen = bytearray()
    try:
        while True:  # until the child closes the terminal (EOF, or EIO on Linux)
            ready, _, _ = select.select([master], [], [], 120)
            assert ready, f"{args}: nothing on the terminal for 120 s"
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        assert process.stdout is not None
        stdout = process.stdout.read()
        code = process.wait(timeout=60)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return code, stdout, screen.decode(errors="replace")


def test_a_terminal_shows_the_bar_on_stderr_and_a_pipe_gets_none(env: Env) -> None:
    _items(env)
    code, stdout, screen = _on_terminal(env, "verify")
    assert code == 0, (stdout, screen)
    assert "items: documents" in screen and "items: rows" in screen, screen
    assert f"{ROWS}/{ROWS}" in screen, screen
    assert "items: rows" not in stdout and "in sync" in stdout, stdout
    # --json on a terminal: no bar.
    code, stdout, screen = _on_terminal(env, "verify", "--json")
    assert code == 0 and json.loads(stdout)["in_sync"] is True, stdout
    assert "items: rows" not in screen, screen
    # Piped: no bar either.
    piped = env.cli("verify")
    assert piped.returncode == 0, piped.stderr
    assert "items: rows" not in piped.stderr + piped.stdout, piped


def test_backfill_draws_its_bar_on_stderr_too(env: Env) -> None:
    """The bar verify shares with backfill: on the terminal (stderr), never in stdout."""
    _items(env, synced=False)
    code, stdout, screen = _on_terminal(env, "backfill")
    assert code == 0, (stdout, screen)
    assert "━" in screen and f"{ROWS}/{ROWS}" in screen, screen
    assert stdout == f"items: backfilled {ROWS} rows\n", stdout


def _document_path(env: Env, doc_id: str = "") -> str:
    path = f"/collections/{quote(env.collection('items'), safe='')}/documents"
    return f"{path}/{quote(doc_id, safe='')}" if doc_id else path


def _break(env: Env, missing: list[int], stale: int, extra: list[str]) -> None:
    """Behind the daemon's back, in Typesense itself: documents deleted, one altered, strays."""
    for key in missing:
        env.http.delete(_document_path(env, str(key))).raise_for_status()
    env.http.patch(_document_path(env, str(stale)), json={"t": "altered"}).raise_for_status()
    for doc_id in extra:
        document = {"id": doc_id, "n": 7, "t": "stray"}
        env.http.post(_document_path(env), json=document).raise_for_status()


def test_repair_names_every_id_it_repaired_and_counts_after_it(env: Env) -> None:
    _items(env)
    _break(env, missing=[3, 4], stale=5, extra=["999", "manual-1"])
    repair = env.cli("verify", "--repair", "--json", timeout=180)
    assert repair.returncode == 0, repair.stderr
    summary: dict[str, Any] = json.loads(repair.stdout)
    items = summary["tables"]["items"]
    assert {kind: sorted(ids) for kind, ids in items["repaired"].items()} == {
        "missing": ["3", "4"], "stale": ["5"], "extra": ["999", "manual-1"]}
    # The counts are the comparison after the repair; the fields kept their meaning.
    assert (items["rows"], items["documents"]) == (ROWS, ROWS), items
    assert (items["missing"], items["stale"], items["extra"]) == (0, 0, 0), items
    assert summary["in_sync"] is True and summary["repaired"] == 5, summary
    again = env.cli("verify", "--json")
    assert again.returncode == 0 and "repaired" not in json.loads(again.stdout)["tables"]["items"]


def test_repair_text_names_the_first_ids(env: Env) -> None:
    _items(env)
    _break(env, missing=list(range(1, 8)), stale=9, extra=["manual-1"])
    repair = env.cli("verify", "--repair", timeout=180)
    assert repair.returncode == 0, repair.stderr
    lines = repair.stdout.splitlines()
    assert lines[0] == (f"items: {ROWS} rows, {ROWS} documents: 0 missing, 0 extra, 0 stale"
                        " (after the repair)"), lines
    assert "  repaired 7 missing: '1', '2', '3', '4', '5' and 2 more (all in --json)" in lines
    assert "  repaired 1 stale: '9'" in lines and "  repaired 1 extra: 'manual-1'" in lines, lines
    assert lines[-2:] == ["repaired: 9 differences sent again", "in sync"], lines
