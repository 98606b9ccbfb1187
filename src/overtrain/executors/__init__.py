"""Executors carry out a plan of runs: `local` (sequential or a process pool) and `ray` (Ray tasks, local
or on a cluster)."""
