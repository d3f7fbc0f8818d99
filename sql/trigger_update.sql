CREATE TRIGGER ${name} AFTER UPDATE ON ${table} BEGIN
  INSERT INTO ${log} (tbl, pk, op) VALUES (${table_literal}, ${new_key}, ${op_update});
END
