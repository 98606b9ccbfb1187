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


def test_configs_ship_as_package_data():
    """The repo's configs/ is a link to the package's: an installed overtrain finds its presets outside a
    checkout, and pyproject's package-data glob (configs/*/*.yaml) must cover every file."""
    import tomllib

    from overtrain.paths import configs_dir

    root = Path(__file__).resolve().parents[1]
    assert (root / "configs").resolve() == configs_dir()
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "configs/*/*.yaml" in globs["overtrain"]
    assert all(len(p.relative_to(configs_dir()).parts) == 2 for p in configs_dir().rglob("*.yaml"))
    assert (configs_dir() / "overtraining" / "demo.yaml").is_file()
