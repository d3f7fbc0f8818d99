"""What tests share, in one place (tests/conftest.py holds only fixtures and hooks).

- launcher: the one place `python -m cdc_daemon` command lines are built and started
  (`run`, `start`, `start_logged`, `run_cdc`, `stop_process`); cli_inprocess: `run`, the same
  call in the test's own process, for commands that reach no server.
- poll: `wait_for`, the one poller (a deadline, never a fixed sleep).
- app_writer: the app, as a separate stdlib-sqlite3 process (`app_write`, `app_exec`).
- world: `Env`, one test's world (database, config, CLI, collections); the fault suite's
  FaultWorld builds on it.
- elements: the seed's `elements` table (DDL, config, schema, rows); db: reads of the database.
- fake_sink: an in-memory Sink for unit tests where a real server adds nothing.

`from support import X` works for every name below.
"""

from .app_writer import app_exec, app_write
from .db import db_rows, db_scalar, log_backlog
from .elements import (
    ELEMENTS_CONFIG,
    ELEMENTS_DDL,
    SERVICE_A_COLLECTION_SCHEMA,
    expected_elements,
    insert_elements,
    insert_many_elements,
)
from .launcher import run_cdc, stop_process
from .poll import wait_for
from .world import (
    API_KEY,
    Env,
    collection_documents,
    read_daemon_log,
    start_daemon_logged,
    typesense_client,
)

__all__ = [
    "API_KEY", "ELEMENTS_CONFIG", "ELEMENTS_DDL", "SERVICE_A_COLLECTION_SCHEMA", "Env",
    "app_exec", "app_write", "collection_documents", "db_rows", "db_scalar", "expected_elements",
    "insert_elements", "insert_many_elements", "log_backlog", "read_daemon_log", "run_cdc",
    "start_daemon_logged", "stop_process", "typesense_client", "wait_for",
]
