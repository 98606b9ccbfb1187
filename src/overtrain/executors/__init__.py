"""Executors carry out a plan of runs: `local` (sequential or a process pool)."""
