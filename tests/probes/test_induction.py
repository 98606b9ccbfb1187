"""Induction probe: the prefix-matching score on hand-built attention patterns, the copying losses
against a direct computation, attention-kernel switching on the three model families, and the probe
run kind.

Tolerances: scores from hand-built float64 patterns are exact sums, compared to 1e-12. The probe's
copying losses come from eager-attention forwards and are compared to a plain forward of the model's
own kernel (sdpa or eager): rounding differences only, 1e-5 relative.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from overtrain.config import validate
from overtrain.data.copy import CopyConfig
from overtrain.errors import ConfigError
from overtrain.models.presets import ModelConfig, build_model
from overtrain.probes.induction import (
    InductionConfig,
    InductionProbe,
    InductionResult,
    eager_attention,
    induction_batches,
    induction_scores,
    prefix_matching_scores,
)
from overtrain.registry import PROBES, RUN_KINDS
from overtrain.training.loop import build_optimizer, train_segment

VOCAB = 16


def _model(preset: str = "llama-nano", attn: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(preset=preset, attn_implementation=attn), VOCAB, 64)


def _uniform_causal(L: int, layers: int = 1, batch: int = 1, heads: int = 1) -> torch.Tensor:
    """Every query spreads its attention evenly over itself and all earlier positions."""
    T = 2 * L
    row = torch.tril(torch.ones(T, T, dtype=torch.float64))
    row = row / row.sum(-1, keepdim=True)
    return row.expand(layers, batch, heads, T, T).clone()


def _induction_pattern(L: int) -> torch.Tensor:
    """(T, T): queries L + j (j <= L-2) attend only to j + 1; every other query attends to itself."""
    T = 2 * L
    pattern = torch.eye(T, dtype=torch.float64)
    for j in range(L - 1):
        pattern[L + j] = 0.0
        pattern[L + j, j + 1] = 1.0
    return pattern


def _uniform_score(L: int) -> float:
    """Uniform causal attention puts 1/(i+1) on the target of query i = L + j: mean over j = 0..L-2."""
    return math.fsum(1.0 / (L + j + 1) for j in range(L - 1)) / (L - 1)


# --- the score on hand-built patterns ----------------------------------------------------------------


def test_a_perfect_induction_pattern_scores_exactly_one():
    L = 12
    attn = _induction_pattern(L).expand(2, 3, 4, 2 * L, 2 * L)  # layers x batch x heads
    scores = prefix_matching_scores(attn)
    assert scores.shape == (2, 4) and scores.dtype == torch.float64
    assert torch.equal(scores, torch.ones(2, 4, dtype=torch.float64))


def test_uniform_causal_attention_scores_ln2_over_L():
    """Expected (H_2L − H_{L+1})/(L − 1) = 0.0027 for L = 256 (≈ ln 2/(L − 1)); tolerance 1e-12."""
    L = 256
    score = prefix_matching_scores(_uniform_causal(L)).item()
    assert score == pytest.approx(_uniform_score(L), abs=1e-12)
    assert score == pytest.approx(math.log(2) / (L - 1), rel=0.01)
    assert score < 0.003


def test_heads_are_scored_separately():
    L = 10
    T = 2 * L
    attn = _uniform_causal(L, layers=2, batch=2, heads=3)
    attn[1, :, 0] = _induction_pattern(L)  # layer 1 head 0: a perfect induction head
    attn[1, :, 1] = torch.eye(T, dtype=torch.float64)  # attends to the current token: 0
    previous = torch.zeros(T, T, dtype=torch.float64)  # previous-token head: 0 (target is j+1, not L+j-1)
    previous[0, 0] = 1.0
    previous[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    attn[1, :, 2] = previous
    attn[0, 1, 2] = _induction_pattern(L)  # layer 0 head 2: perfect on one sequence of two
    scores = prefix_matching_scores(attn)
    u = _uniform_score(L)
    expected = torch.tensor([[u, u, (1 + u) / 2], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)
    # a tuple of per-layer tensors, as output_attentions gives, is the same
    torch.testing.assert_close(prefix_matching_scores(tuple(attn)), scores, rtol=0, atol=0)

    res = InductionResult(tuple(map(tuple, scores.tolist())), 3.0, 1.0, L, 2)
    assert res.best_head == (1, 0) and res.max_prefix_matching == 1.0
    assert res.layer_max == pytest.approx(((1 + u) / 2, 1.0)) and res.copying_gain == 2.0


def test_scores_reject_what_is_not_a_block_pair():
    with pytest.raises(ValueError, match="layers, batch, heads, T, T"):
        prefix_matching_scores(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="even length"):
        prefix_matching_scores(torch.zeros(1, 1, 1, 7, 7))


def test_rows_and_summary_rows():
    res = InductionResult(((0.1, 0.2), (0.9, 0.05)), 2.8, 0.5, 8, 32)
    rows = res.rows(step=5)
    assert rows[0] == {"probe": "induction", "layer": 0, "head": 0, "prefix_matching": 0.1, "step": 5}
    assert [(r["layer"], r["head"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    model, *layers = res.summary_rows(step=5)
    assert model == {
        "probe": "induction",
        "scope": "model",
        "layer": 1,
        "head": 0,
        "max_prefix_matching": 0.9,
        "first_copy_loss": 2.8,
        "second_copy_loss": 0.5,
        "copying_gain": pytest.approx(2.3),
        "block_len": 8,
        "sequences": 32,
        "step": 5,
    }
    assert [(r["scope"], r["layer"], r["head"], r["max_prefix_matching"]) for r in layers] == [
        ("layer", 0, 1, 0.2),
        ("layer", 1, 0, 0.9),
    ]


# --- sequences ----------------------------------------------------------------------------------------


def test_batches_are_seeded_block_pairs_independent_of_the_source():
    source = CopyConfig(vocab_size=VOCAB).build()
    probe = InductionProbe(InductionConfig(sequences=10, batch_size=4, seed=3))
    xs = probe.batches(source, 32)
    assert [tuple(x.shape) for x in xs] == [(4, 32), (4, 32), (2, 32)]  # L = seq_len // 2 = 16
    tokens = torch.cat(xs)
    assert torch.equal(tokens[:, :16], tokens[:, 16:]) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < VOCAB
    assert torch.equal(
        tokens, torch.cat(induction_batches(VOCAB, 16, 10, 10, seed=3))
    )  # batch size: cuts only
    assert not torch.equal(tokens, torch.cat(induction_batches(VOCAB, 16, 10, 10, seed=4)))
    assert [x.shape[1] for x in InductionProbe().batches(source, 1024)] == [128] * 4  # L capped at 64
    assert InductionProbe(InductionConfig(block_len=5)).batches(source, 1024)[0].shape == (16, 10)


# --- on real models -----------------------------------------------------------------------------------


def _direct_losses(model, xs, L):
    """Copying losses from a plain forward with the model's own attention kernel."""
    first = second = 0.0
    with torch.no_grad():
        for x in xs:
            ce = F.cross_entropy(
                model(input_ids=x, use_cache=False).logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none"
            ).double()
            first += ce[:, : L - 1].sum().item()
            second += ce[:, L - 1 :].sum().item()
    n = sum(x.shape[0] for x in xs)
    return first / (n * (L - 1)), second / (n * L)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("preset", ["llama-nano", "olmo2-nano", "neox-nano"])
