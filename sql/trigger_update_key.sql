CREATE TRIGGER ${name} AFTER UPDATE OF ${key_columns} ON ${table} WHEN ${key_changed} BEGIN
  INSERT INTO ${log} (tbl, pk, op) VALUES (${table_literal}, ${old_key}, ${op_delete});
END
