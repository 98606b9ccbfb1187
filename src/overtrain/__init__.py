"""overtrain: a lab for the ways more training or more fit makes language models worse.

Importing the package is cheap: heavy modules (torch, transformers, duckdb) load only when used.
"""

__version__ = "0.1.0"
