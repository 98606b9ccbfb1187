"""Config loading: YAML, dotted overrides, token counts, one-line errors, identity hashing."""

from __future__ import annotations

import pytest
from pydantic import Field

from overtrain.config import (
    BaseConfig,
    Count,
    NotInId,
    apply_overrides,
    build_config,
    config_hash,
    parse_yaml,
)
from overtrain.errors import ConfigError


class Inner(BaseConfig):
    tokens: Count = 100
    """A budget."""
    lr: float = Field(1e-3, gt=0)
    """A rate."""


class Outer(BaseConfig):
    seed: int = 0
    """Seed."""
    inner: Inner = Inner()
    """Nested section."""
    device: str = NotInId("cpu")
    """Not hashed."""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2e6", 2_000_000),
        ("2M", 2_000_000),
        ("1.5k", 1500),
        ("300", 300),
        ("2_000", 2000),
        (3e3, 3000),
        ("67.1M", 67_100_000),
        ("1.05M", 1_050_000),
    ],
)
def test_counts_accept_scientific_and_suffixes(text, expected):
    assert Inner(tokens=text).tokens == expected


def test_yaml_reads_scientific_notation_as_float():
    assert parse_yaml("a: 2e6\nb: 1e-3\nc: 3") == {"a": 2e6, "b": 1e-3, "c": 3}


def test_overrides_nest_and_parse_values():
    data = apply_overrides({"inner": {"lr": 1}}, ["inner.tokens=2e6", "seed=3", "new.deep.key=[1, 2]"])
    assert data == {"inner": {"lr": 1, "tokens": 2e6}, "seed": 3, "new": {"deep": {"key": [1, 2]}}}


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 5\ninner:\n  lr: 0.5\n")
    cfg = build_config(Outer, path, ["inner.tokens=4k"])
    assert (cfg.seed, cfg.inner.lr, cfg.inner.tokens) == (5, 0.5, 4000)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inner.tokenz=5"], "inner.tokenz: unknown key"),
        (["inner.tokens=-5"], "inner.tokens: Input should be greater than 0 (got -5)"),
        (["inner.tokens=0"], "inner.tokens: Input should be greater than 0"),
        (["inner.lr=fast"], "inner.lr: Input should be a valid number"),
        (["seed"], "not of the form key.sub=value"),
        (["seed.x=1"], "seed: Input should be a valid integer"),
        (["inner.tokens=[1"], "invalid YAML"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as info:
        build_config(Outer, None, overrides)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_several_problems_are_all_named_one_per_line():
    with pytest.raises(ConfigError) as info:
        build_config(Outer, None, ["inner.tokenz=5", "inner.lr=fast", "seed=x"])
    exc = info.value
    assert exc.lines() == [
        "config with overrides: 3 problems",
        "  seed: Input should be a valid integer, unable to parse string as an integer (got 'x')",
        "  inner.lr: Input should be a valid number, unable to parse string as a number (got 'fast')",
        "  inner.tokenz: unknown key",
    ]
    assert str(exc) == "\n".join(exc.lines())


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        build_config(Outer, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_config(Outer, scalar)


def test_a_key_given_twice_is_refused_with_its_lines(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("seed: 1\ninner:\n  tokens: 5\n  tokens: 7\n")
    with pytest.raises(ConfigError, match=r"line 4 invalid YAML: duplicate key 'tokens' \(first on line 3\)"):
        build_config(Outer, twice)
    # the same key in two different mappings, and a merge key overridden, are fine
    assert parse_yaml("a: {k: 1}\nb: {k: 2}\n") == {"a": {"k": 1}, "b": {"k": 2}}
    assert parse_yaml("a: &x {k: 1}\nb:\n  <<: *x\n  k: 2\n")["b"] == {"k": 2}


def test_identity_ignores_fields_marked_not_in_id():
    a, b, c = Outer(device="cpu"), Outer(device="cuda"), Outer(seed=1)
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)
    assert len(config_hash(a)) == 12


def test_newer_schema_is_refused():
    class Versioned(BaseConfig):
        schema_version: int = 1

    with pytest.raises(ConfigError, match="newer"):
        build_config(Versioned, None, ["schema_version=99"])
