-- The seed's `elements` table (Service A), as the app creates it: used by the demo, the tests
-- and the benchmarks.
CREATE TABLE elements (
  id INTEGER PRIMARY KEY,
  element_type VARCHAR NOT NULL,
  element_id INTEGER NOT NULL,
  sequence_number INTEGER NOT NULL,
  version_number INTEGER NOT NULL,
  comment VARCHAR,
  created_at DATETIME DEFAULT (CURRENT_TIMESTAMP),
  updated_at DATETIME DEFAULT (CURRENT_TIMESTAMP)
)
