"""Reports: static HTML (figures as PNG + tables + provenance) built only from the run store."""
