"""Sharpness probe: HVPs equal the exact Hessian's products, eigenvalues and trace match
``torch.linalg.eigvalsh`` / ``trace`` of it, SAM sharpness follows its Taylor expansion and leaves the
weights bit-identical, zero curvature gives zeros, and the probe runs on every family, on LoRA and
through the ``probe`` run kind.

Exactness tests run in float64 on a tiny Llama (vocabulary 16, hidden 8, one layer) over a subset of
72 scalars (a norm weight and the query projection, so the double backward goes through attention);
the exact Hessian comes from ``torch.func.functional_call`` + ``torch.autograd.functional.hessian``.
Tolerance: `transformers` computes RMSNorm and the attention softmax in float32 even in a float64
model, so two differentiation routes (our double backward, autograd.functional's) agree to float32
rounding amplified by the network, not to float64's: measured ≤ 6e-6 relative on HVPs, and RTOL = 1e-4
is the bound used throughout (ATOL: 1e-6 of the largest entry, for entries that cancel to ~0).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from pydantic import ValidationError

from overtrain.models.attention import eager_attention
from overtrain.models.presets import ModelConfig, build_model
from overtrain.probes.hessian import hessian_eigenvalues, hutchinson_trace, hvp, sam_sharpness, select
from overtrain.probes.sharpness import SharpnessConfig, SharpnessProbe, sharpness
from overtrain.probes.spectrum import hutchinson, lanczos, power_iteration
from overtrain.registry import PROBES, RUN_KINDS
from overtrain.seed import torch_generator

VOCAB, SEQ = 16, 12
RTOL, ATOL = 1e-4, 1e-6
SUBSET = r"layers\.0\.(input_layernorm|self_attn\.q_proj)"  # 8 + 64 scalars


def _tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
        initializer_range=0.5,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(cfg).double()  # sdpa by default: the functions must switch to eager


def _batches(n: int = 2, batch: int = 4, seq: int = SEQ, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=gen) for _ in range(n)]


def exact_hessian(model, batches, params) -> tuple[list[str], torch.Tensor]:
    """(names, H) over the selected tensors, flattened in `named_parameters` order."""
    selected = select(model, params)
    names = list(selected)
    shapes = [selected[n].shape for n in names]
    sizes = [selected[n].numel() for n in names]
    tokens = sum(x[:, 1:].numel() for x in batches)

    def loss(flat):
        values = {n: c.view(s) for n, c, s in zip(names, flat.split(sizes), shapes)}
        total = 0.0
        for x in batches:
            logits = torch.func.functional_call(model, values, (x,), {"use_cache": False}).logits[:, :-1]
            total = total + torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum"
            )
        return total / tokens

    flat = torch.cat([selected[n].detach().reshape(-1) for n in names])
    was_training = model.training
    model.eval()
    with eager_attention(model):
        hess = torch.autograd.functional.hessian(loss, flat)
    model.train(was_training)
    return names, (hess + hess.T) / 2  # symmetric to rounding; make it exactly so for eigvalsh


def _split(model, names, flat):
    params = dict(model.named_parameters())
    out, start = {}, 0
    for n in names:
        k = params[n].numel()
        out[n] = flat[start : start + k].view_as(params[n])
        start += k
    return out


def _flat(by_name, names):
    return torch.cat([by_name[n].reshape(-1) for n in names])


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_unchanged(model, before):
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.fixture(scope="module")
def exact():
    """(model, batches, names, exact Hessian H) for SUBSET of the tiny float64 Llama."""
    model, batches = _tiny_llama(), _batches()
    names, hess = exact_hessian(model, batches, SUBSET)
    assert hess.shape == (72, 72)
    return model, batches, names, hess


def _spectrum(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(matrix).flip(0)  # largest first


# --- Hessian-vector products ------------------------------------------------------------------------


def test_hvp_equals_the_exact_hessian_times_v(exact):
    model, batches, names, hess = exact
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(hess.shape[0], generator=gen, dtype=torch.float64)
        got = _flat(hvp(model, batches, _split(model, names, v)), names)
        want = hess @ v
        torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL * want.abs().max().item())
    assert model.config._attn_implementation == "sdpa"  # switched to eager for the call only


def test_hvp_refuses_bad_vectors_and_runs_under_eager_attention(exact):
    model, batches, names, _ = exact
    v = _split(model, names, torch.ones(72, dtype=torch.float64))
    with pytest.raises(ValueError, match="differ from the selected"):
        hvp(model, batches, v, params="lm_head")
    with pytest.raises(ValueError, match="has shape"):
        hvp(model, batches, {**v, names[0]: torch.ones(3, dtype=torch.float64)})
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(m.config._attn_implementation))
    try:
        hvp(model, batches, v)
    finally:
        hook.remove()
    assert set(seen) == {"eager"} and model.config._attn_implementation == "sdpa"


# --- eigenvalues ------------------------------------------------------------------------------------


def test_lanczos_and_power_match_eigvalsh_of_the_exact_hessian(exact):
    model, batches, _, hess = exact
    want = _spectrum(hess)[:3]
    lan = hessian_eigenvalues(model, batches, 3, params=SUBSET, method="lanczos", iterations=40)
    assert lan.method == "lanczos" and lan.matvecs == 40
    torch.testing.assert_close(torch.tensor(lan.values, dtype=torch.float64), want, rtol=RTOL, atol=0)
    assert max(lan.residuals) < 1e-8 * want[0]  # converged Ritz pairs of the operator it was given
    power = hessian_eigenvalues(model, batches, 3, params=SUBSET, method="power", iterations=500, tol=1e-8)
    assert power.method == "power"
    # Power converges linearly (ratio λ_2/λ_1 and (λ_3+c)/(λ_2+c)): 1e-6 is what tol 1e-10 reaches.
    torch.testing.assert_close(torch.tensor(power.values, dtype=torch.float64), want, rtol=RTOL, atol=0)


@pytest.mark.parametrize("top", [[-10.0, 5.0, 4.0, 3.0], [5.0, -5.0, 4.0, 3.0]])
def test_top_k_is_algebraic_whatever_the_sign_of_the_dominant_eigenvalue(top):
    """A = Q diag(λ) Qᵀ with a dominant −10 (plain power iteration would return it first), or ±5 (where
    the Rayleigh quotient of plain power iteration stalls at a mixture)."""
    n = 30
    lams = torch.cat([torch.tensor(top), torch.linspace(-2.0, 2.0, n - 4)]).double()
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = q @ torch.diag(lams) @ q.T
    want = sorted(lams.tolist(), reverse=True)
    for method in ("lanczos", "power"):
        gen = torch_generator(1, method)  # for ±5, seed 1's unshifted power run stalls at +4.43
        if method == "lanczos":
            est = lanczos(lambda v: a @ v, n, 3, iterations=n, generator=gen)
        else:
            est = power_iteration(lambda v: a @ v, n, 3, iterations=3000, tol=1e-13, generator=gen)
        assert est.values == pytest.approx(want[:3], rel=1e-6), method
        assert max(est.residuals) < 1e-5
    full = lanczos(lambda v: a @ v, n, n, iterations=n, generator=torch_generator(1))
    assert full.values == pytest.approx(want, abs=1e-9)  # m = n: the whole spectrum


def test_eigenvalues_are_seeded(exact):
    model, batches, _, _ = exact
    one = hessian_eigenvalues(model, batches, 2, params=SUBSET, iterations=6, seed=3)
    assert one == hessian_eigenvalues(model, batches, 2, params=SUBSET, iterations=6, seed=3)
    assert one != hessian_eigenvalues(model, batches, 2, params=SUBSET, iterations=6, seed=4)


# --- Hutchinson ---------------------------------------------------------------------------------------


def test_hutchinson_is_within_four_standard_errors_of_the_exact_trace(exact):
    """The estimator is unbiased (E[zzᵀ] = I for Rademacher z) and its SE is the sample sd of its own
    samples over √n, so by the CLT the mean lies within 4 SE of tr(H) with probability ≈ 0.99994; the
    samples are seeded, so the outcome is fixed."""
    model, batches, _, hess = exact
    est = hutchinson_trace(model, batches, 64, params=SUBSET, seed=0)
    assert est.samples == 64 and len(est.values) == 64 and est.se > 0
    assert abs(est.mean - hess.trace().item()) < 4 * est.se
    head = hutchinson_trace(model, batches, 8, params=SUBSET, seed=0)
    assert head.values == est.values[:8]  # sample i does not depend on the number of samples


def test_hutchinson_standard_error_shrinks_as_one_over_sqrt_n(exact):
    """On the exact Hessian as a matrix: the samples' sd estimates σ = √(2 Σ_{i≠j} H_ij²) (the variance
    of zᵀHz for Rademacher z), so SE·√n → σ and SE(n)/SE(16n) → 4. At n = 400 the sample sd is within
    ~4% of σ (its relative sd is about √(κ/(4n)) for a kurtosis κ of a few), so 15% is > 3 sd."""
    _, _, _, hess = exact
    off = hess - torch.diag(torch.diag(hess))
    sigma = math.sqrt(2 * (off**2).sum().item())
    ses = {}
    for n in (400, 6400):
        est = hutchinson(lambda v: hess @ v, hess.shape[0], n, generator=torch_generator(0, "h"))
        ses[n] = est.se
        assert est.se * math.sqrt(n) == pytest.approx(sigma, rel=0.15)
        assert abs(est.mean - hess.trace().item()) < 4 * est.se
    assert ses[400] / ses[6400] == pytest.approx(4.0, rel=0.2)
    single = hutchinson(lambda v: hess @ v, hess.shape[0], 1, generator=torch_generator(0))
    assert math.isnan(single.se)


# --- SAM ε-ball sharpness ----------------------------------------------------------------------------


def test_sam_follows_its_taylor_expansion_and_restores_the_weights(exact):
    """One step: S(ρ) = L(θ + ρĝ) − L(θ) = ρ‖g‖ + ½ρ²ĝᵀHĝ + O(ρ³). At ρ = 1e-2 the second-order term
    is 3e-5 nats; the loss itself is only known to ~2e-7 (float32 RMSNorm and softmax inside the float64
    model), ~1% of it, and the measured remainder is 1.2% of it: 5% is the tolerance, tight enough to
    prove the curvature term (without it the gap would be 100%)."""
    model, batches, names, hess = exact
    before = _snapshot(model)
    rho = 1e-2
    res = sharpness(
        model,
        batches,
        SharpnessConfig(params="all", include=SUBSET, top_k=0, hutchinson_samples=0, rho=[rho]),
    )
    _assert_unchanged(model, before)
    point = res.sam[0]
    assert (
        point.value > 0 and point.radius == rho and point.loss == pytest.approx(res.base_loss + point.value)
    )
    grad = _flat(dict(zip(names, _grads(model, batches, names))), names)
    unit = grad / grad.norm()
    assert res.grad_norm == pytest.approx(grad.norm().item(), rel=1e-10)
    second = 0.5 * rho**2 * (unit @ hess @ unit).item()
    assert abs(point.value - (rho * res.grad_norm + second)) < 0.05 * abs(second)

    # K = 2 steps of 2ρ/K: the first iterate is the one-step δ, and the value is the best iterate's
    multi = sam_sharpness(model, batches, [rho, 0.3], params=SUBSET, ascent_steps=2)
    one = sam_sharpness(model, batches, [rho, 0.3], params=SUBSET)
    _assert_unchanged(model, before)
    assert one[0].value == pytest.approx(point.value, rel=1e-9)
    assert all(m.value >= o.value - 1e-12 for m, o in zip(multi, one))
    assert multi[1].value > one[1].value  # at ρ = 0.3 the second step does find a higher loss
    rel = sam_sharpness(model, batches, 0.01, params=SUBSET, relative=True)[0]
    theta_norm = math.sqrt(sum(before[n].pow(2).sum().item() for n in names))
    assert rel.radius == pytest.approx(0.01 * theta_norm, rel=1e-12)
    assert sam_sharpness(model, batches, 0.0, params=SUBSET)[0].value == 0.0


def _grads(model, batches, names):
    params = dict(model.named_parameters())
    model.eval()
    tokens = sum(x[:, 1:].numel() for x in batches)
    with eager_attention(model):
        loss = (
            sum(
                torch.nn.functional.cross_entropy(
                    model(input_ids=x).logits[:, :-1].reshape(-1, VOCAB),
                    x[:, 1:].reshape(-1),
                    reduction="sum",
                )
                for x in batches
            )
            / tokens
        )
        return torch.autograd.grad(loss, [params[n] for n in names])


def test_weights_flags_and_attention_are_restored_after_an_exception_inside():
    model, batches = _tiny_llama(), _batches(n=1)
    model.train()
    model.lm_head.weight.requires_grad_(False)
    before = _snapshot(model)
    calls = []

    def fail_on_second_forward(module, args):
        calls.append(1)
        if len(calls) == 2:  # the first forward is the gradient at θ, the second runs at θ + δ
            raise RuntimeError("boom")

    hook = model.register_forward_pre_hook(fail_on_second_forward)
    with pytest.raises(RuntimeError, match="boom"):
        sam_sharpness(model, batches, 0.5, params=SUBSET)
    hook.remove()
    _assert_unchanged(model, before)
    assert model.training and model.config._attn_implementation == "sdpa"
    assert not model.lm_head.weight.requires_grad and model.model.norm.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


# --- zero curvature ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["multiplied_by_zero", "unused"])
@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_zero_curvature_gives_zeros(case, method):
    model, batches = _tiny_llama(), _batches(n=1)
    if case == "multiplied_by_zero":  # attention output × 0: the loss does not depend on q, k, v
        with torch.no_grad():
            model.model.layers[0].self_attn.o_proj.weight.zero_()
        params = r"self_attn\.(q|k|v)_proj"
    else:  # a parameter no forward uses: no gradient at all (the allow_unused path)
        model.unused = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
        params = "unused"
    cfg = SharpnessConfig(
        params="all",
        include=params,
        top_k=3,
        method=method,
        iterations=5,
        hutchinson_samples=4,
        rho=[0.1, 1.0],
        ascent_steps=2,
    )
    res = sharpness(model, batches, cfg)
    assert res.eigen.values == (0.0, 0.0, 0.0) and res.grad_norm == 0.0
    assert res.trace.mean == 0.0 and res.trace.se == 0.0
    assert [p.value for p in res.sam] == [0.0, 0.0]


# --- families, LoRA ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, subset",
    [
        ("llama-nano", r"layers\.1\.input_layernorm|model\.norm"),
        ("olmo2-nano", r"layers\.1\.self_attn\.(q|k)_norm|model\.norm"),
        ("neox-nano", r"layers\.1\.input_layernorm|final_layer_norm"),
    ],
)
def test_every_family(preset, subset):
    """Exact HVP in float64 through each family's attention; the whole probe in float32 on the
    sdpa model, which is left as it was."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=preset), VOCAB, SEQ)
    batches = _batches(n=1, batch=2)
    wide = copy.deepcopy(model).double()
    names, hess = exact_hessian(wide, batches, subset)
    v = torch.randn(hess.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = _flat(hvp(wide, batches, _split(wide, names, v)), names)
    torch.testing.assert_close(got, hess @ v, rtol=RTOL, atol=ATOL * (hess @ v).abs().max().item())
    lan = hessian_eigenvalues(wide, batches, 2, params=subset, iterations=hess.shape[0])
    torch.testing.assert_close(
        torch.tensor(lan.values, dtype=torch.float64), _spectrum(hess)[:2], rtol=RTOL, atol=0
    )

    before = _snapshot(model)
    res = sharpness(model, batches, SharpnessConfig(top_k=2, iterations=8, hutchinson_samples=4, rho=[0.05]))
    _assert_unchanged(model, before)
    assert model.config._attn_implementation == "sdpa" and model.training
    assert res.n_params == sum(p.numel() for p in model.parameters())
    assert res.eigen.values[0] >= res.eigen.values[1] and all(math.isfinite(x) for x in res.eigen.values)
    assert math.isfinite(res.trace.mean) and res.sam[0].value > 0


def test_lora_model_with_the_lora_filter():
    """LoRA at init (B = 0): the Hessian over the factors is exact against functional_call on the PEFT
    model; over lora_A alone it is exactly zero (every second derivative in A carries B twice)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = build_model(ModelConfig(preset="llama-nano"), VOCAB, SEQ).double()
    model = get_peft_model(base, LoraConfig(r=1, lora_alpha=2, target_modules=["q_proj"]))
    batches = _batches(n=1, batch=2)
    names, hess = exact_hessian(model, batches, "lora_")
    assert len(names) == 4 and hess.shape == (64, 64)
    res = sharpness(
        model,
        batches,
        SharpnessConfig(include="lora_", top_k=3, iterations=64, hutchinson_samples=0, rho=[1e-3]),
    )
    assert res.tensors == tuple(names) and res.n_params == 64
    torch.testing.assert_close(
        torch.tensor(res.eigen.values, dtype=torch.float64), _spectrum(hess)[:3], rtol=RTOL, atol=0
    )
    assert res.eigen.values[0] > 0 and res.sam[0].value > 0
    # the default selection is the trainable parameters: on a PEFT model exactly the LoRA factors
    assert sharpness(model, batches, SharpnessConfig(top_k=0, hutchinson_samples=0, rho=[])).n_params == 64
    only_a = hessian_eigenvalues(model, batches, 1, params="lora_A", iterations=4)
    assert only_a.values == (0.0,)
    assert model.base_model.model.config._attn_implementation == "sdpa"


def test_bf16_autocast_is_refused_and_half_weights_get_a_float32_copy():
    from overtrain.errors import ConfigError

    model, batches = _tiny_llama(), _batches(n=1)
    probe = SharpnessProbe(SharpnessConfig(top_k=1, iterations=3, hutchinson_samples=0, rho=[0.01]))
    assert PROBES.get("sharpness").float32_only  # run kinds pass it no autocast
    with pytest.raises(ConfigError, match="dtype=float32"):
        probe.run(model, batches, autocast_dtype=torch.bfloat16)
    half = model.to(torch.float16)
    with pytest.raises(ValueError, match="float32 or float64 weights"):
        hessian_eigenvalues(half, batches)  # the plain functions never cast behind the caller's back
    before = _snapshot(half)
    with pytest.warns(UserWarning, match="float32 copy"):
        res = probe.run(half, batches)
    _assert_unchanged(half, before)
    assert (
        res.dtype == "float32" and "torch.float16" in res.note and res.summary_rows()[0]["dtype"] == "float32"
    )
    assert math.isfinite(res.lambda_max) and all(p.dtype == torch.float16 for p in half.parameters())


# --- results, config, registration --------------------------------------------------------------------


def test_rows_and_summary(exact):
    model, batches, _, _ = exact
    cfg = SharpnessConfig(
        include=SUBSET, params="all", top_k=2, iterations=10, hutchinson_samples=3, rho=[0.01, 0.1]
    )
    res = sharpness(model, batches, cfg)
    rows = res.rows(step=7)
    assert [r["quantity"] for r in rows] == ["eigenvalue", "eigenvalue", "trace", "sam", "sam"]
    assert all(r["probe"] == "sharpness" and r["step"] == 7 and r["base_loss"] == res.base_loss for r in rows)
    assert [r["index"] for r in rows[:2]] == [0, 1] and rows[0]["value"] == res.lambda_max
    assert rows[0]["method"] == "lanczos" and rows[0]["residual"] >= 0
    assert rows[2] == {
        "probe": "sharpness",
        "quantity": "trace",
        "value": res.trace.mean,
        "se": res.trace.se,
        "samples": 3,
        "base_loss": res.base_loss,
        "step": 7,
    }
    assert [(r["rho"], r["value"]) for r in rows[3:]] == [(p.rho, p.value) for p in res.sam]
    (summary,) = res.summary_rows(step=7)
    assert summary["lambda_max"] == res.lambda_max and summary["trace"] == res.trace.mean
    assert summary["trace_se"] == res.trace.se and summary["n_params_selected"] == 72
    assert summary["sam/0.01"] == res.sam[0].value and summary["sam/0.1"] == res.sam[1].value
    assert summary["tokens"] == 2 * 4 * (SEQ - 1) and summary["step"] == 7
    with eager_attention(model):  # the attention the loss was measured with (sdpa differs at ~1e-9)
        want = (
            sum(
                torch.nn.functional.cross_entropy(
                    model(input_ids=x).logits[:, :-1].reshape(-1, VOCAB),
                    x[:, 1:].reshape(-1),
                    reduction="sum",
                ).item()
                for x in batches
            )
            / summary["tokens"]
        )
    assert summary["base_loss"] == pytest.approx(want, rel=1e-12)


def test_config_validation():
    for bad in (
        {"rho": [-0.1]},
        {"rho": [math.inf]},
        {"rho": [0.1, 0.1]},
        {"top_k": -1},
        {"iterations": 0},
        {"method": "arnoldi"},
        {"hutchinson_samples": -1},
        {"include": "("},
        {"top_k": 5, "iterations": 4},
        {"ascent_steps": 0},
        {"rho_scale": "log"},
        {"radius": 1},
    ):
        with pytest.raises(ValidationError):
            SharpnessConfig(**bad)
    assert SharpnessConfig(method="power", top_k=5, iterations=4).iterations == 4  # per eigenvalue
    with pytest.raises(ValueError, match="selects no tensor"):
        sharpness(_tiny_llama(), _batches(n=1), SharpnessConfig(include="nothing"))


def test_registered_probe_and_its_batches():
    from overtrain.data.hmm import HMMConfig

    assert PROBES.get("sharpness") is SharpnessProbe and SharpnessProbe.config_cls is SharpnessConfig
    source = HMMConfig(vocab_size=VOCAB, states=4, floor_sequences=64).build()
    probe = SharpnessProbe(
        SharpnessConfig(eval_batches=2, batch_size=3, top_k=1, iterations=3, hutchinson_samples=0, rho=[])
    )
    xs = probe.batches(source, SEQ)
    assert len(xs) == 2 and all(torch.equal(x, source.batch("val", i, 3, SEQ)) for i, x in enumerate(xs))
    torch.manual_seed(0)
    res = probe.run(build_model(ModelConfig(preset="llama-nano"), VOCAB, SEQ), xs, init_state=None)
    assert len(res.eigen.values) == 1 and res.trace is None and res.sam == ()


def test_probe_run_kind_on_a_pretraining_checkpoint(home, tiny_pretrain):
    from overtrain.config import validate
    from overtrain.errors import ConfigError
    from overtrain.runs.jsonl import read_jsonl
    from overtrain.runs.kinds.probe import ProbeRunConfig
    from overtrain.runs.store import Store
    from overtrain.training.pretrain_config import PretrainConfig

    store = Store()
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    settings = {
        "top_k": 2,
        "iterations": 6,
        "hutchinson_samples": 3,
        "rho": [0.01, 0.05],
        "eval_batches": 1,
        "batch_size": 4,
    }
    base = {"parent": pre.run_id, "checkpoint": "budget_5120", "probe": "sharpness"}
    out = store.execute(RUN_KINDS.get("probe"), validate(ProbeRunConfig, {**base, "settings": settings}))
    rows = read_jsonl(out.dir / "probes.jsonl")
    assert [r["quantity"] for r in rows] == ["eigenvalue", "eigenvalue", "trace", "sam", "sam"]
    assert all(r["checkpoint"] == "budget_5120" and r["budget"] == 5120 for r in rows)
    (summary,) = read_jsonl(out.dir / "evals.jsonl")
    assert summary["probe"] == "sharpness" and summary["lambda_max"] == rows[0]["value"]
    assert summary["lambda_max"] > 0 and summary["trace_samples"] == 3
    assert 0 < summary["sam/0.01"] < summary["sam/0.05"] and summary["n_params_selected"] > 8000

    with pytest.raises(ConfigError, match="settings.rhoo: unknown key"):
        validate(ProbeRunConfig, {**base, "settings": {"rhoo": [0.1]}})
    with pytest.raises(ConfigError, match="settings.rho: .*>= 0"):
        validate(ProbeRunConfig, {**base, "settings": {"rho": [-0.1]}})
    # a bf16 probe run measures curvature in float32 anyway (the probe declares float32_only)
    bf16 = store.execute(
        RUN_KINDS.get("probe"), validate(ProbeRunConfig, {**base, "settings": settings, "dtype": "bfloat16"})
    )
    (bf16_summary,) = read_jsonl(bf16.dir / "evals.jsonl")
    assert bf16_summary["lambda_max"] == pytest.approx(summary["lambda_max"], rel=1e-6)
