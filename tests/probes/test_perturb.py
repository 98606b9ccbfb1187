"""perturb-and-restore: the noise laws hold, only selected tensors move, and restoring is bit-exact.

Models are ``llama-nano`` at vocabulary 16 (about 8K parameters). Std checks are exact-distribution tests
with the threshold stated: for n i.i.d. entries of N(0, s²), n·mean(ε²)/s² ~ χ²_n, and each tensor must
fall inside the central 1 − 1e-6 of that law (a false alarm over ~20 tensors has probability ~2e-5; the
noise is seeded, so the outcome is fixed anyway). Pooled over all tensors (N ≈ 8K entries), the ratio of
the empirical to the law's std has standard deviation ≈ 1/√(2N) ≈ 0.008, and 5 of those is the bound.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from scipy.stats import chi2

from overtrain.core.perturb import (
    init_scale,
    is_matrix,
    load_weights,
    param_filter,
    perturbed,
    relative,
    sample_noise,
    select_parameters,
    standard_normal,
)
from overtrain.data.hmm import HMMConfig
from overtrain.models.presets import ModelConfig, build_model
from overtrain.training.loop import build_optimizer, train_segment

VOCAB, SEQ = 16, 16
ALPHA = 1e-6  # two-sided tail probability of each per-tensor chi-square check


def _model(preset: str = "llama-nano", seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(ModelConfig(preset=preset, overrides=overrides), VOCAB, SEQ)


@pytest.fixture(scope="module")
def trained():
    """(model after 30 AdamW steps, a copy of its initialisation): weights no longer at init scale."""
    model = _model()
    init = copy.deepcopy(model)
    src = HMMConfig(vocab_size=VOCAB, states=4, floor_sequences=64).build()
    opt = build_optimizer(model, 1e-2, 0.0, (0.9, 0.95), 1e-8)
    train_segment(model, opt, lambda s: src.batch("train", s, 16, SEQ), lambda s: 1e-2, 0, 30)
    return model, init


def _snapshot(model) -> dict[str, torch.Tensor]:
    state = {f"p:{n}": p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    state.update({f"b:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return state


def _assert_same(model, snapshot) -> None:
    now = _snapshot(model)
    assert now.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert torch.equal(now[key], value), key  # bit-exact, not approximately equal


def _check_std(applied: dict[str, torch.Tensor], stds: dict[str, float]) -> None:
    """Chi-square per tensor at level ALPHA, and a pooled 5-sigma bound on the std ratio."""
    pooled_sq, pooled_n = 0.0, 0
    for name, eps in applied.items():
        s, n = stds[name], eps.numel()
        stat = n * float(eps.double().pow(2).mean()) / s**2
        lo, hi = chi2.ppf(ALPHA / 2, n), chi2.ppf(1 - ALPHA / 2, n)
        assert lo <= stat <= hi, f"{name}: n·mean(ε²)/s² = {stat:.1f} outside [{lo:.1f}, {hi:.1f}] (n = {n})"
        pooled_sq += float(eps.double().div(s).pow(2).sum())
        pooled_n += n
    ratio = math.sqrt(pooled_sq / pooled_n)
    assert abs(ratio - 1) <= 5 / math.sqrt(2 * pooled_n), ratio


def _applied_noise(model, stds, seed=0, draw=0) -> dict[str, torch.Tensor]:
    """The perturbation actually made to each parameter, measured as (θ + ε) − θ inside the block."""
    params = select_parameters(model, None)
    before = {n: p.detach().clone() for n, p in params.items()}
    with perturbed(model, sample_noise(params, stds, seed=seed, draw=draw)):
        return {n: params[n].detach() - before[n] for n in stds}


def test_init_scale_noise_has_gamma_times_init_std(trained):
    model, init = trained
    gamma = 3.0
    stds = init_scale(model, gamma, init_state=init.state_dict())
    assert set(stds) == {n for n, p in model.named_parameters() if p.dim() >= 2}
    for name, p in init.named_parameters():
        if name in stds:  # σ_init is the std of the tensor at initialisation, not now
            assert stds[name] == pytest.approx(gamma * p.double().std(correction=0).item(), rel=1e-12)
    _check_std(_applied_noise(model, stds), stds)


def test_relative_noise_has_gamma_times_current_std(trained):
    model, _ = trained
    gamma = 0.7
    stds = relative(model, gamma)
    for name, p in model.named_parameters():
        if name in stds:
            assert stds[name] == pytest.approx(gamma * p.double().std(correction=0).item(), rel=1e-12)
    _check_std(_applied_noise(model, stds, draw=5), stds)


@pytest.mark.parametrize("preset", ["llama-nano", "olmo2-nano", "neox-nano"])
def test_config_initializer_range_is_the_measured_init_std(preset):
    """Without an init state, σ_init = initializer_range: true of every matrix `transformers` initialises."""
    model = _model(preset)
    sigma = model.config.initializer_range
    from_config = init_scale(model, 2.0)
    assert from_config == {n: 2.0 * sigma for n in select_parameters(model)}
    # the fresh weights are N(0, σ²) entry-wise: the same chi-square check as for the noise
    _check_std({n: p.detach() for n, p in select_parameters(model).items()}, {n: sigma for n in from_config})


def test_vectors_have_zero_init_std_and_need_an_init_state(trained):
    model, init = trained
    everything = param_filter("all")
    stds = init_scale(model, 1.0, init_state=init, params=everything)
    vectors = [n for n, p in model.named_parameters() if p.dim() == 1]
    assert vectors and all(stds[n] == 0.0 for n in vectors)  # norm weights start at exactly 1
    with pytest.raises(ValueError, match="pass init_state"):
        init_scale(model, 1.0, params=everything)
    assert all(relative(model, 1.0, params=everything)[n] > 0 for n in vectors)  # trained: no longer 1


def test_noise_only_inside_the_filter(trained):
    model, _ = trained
    keep = param_filter("matrices", include=r"layers\.0\.")
    params = select_parameters(model, keep)
    assert params and all(".layers.0." in n and p.dim() >= 2 for n, p in params.items())
    before = _snapshot(model)
    noise = sample_noise(select_parameters(model), relative(model, 1.0), seed=0, draw=0)
    with perturbed(model, noise, params=keep) as applied:
        assert set(applied) == set(params)
        for name, p in model.named_parameters(remove_duplicate=False):
            assert torch.equal(p, before[f"p:{name}"]) == (name not in params), name
    _assert_same(model, before)


def test_restore_is_bit_exact_after_every_draw(trained):
    model, _ = trained
    before = _snapshot(model)
    params = select_parameters(model)
    stds = relative(model, 0.3)
    for draw in range(4):
        with perturbed(model, sample_noise(params, stds, seed=1, draw=draw)):
            assert not torch.equal(params["model.embed_tokens.weight"], before["p:model.embed_tokens.weight"])
        _assert_same(model, before)


def test_restore_is_bit_exact_after_an_exception(trained):
    model, _ = trained
    before = _snapshot(model)
    params = select_parameters(model)
    with pytest.raises(RuntimeError, match="boom"):
        with perturbed(model, sample_noise(params, relative(model, 1.0), seed=0, draw=0)):
            raise RuntimeError("boom")
    _assert_same(model, before)
    # an error while applying (a wrong shape, after other tensors were already changed) restores too
    noise = {n: torch.ones_like(p) for n, p in params.items()}
    noise["lm_head.weight"] = torch.ones(3)
    with pytest.raises(ValueError, match="shape"):
        with perturbed(model, noise):
            pass
    _assert_same(model, before)


def test_function_noise_and_unknown_names(trained):
    model, _ = trained
    before = _snapshot(model)
    with perturbed(
        model, lambda n, p: torch.full_like(p, 0.5) if n.endswith("q_proj.weight") else None
    ) as got:
        assert sorted(got) == [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)]
        for name, p in model.named_parameters():
            assert torch.equal(p, before[f"p:{name}"] + 0.5 * (name in got)), name
    _assert_same(model, before)
    with pytest.raises(KeyError, match="not a parameter"):
        with perturbed(model, {"nope.weight": torch.zeros(1)}):
            pass


def test_draw_k_is_the_same_whatever_else_is_drawn(trained):
    model, _ = trained
    params = select_parameters(model)
    stds = relative(model, 1.0)
    alone = sample_noise(params, stds, seed=7, draw=3)
    for draw in range(5):  # drawing others first changes nothing
        sample_noise(params, stds, seed=7, draw=draw)
    again = sample_noise(params, stds, seed=7, draw=3)
    one_tensor = sample_noise(params, {"lm_head.weight": stds["lm_head.weight"]}, seed=7, draw=3)
    for name in stds:
        assert torch.equal(alone[name], again[name])
    assert torch.equal(one_tensor["lm_head.weight"], alone["lm_head.weight"])  # other tensors irrelevant
    z = standard_normal("lm_head.weight", params["lm_head.weight"].shape, seed=7, draw=3)
    assert torch.equal(z.mul(stds["lm_head.weight"]), alone["lm_head.weight"])  # γ and law only scale z
    other = sample_noise(params, stds, seed=7, draw=4)
    assert not any(torch.equal(alone[n], other[n]) for n in stds)


def test_tied_embedding_is_one_tensor():
    model = _model()
    # tied by hand: the presets pass tie_word_embeddings themselves, so it cannot be an override
    model.lm_head.weight = model.model.embed_tokens.weight
    assert model.lm_head.weight is model.model.embed_tokens.weight
    params = select_parameters(model)
    assert "model.embed_tokens.weight" in params and "lm_head.weight" not in params
    before = _snapshot(model)
    with perturbed(model, {"lm_head.weight": torch.ones(VOCAB, 16)}):  # by its alias
        assert torch.equal(model.model.embed_tokens.weight, before["p:model.embed_tokens.weight"] + 1)
    _assert_same(model, before)
    with pytest.raises(ValueError, match="tied"):
        with perturbed(
            model,
            {"lm_head.weight": torch.ones(VOCAB, 16), "model.embed_tokens.weight": torch.ones(VOCAB, 16)},
        ):
            pass
    _assert_same(model, before)


def test_peft_lora_filter_restore_and_init_lookup():
    from peft import LoraConfig, get_peft_model

    plain = _model()
    init = {n: p.detach().clone() for n, p in plain.named_parameters()}
    model = get_peft_model(plain, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    lora = select_parameters(model, param_filter(include="lora_"))
    assert len(lora) == 8 and all("lora_" in n for n in lora)  # A and B of 2 modules x 2 layers
    before = _snapshot(model)
    with perturbed(model, {n: torch.full_like(p, 0.1) for n, p in lora.items()}):
        for name, p in model.named_parameters():
            assert torch.equal(p, before[f"p:{name}"]) == (name not in lora)
    _assert_same(model, before)
    # base weights of the wrapped model are found in the plain model's state under their plain names
    base = param_filter(exclude="lora_")
    stds = init_scale(model, 1.0, init_state=init, params=base)
    q = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert stds[q] == pytest.approx(
        init["model.layers.0.self_attn.q_proj.weight"].double().std(correction=0).item()
    )
    with pytest.raises(ValueError, match="pass init_state"):
        init_scale(model, 1.0, params=is_matrix)  # LoRA factors are not initialised N(0, initializer_range²)


def test_init_state_from_a_checkpoint_directory(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path, safe_serialization=True)
    state = load_weights(tmp_path)
    assert init_scale(model, 1.5, init_state=tmp_path) == init_scale(model, 1.5, init_state=state)
    assert init_scale(model, 1.5, init_state=tmp_path) == init_scale(model, 1.5, init_state=model)
    with pytest.raises(ValueError, match="no tensor"):
        init_scale(model, 1.0, init_state={})
    with pytest.raises(ValueError, match="gamma"):
        relative(model, -1.0)


def test_parameter_name_regexes_are_checked_when_a_config_is_read():
    from overtrain.config import validate
    from overtrain.errors import ConfigError
    from overtrain.probes.noise import NoiseSensitivityConfig
    from overtrain.probes.sharpness import SharpnessConfig

    for cls in (NoiseSensitivityConfig, SharpnessConfig):
        assert validate(cls, {"include": "lora_", "exclude": None}).include == "lora_"
        with pytest.raises(ConfigError, match="exclude: .*not a regular expression"):
            validate(cls, {"exclude": "(unclosed"})
