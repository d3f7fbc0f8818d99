"""Many databases, one shared collection (`databases.collection` without {stem}, issue 18 item
2): each database's documents carry ids `<stem>/<key>` and a tenant field; one database (the
manager) creates the collection, the others follow. End to end: a real Typesense, the app as
separate stdlib-sqlite3 processes, the daemon a real `python -m cdc_daemon run` subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from support import Env, app_exec, collection_documents, stop_process
from test_many_databases import (
    make_database,
    processes,  # noqa: F401  (the fixture)
    rows_of,
    start_daemon,
    tenants,
    wait_for,
    write_config,
    write_rows,
)

pytestmark = pytest.mark.typesense


def shared_config(env: Env, **databases: Any) -> None:
    write_config(env, install=True, databases={
        "collection": f"{env.prefix}_all_{{collection}}", "manager": "acme",
        "tenant_field": "tenant", **databases})


def shared_documents(env: Env) -> dict[str, dict[str, Any]]:
    return collection_documents(env.http, f"{env.prefix}_all_books")


def expected(paths: list[Path]) -> dict[str, tuple[str, str]]:
    """Every database's rows as the shared collection holds them: id → (title, tenant)."""
    return {f"{path.stem}/{key}": (title, path.stem)
            for path in paths for key, title in rows_of(path).items()}


def held(env: Env) -> dict[str, tuple[str, str]]:
    return {key: (doc["title"], doc["tenant"]) for key, doc in shared_documents(env).items()}


def test_databases_share_one_collection_each_with_its_ids_and_tenant(
        env: Env, processes: list[Any]) -> None:  # noqa: F811
    folder = tenants(env)
    paths = [folder / f"{stem}.db" for stem in ("acme", "beta", "gamma")]
    for path in paths:
        make_database(path, rows=4)
    shared_config(env)
    daemon = start_daemon(env, processes)
    wait_for(lambda: held(env) == expected(paths), 30, "every database in the shared collection")

    # A change in one database touches only its own documents, whatever the others hold.
    beta = paths[1]
    write_rows(beta, (2, "beta changed"), (9, "beta new"))
    app_exec(beta, "DELETE FROM books WHERE id = 3")
    wait_for(lambda: held(env) == expected(paths), 30, "beta's changes only")
    assert "acme/3" in held(env) and "gamma/3" in held(env)

    result = env.cli("verify", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    reports = json.loads(result.stdout)["databases"]
    assert sorted(reports) == ["acme", "beta", "gamma"]
    assert all(report["in_sync"] for report in reports.values()), reports

    # A document of another database's prefix deleted by hand: only that database's verify
    # says so.
    env.http.delete(f"/collections/{env.prefix}_all_books/documents/gamma%2F1").raise_for_status()
    result = env.cli("verify", "--json")
    assert result.returncode != 0
    reports = json.loads(result.stdout)["databases"]
    assert [name for name, report in reports.items() if not report["in_sync"]] == ["gamma"]
    assert stop_process(daemon) == 0


def test_a_shared_collection_needs_its_manager(env: Env) -> None:
    folder = tenants(env)
    make_database(folder / "acme.db", rows=1)
    write_config(env, databases={"collection": f"{env.prefix}_all_{{collection}}"})
    result = env.cli("check")
    assert result.returncode == 2
    assert "databases.manager" in result.stderr and "Traceback" not in result.stderr
