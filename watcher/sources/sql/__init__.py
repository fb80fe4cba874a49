"""The `sql` source and its parts: a PostgreSQL prediction-log table read as time windows.

- `source`: `SqlSource`, the source the daemon polls (windows ready, late rows, up/down).
- `windows`: tumbling window arithmetic and the durable progress (the watermark).
- `reader`: a window's rows with bounded memory (server-side chunks, a deterministic sample).
- `columnar`: the same read straight into Arrow through ADBC, for big windows.
- `connection`: the engine, quoted identifiers, the schema check and database errors, shared
  with the labels reader and the DAG's ingest step.

Nothing is imported here, so `connection` alone (the DAG side) does not load the source.
"""
