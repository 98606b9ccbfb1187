"""Every YAML shipped under configs/ loads and validates (recursively: no file is skipped)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overtrain.runs.configs import validate_file

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs_to_check():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[2])))
def test_config_validates(path):
    assert validate_file(path)
