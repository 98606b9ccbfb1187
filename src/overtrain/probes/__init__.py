"""Checkpoint probes: each module registers one probe in `overtrain.registry.PROBES`."""
