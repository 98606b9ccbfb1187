"""Data sources: synthetic HMM languages, copy/induction streams, repeated-data mixing, text corpora."""
