"""Named model presets built from Hugging Face configs, from ~10K to ~125M parameters.

Every model is a real ``transformers`` causal LM (Llama, OLMo-2 or GPT-NeoX), so checkpoints are
`save_pretrained` directories that PEFT, lm-eval and ``AutoModelForCausalLM`` load with no code of ours.
Parameter counts depend on the vocabulary, which comes from the data; ``overtrain ls presets`` prints
them for a given vocabulary.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import field_validator, model_validator

from overtrain.config import BaseConfig, NotInId
from overtrain.errors import UnknownNameError
from overtrain.registry import MODELS

Family = Literal["llama", "olmo2", "neox"]


@dataclass(frozen=True)
class Shape:
    """Transformer shape shared by the families; ``ffn`` is the MLP hidden width."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    tied: bool = False


@dataclass(frozen=True)
class Preset:
    """A family and a shape; `hf_config` makes the `transformers` config for a vocabulary."""

    name: str
    family: Family
    shape: Shape
    help: str
    extra: dict[str, Any] = field(default_factory=dict)

    def hf_config(self, vocab_size: int, max_positions: int, overrides: dict[str, Any] | None = None):
        return _HF_BUILDERS[self.family](
            self.shape, vocab_size, max_positions, {**self.extra, **(overrides or {})}
        )


# Sizes quoted at the vocabulary where the studies use them (docs/overtraining.md, "Presets").
SHAPES: dict[str, tuple[Shape, str]] = {
    "nano": (
        Shape(16, 2, 4, 64),
        "~10K params at V=64: the CPU regime where overtraining shows (10^3+ tok/param)",
    ),
    "micro": (Shape(32, 2, 4, 128), "~41K params at V=128: tests and quick sweeps"),
    "tiny": (Shape(128, 4, 4, 512), "~1.1M params at V=128"),
    "small": (Shape(256, 8, 8, 1024), "~10M params at V=4096 (8.4M non-embedding)"),
    "medium": (Shape(512, 8, 8, 2048), "~30M non-embedding params: Springer's controlled-study scale (GPU)"),
    "base": (Shape(768, 12, 12, 2048, tied=True), "~124M params at V=50304, GPT-2-small shape (GPU)"),
}

FAMILIES: dict[Family, str] = {
    "llama": "Llama: RMSNorm, SwiGLU, RoPE",
    "olmo2": "OLMo-2: post-norm with QK-norm, SwiGLU, RoPE (Springer et al. used the OLMo architecture)",
    "neox": "GPT-NeoX (Pythia): LayerNorm, GELU MLP, parallel residual, partial RoPE",
}


def _swiglu(config_name: str):
    """Builder for the SwiGLU/RoPE families (Llama, OLMo-2), which share every shape field."""

    def build(shape: Shape, vocab: int, positions: int, kw: dict[str, Any]):
        import transformers

        config_cls = getattr(transformers, config_name)
        return config_cls(
            **{
                **dict(
                    vocab_size=vocab,
                    hidden_size=shape.hidden,
                    num_hidden_layers=shape.layers,
                    num_attention_heads=shape.heads,
                    num_key_value_heads=shape.heads,
                    intermediate_size=shape.ffn,
                    max_position_embeddings=positions,
                    tie_word_embeddings=shape.tied,
                    bos_token_id=None,
                    eos_token_id=None,
                    pad_token_id=None,
                ),
                **kw,
            }
        )  # overrides replace preset values (tie_word_embeddings too)

    return build


def _neox(shape: Shape, vocab: int, positions: int, kw: dict[str, Any]):
    from transformers import GPTNeoXConfig

    # GPT-NeoX's MLP is 4x wide with GELU (two matrices), Pythia's choice; SwiGLU presets use ffn as is.
    return GPTNeoXConfig(
        **{
            **dict(
                vocab_size=vocab,
                hidden_size=shape.hidden,
                num_hidden_layers=shape.layers,
                num_attention_heads=shape.heads,
                intermediate_size=4 * shape.hidden,
                max_position_embeddings=positions,
                tie_word_embeddings=shape.tied,
                rotary_pct=0.25,
                use_parallel_residual=True,
                bos_token_id=None,
                eos_token_id=None,
                pad_token_id=None,
            ),
            **kw,
        }
    )


_HF_BUILDERS = {"llama": _swiglu("LlamaConfig"), "olmo2": _swiglu("Olmo2Config"), "neox": _neox}

