CREATE TRIGGER ${name} AFTER INSERT ON ${table} BEGIN
  INSERT INTO ${log} (tbl, pk, op) VALUES (${table_literal}, ${new_key}, ${op_insert});
END