def test_probe_on_each_family_matches_a_direct_computation(preset, attn):
    model = _model(preset, attn)
    model.train()
    L = 8
    xs = induction_batches(VOCAB, L, 6, 4, seed=1)
    res = PROBES.get("induction")(InductionConfig(block_len=L)).run(model, xs)
    assert model.config._attn_implementation == attn and model.training  # restored
    assert res.block_len == L and res.sequences == 6
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    assert len(res.rows()) == layers * heads
    assert all(0.0 <= s <= 1.0 for layer in res.prefix_matching for s in layer)

    model.eval()
    first, second = _direct_losses(model, xs, L)
    assert res.first_copy_loss == pytest.approx(first, rel=1e-5)
    assert res.second_copy_loss == pytest.approx(second, rel=1e-5)
    with eager_attention(model), torch.no_grad():
        attentions = [torch.stack(model(input_ids=x, output_attentions=True).attentions) for x in xs]
    expected = prefix_matching_scores(torch.cat(attentions, dim=1))
    torch.testing.assert_close(
        torch.tensor(res.prefix_matching, dtype=torch.float64), expected, rtol=1e-6, atol=1e-9
    )
    assert model.config._attn_implementation == attn


def test_attention_kernel_is_restored_after_an_error():
    model = _model("llama-nano", "sdpa")

    def broken(*args, **kwargs):
        assert model.config._attn_implementation == "eager"
        raise RuntimeError("boom")

    model.forward = broken
    with pytest.raises(RuntimeError, match="boom"):
        induction_scores(model, induction_batches(VOCAB, 4, 2, 2))
    assert model.config._attn_implementation == "sdpa" and model.model.config._attn_implementation == "sdpa"


