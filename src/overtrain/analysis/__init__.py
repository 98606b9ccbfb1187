"""Analysis of stored results: inflection points with bootstrap CIs, rank statistics, fits."""
