"""Storage layer: the DuckDB schema, its writer, and every query the dashboard asks."""