def test_probe_on_a_lora_model_restores_its_kernel():
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(_model(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    res = induction_scores(lora, induction_batches(VOCAB, 6, 4, 4))
    assert len(res.prefix_matching) == 2 and lora.base_model.model.config._attn_implementation == "sdpa"


def test_a_model_trained_to_copy_has_lower_second_copy_loss_and_a_prefix_matching_head():
    """llama-nano trained 200 AdamW steps (~1 s) on the copy task of `overtrain.data.copy` (L = 8).

    Measured: first copy 2.97 nats (≈ ln 16 = 2.77: random tokens), second copy 1.91, best head 0.38
    against 0.0858 for uniform attention; the untrained model attends almost uniformly (best head
    0.0858, gain 0.002). Thresholds leave room for other BLAS kernels: a gain of 0.5 nats and a best head
    above twice the uniform score.
    """
    L = 8
    source = CopyConfig(mode="repeat", vocab_size=VOCAB).build()
    model = _model("llama-nano")
    opt = build_optimizer(model, 1e-2, 0.0, (0.9, 0.95), 1e-8)
    train_segment(model, opt, lambda s: source.batch("train", s, 32, 2 * L), lambda s: 1e-2, 0, 200)
    res = induction_scores(model, induction_batches(VOCAB, L, 64, 32))
    untrained = induction_scores(_model("llama-nano"), induction_batches(VOCAB, L, 64, 32))
    assert res.first_copy_loss > math.log(VOCAB) - 0.3
    assert res.copying_gain > 0.5 and abs(untrained.copying_gain) < 0.2
    assert res.max_prefix_matching > 2 * _uniform_score(L)
    assert untrained.max_prefix_matching == pytest.approx(_uniform_score(L), abs=0.01)


def test_bad_batches_are_refused():
    model = _model()
    x = induction_batches(VOCAB, 4, 2, 2)[0]
    with pytest.raises(ValueError, match="must repeat the first"):
        induction_scores(model, [torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))])
    with pytest.raises(ValueError, match="one even length"):
        induction_scores(model, [x[:, :7]])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        induction_scores(model, [x + VOCAB])
    with pytest.raises(ValueError, match="no sequences"):
        induction_scores(model, [])


def test_bad_settings_are_config_errors():
    from overtrain.runs.kinds.probe import ProbeRunConfig

    for bad in ({"block_len": 1}, {"sequences": 0}, {"batch_size": 0}, {"seed": -1}, {"block": 8}):
        with pytest.raises(ConfigError):
            validate(InductionConfig, bad)
    with pytest.raises(ConfigError, match="settings.block_len"):
        validate(
            ProbeRunConfig,
            {"parent": "0123456789ab", "checkpoint": "b", "probe": "induction", "settings": {"block_len": 0}},
        )
    with pytest.raises(ConfigError, match="too short"):
        InductionProbe().batches(CopyConfig(vocab_size=VOCAB).build(), 3)
    assert (
        "batch_size"
        not in validate(
            ProbeRunConfig,
            {
                "parent": "0123456789ab",
                "checkpoint": "b",
                "probe": "induction",
                "settings": {"batch_size": 4},
            },
        ).settings
    )  # an execution setting: not part of the run's identity


