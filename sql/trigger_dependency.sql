CREATE TRIGGER ${name} AFTER ${event} ON ${table} BEGIN
  INSERT INTO ${log} (tbl, pk, op) VALUES (${table_literal}, ${payload}, ${op_joined});
END
