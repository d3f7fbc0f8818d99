CREATE TRIGGER ${name} AFTER DELETE ON ${table} BEGIN
  INSERT INTO ${log} (tbl, pk, op) VALUES (${table_literal}, ${old_key}, ${op_delete});
END
