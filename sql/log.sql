-- The change log and its side tables. ${log}, ${dead} and ${state} are quoted identifiers.
-- Must run on SQLite 3.31+ (the app's own SQLite may be old): no unixepoch(), no concat().
-- seq has no AUTOINCREMENT (it costs the app's one-row commits ~20%): a seq can be used again
-- once the log is emptied. The daemon only deletes what it read, and a delete by anyone else is
-- counted by the log's guard trigger (trigger_log_guard.sql), so an acknowledgement that could hit
-- a reused seq is refused (changelog.py).
CREATE TABLE IF NOT EXISTS ${log} ( -- cdc-daemon change log v1
  seq INTEGER PRIMARY KEY,
  tbl TEXT NOT NULL,
  pk,
  op TEXT NOT NULL,
  ts REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at REAL NOT NULL DEFAULT 0,
  last_error TEXT
);
CREATE TABLE IF NOT EXISTS ${dead} ( -- cdc-daemon dead letters v1
  tbl TEXT NOT NULL,
  pk,
  error TEXT NOT NULL,
  attempts INTEGER NOT NULL,
  first_seen REAL NOT NULL,
  last_seen REAL NOT NULL,
  UNIQUE (tbl, pk)
);
CREATE TABLE IF NOT EXISTS ${state} ( -- cdc-daemon state v1
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
