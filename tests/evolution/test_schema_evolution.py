"""Schema evolution against a real Typesense, with the daemon running and the app writing:
an added column is patched in place, other changes rebuild behind the alias, and searches through
the alias never miss a document."""

from __future__ import annotations

import signal
import subprocess
import threading
from typing import Any

import yaml
from support import Env, app_exec, insert_elements, wait_for


def _search_count(env: Env, alias: str) -> int:
    response = env.http.get(f"/collections/{alias}/documents/search",
                            params={"q": "*", "query_by": "element_type", "per_page": 0})
    response.raise_for_status()
    return int(response.json()["found"])


class Searcher(threading.Thread):
    """Searches through the alias continuously, recording the lowest count it ever saw."""

    def __init__(self, env: Env, alias: str) -> None:
        super().__init__(daemon=True)
        self.env, self.alias = env, alias
        self.halt = threading.Event()
        self.lowest: int | None = None
        self.searches = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                found = _search_count(self.env, self.alias)
            except Exception as exc:  # any failed search is a gap
                self.errors.append(repr(exc))
                continue
            self.searches += 1
            self.lowest = found if self.lowest is None else min(self.lowest, found)


def _fields(env: Env, alias: str) -> dict[str, dict[str, Any]]:
    collection = env.http.get(f"/collections/{alias}").json()
    return {f["name"]: f for f in collection["fields"]}


def _stop(daemon: subprocess.Popen[str]) -> str:
    daemon.send_signal(signal.SIGTERM)
    _out, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    return err


def test_added_column_is_patched_and_rows_resent(elements_env: Env) -> None:
    env = elements_env
    alias = env.collection("elements")
    insert_elements(env.db, range(1, 301))
    daemon = env.start_daemon()
    try:
        wait_for(lambda: len(env.documents("elements")) == 300, message="initial sync")
        physical = env.http.get(f"/aliases/{alias}").json()["collection_name"]
        assert physical == f"{alias}__v1"
        app_exec(env.db, "ALTER TABLE elements ADD COLUMN tag TEXT",
                 "UPDATE elements SET tag = 'odd' WHERE id % 2 = 1")
        wait_for(lambda: "tag" in _fields(env, alias), message="field added")
        assert _fields(env, alias)["tag"]["optional"] is True
        def tagged() -> int:
            return sum(d.get("tag") == "odd" for d in env.documents("elements").values())

        wait_for(lambda: tagged() == 150, message="rows re-sent with the new field")
        # patched in place: still the same collection behind the alias
        assert env.http.get(f"/aliases/{alias}").json()["collection_name"] == physical
    finally:
        log = _stop(daemon)
    assert "fields added" in log
    assert env.verify()["in_sync"] is True


def test_changed_override_rebuilds_behind_alias_without_gaps(elements_env: Env) -> None:
    env = elements_env
    alias = env.collection("elements")
    insert_elements(env.db, range(1, 4001))
    daemon = env.start_daemon()
    searcher = Searcher(env, alias)
    try:
        wait_for(lambda: len(env.documents("elements")) == 4000, timeout=60,
                 message="initial sync")
        searcher.start()
        config = yaml.safe_load(env.config_path.read_text())
        config["tables"][0]["fields"]["element_type"] = {"facet": True}
        env.config_path.write_text(yaml.safe_dump(config))
        daemon.send_signal(signal.SIGHUP)
        insert_elements(env.db, range(4001, 4101), comment="during rebuild")
        wait_for(lambda: env.http.get(f"/aliases/{alias}").json()["collection_name"]
                 == f"{alias}__v2", timeout=120, message="alias switched to v2")
        wait_for(lambda: _search_count(env, alias) == 4100, message="writes during rebuild")
    finally:
        searcher.halt.set()
        searcher.join(timeout=10)
        log = _stop(daemon)
    assert "rebuilding collection" in log and "alias switched" in log
    assert searcher.searches > 0 and not searcher.errors
    assert searcher.lowest is not None and searcher.lowest >= 4000, searcher.lowest
    assert _fields(env, alias)["element_type"]["facet"] is True
    assert env.http.get(f"/collections/{alias}__v1").status_code == 404  # old one dropped
    assert env.verify()["in_sync"] is True


def test_dropped_column_rebuilds(elements_env: Env) -> None:
    env = elements_env
    alias = env.collection("elements")
    insert_elements(env.db, range(1, 201))
    env.cli("run", "--once", check=True)
    app_exec(env.db, "ALTER TABLE elements DROP COLUMN comment")
    env.cli("run", "--once", check=True)  # plans the rebuild, backfills, swaps
    assert env.http.get(f"/aliases/{alias}").json()["collection_name"] == f"{alias}__v2"
    assert "comment" not in _fields(env, alias)
    assert all("comment" not in d for d in env.documents("elements").values())
    assert env.verify()["in_sync"] is True
