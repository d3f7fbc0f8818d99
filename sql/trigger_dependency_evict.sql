CREATE TRIGGER ${name} BEFORE ${event} ON ${table} BEGIN
  INSERT INTO ${log} (tbl, pk, op)
    SELECT ${table_literal}, ${payload}, ${op_joined} FROM ${table} WHERE ${match};
END
