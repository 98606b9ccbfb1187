"""Runs: content-addressed run directories, the store, plans of runs and DuckDB queries over them."""
