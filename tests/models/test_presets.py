"""Model presets: exact parameter counts, overrides (including ones the preset sets), bad overrides."""

from __future__ import annotations

import pytest
import torch

from overtrain.config import validate
from overtrain.errors import ConfigError
from overtrain.models.presets import ModelConfig, build_model, count_params


@pytest.mark.parametrize(
    ("preset", "vocab", "params"),
    [
        ("llama-nano", 64, 10_320),  # the CPU regime of docs/overtraining.md: d16, 2 layers, ffn 64, untied
        ("llama-micro", 128, 41_120),  # the "41K" model of our pilot runs
        ("llama-tiny", 128, 1_082_496),  # the "1.08M" model of our pilot runs
    ],
)
def test_parameter_counts_match_the_science_notes(preset, vocab, params):
    assert count_params(build_model(ModelConfig(preset=preset), vocab, 64)) == params


@pytest.mark.parametrize("preset", ["llama-nano", "olmo2-nano", "neox-nano"])
def test_overrides_replace_preset_values(preset):
    cfg = validate(
        ModelConfig, {"preset": preset, "overrides": {"tie_word_embeddings": True, "num_hidden_layers": 3}}
    )
    model = build_model(cfg, 16, 16)
    assert model.config.num_hidden_layers == 3
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    x = torch.randint(0, 16, (2, 16))
    assert torch.isfinite(model(input_ids=x, labels=x).loss)


def test_unknown_override_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="unknown field 'hiden_size' in overrides for LlamaConfig"):
        validate(ModelConfig, {"preset": "llama-nano", "overrides": {"hiden_size": 8}})