for _family in FAMILIES:
    for _size, (_shape, _help) in SHAPES.items():
        _name = f"{_family}-{_size}"
        MODELS.register(_name, Preset(_name, _family, _shape, f"{FAMILIES[_family].split(':')[0]} {_help}"))


class ModelConfig(BaseConfig):
    """Which model to build: a named preset plus optional `transformers` config overrides."""

    preset: str = "llama-nano"
    """Named preset ``<family>-<size>`` (``overtrain ls presets``): llama|olmo2|neox x nano..base."""

    overrides: dict[str, Any] = {}
    """Fields of the `transformers` config to change, e.g. ``{num_hidden_layers: 3, initializer_range: 0.05}``."""

    attn_implementation: Literal["sdpa", "eager"] = NotInId("sdpa")
    """Attention kernel: ``sdpa`` (fast) or ``eager`` (needed for double backward and attention maps)."""

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        try:
            MODELS.get(name)
        except UnknownNameError as exc:  # pydantic shows a ValueError as one line under the field
            raise ValueError(str(exc)) from None
        return name

    @model_validator(mode="after")
    def _known_overrides(self) -> ModelConfig:
        if self.overrides:
            build_hf_config(self, vocab_size=8, max_positions=8)  # raises ValueError on a bad key
            # and on a bad value (a negative width, heads that do not divide it): a config error now,
            # not a crash inside the run
            _check_buildable(
                self.preset, json.dumps(self.overrides, sort_keys=True, default=str), self.attn_implementation
            )
        return self


@functools.lru_cache(maxsize=256)
def _check_buildable(preset: str, overrides: str, attn_implementation: str) -> None:
    """Build the model with these overrides on the meta device (no memory, no weights; cached per setting)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig.model_construct(
        preset=preset, overrides=json.loads(overrides), attn_implementation=attn_implementation
    )
    hf = build_hf_config(cfg, vocab_size=8, max_positions=8)
    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(hf, attn_implementation=attn_implementation)
    except Exception as exc:  # torch and transformers raise many types for an impossible shape
        message = " ".join(str(exc).split())
        why = f"{type(exc).__name__}: {message[:200]}"
        raise ValueError(f"overrides: the model cannot be built ({why})") from None


def build_hf_config(cfg: ModelConfig, vocab_size: int, max_positions: int):
    """The `transformers` config for `cfg`; an override that the config class lacks is a `ValueError`
    (raised while validating `ModelConfig`, so it reaches the user as a one-line config error)."""
    preset: Preset = MODELS.get(cfg.preset)
    hf = preset.hf_config(vocab_size, max_positions)
    known = set(hf.to_dict())
    unknown = sorted(set(cfg.overrides) - known)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} in overrides for {type(hf).__name__} ({cfg.preset})")
    try:
        hf = preset.hf_config(vocab_size, max_positions, cfg.overrides)
    except Exception as exc:  # transformers' strict dataclass configs raise their own error types
        raise ValueError(f"overrides: {' '.join(str(exc).split())}") from None
    hf._attn_implementation = cfg.attn_implementation
    return hf


def build_model(cfg: ModelConfig, vocab_size: int, max_positions: int):
    """A freshly initialised causal LM (init draws from torch's global RNG: seed it first)."""
    from transformers import AutoModelForCausalLM

    hf = build_hf_config(cfg, vocab_size, max_positions)
    model = AutoModelForCausalLM.from_config(hf, attn_implementation=cfg.attn_implementation)
    return model


def count_params(model, *, non_embedding: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once); optionally without embeddings."""
    seen: set[int] = set()
    total = 0
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    out = model.get_output_embeddings()
    if out is not None:
        emb |= {id(p) for p in out.parameters()}
    for p in model.parameters():
        if id(p) in seen or (non_embedding and id(p) in emb):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def preset_table(vocab_size: int, max_positions: int = 256) -> list[dict[str, object]]:
    """Every preset with its parameter counts at `vocab_size` (built on the meta device: no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = []
    for name in MODELS.names():
        preset: Preset = MODELS.get(name)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(preset.hf_config(vocab_size, max_positions))
        s = preset.shape
        rows.append(
            {
                "name": name,
                "params": f"{count_params(model):,}",
                "non-embedding": f"{count_params(model, non_embedding=True):,}",
                "shape": f"d{s.hidden} L{s.layers} H{s.heads} ffn{s.ffn}{' tied' if s.tied else ''}",
                "about": preset.help,
            }
        )
    return rows
