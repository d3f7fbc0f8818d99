CREATE TRIGGER ${name} BEFORE INSERT ON ${table} BEGIN
  INSERT INTO ${log} (tbl, pk, op)
    SELECT ${table_literal}, ${row_key}, ${op_delete} FROM ${table} WHERE ${unique_match};
END
