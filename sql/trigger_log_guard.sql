CREATE TRIGGER ${name} AFTER DELETE ON ${log}
WHEN NOT EXISTS (SELECT 1 FROM ${state} WHERE name = ${acknowledging}) BEGIN
  INSERT INTO ${state} (name, value) VALUES (${deleted_by_others}, 1)
    ON CONFLICT (name) DO UPDATE SET value = value + 1;
END