def test_probe_run_kind_on_a_pretraining_checkpoint(home, tiny_pretrain):
    from overtrain.runs.jsonl import read_jsonl
    from overtrain.runs.kinds.probe import ProbeRunConfig
    from overtrain.runs.store import Store
    from overtrain.training.pretrain_config import PretrainConfig

    store = Store()
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, copy.deepcopy(tiny_pretrain)))
    cfg = validate(
        ProbeRunConfig,
        {
            "parent": pre.run_id,
            "checkpoint": "budget_5120",
            "probe": "induction",
            "settings": {"sequences": 8, "batch_size": 4},
        },
    )
    out = store.execute(RUN_KINDS.get("probe"), cfg)
    rows = read_jsonl(out.dir / "probes.jsonl")
    assert len(rows) == 2 * 4 and all(r["probe"] == "induction" and r["budget"] == 5120 for r in rows)
    summary = read_jsonl(out.dir / "evals.jsonl")
    assert [r["scope"] for r in summary] == ["model", "layer", "layer"]
    assert summary[0]["block_len"] == 16 and summary[0]["sequences"] == 8  # seq_len 32 -> L = 16
    assert summary[0]["max_prefix_matching"] == max(r["prefix_matching"] for r in rows)
    assert math.isfinite(summary[0]["copying_gain"])


@pytest.mark.parametrize("preset", ["llama-nano", "olmo2-nano", "neox-nano"])
def test_ablating_every_head_equals_zeroing_the_output_projections(preset):
    """Zeroing every head's output where it enters the output projection is, exactly, the model with
    those projections' weights zeroed: the reference for the ablation hooks."""
    from overtrain.probes.induction import attention_outputs, heads_ablated

    model = _model(preset)
    model.eval()
    L = 6
    xs = induction_batches(VOCAB, L, 4, 4, seed=2)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    before = _direct_losses(model, xs, L)
    with heads_ablated(model, [(layer, head) for layer in range(layers) for head in range(heads)]):
        ablated = _direct_losses(model, xs, L)
    assert _direct_losses(model, xs, L) == before  # the hooks are gone
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for module in attention_outputs(zeroed):
            module.weight.zero_()  # a bias (GPT-NeoX) enters after the heads: kept, as the ablation keeps it
    assert ablated == pytest.approx(_direct_losses(zeroed, xs, L), rel=1e-6)
    assert ablated != pytest.approx(before, rel=1e-3)


def test_ablating_the_induction_head_of_a_copying_model_costs_copying():
    """The trained copier of the test above: ablating its top head raises the second-copy loss (the
    head carries copying); the ablation is reported with the heads it removed."""
    L = 8
    source = CopyConfig(mode="repeat", vocab_size=VOCAB).build()
    model = _model("llama-nano")
    opt = build_optimizer(model, 1e-2, 0.0, (0.9, 0.95), 1e-8)
    train_segment(model, opt, lambda s: source.batch("train", s, 32, 2 * L), lambda s: 1e-2, 0, 200)
    xs = induction_batches(VOCAB, L, 64, 32)
    res = PROBES.get("induction")(InductionConfig(block_len=L, ablate_top=1)).run(model, xs)
    assert res.ablated_heads == (res.best_head,)
    assert res.ablation_effect > 0.1 * res.copying_gain > 0
    summary = res.summary_rows()[0]
    assert summary["ablated_heads"] == [list(res.best_head)]
    assert summary["ablation_effect"] == pytest.approx(res.ablation_effect)
    plain = induction_scores(model, xs)
    assert plain.ablated_heads is None and "ablation_effect" not in plain.summary_rows()[0]
    assert plain.second_copy_loss == pytest.approx(res.second_copy_loss)


def test_ablate_top_is_not_in_the_id_unless_set():
    from overtrain.config import config_hash

    assert config_hash(InductionConfig()) == config_hash(InductionConfig(ablate_top=None))
    assert config_hash(InductionConfig()) != config_hash(InductionConfig(ablate_top=2))
