"""Studies: each module registers one study in `overtrain.registry.STUDIES`."""
