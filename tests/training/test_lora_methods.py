"""Weight-perturbation fine-tuning methods (Flat-LoRA, Li et al. 2025; LoRA-GGPO, Chang et al. 2025; docs/lora_dd.md): the noise law, the special cases, restoring,
and statistics that never turn into NaN."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml
from torch import nn

from overtrain.config import validate
from overtrain.core.lora import lora_layers
from overtrain.errors import ConfigError
from overtrain.registry import FINETUNE_METHODS, RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.training.step_rules import StepRule


def _mlp_lora(method: str = "lora", seed: int = 0, **kw):
    """A 12-32-32-4 GELU MLP with LoRA (r = 4) on its hidden layers, B drawn non-zero so W' ≠ W."""
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4))
    cfg = FINETUNE_METHODS.get(method)(rank=4, alpha=4, target_modules=["0", "2"], **kw)
    model = cfg.apply(base)
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.B.normal_(0, 0.3)
    return cfg, model


def _data(seed=1, n=64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randn(n, 4, generator=g)


def _loss_fn(model, x, y):
    return lambda: nn.functional.mse_loss(model(x), y)


def _train(cfg, model, steps=5, seed=0):
    x, y = _data()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rule = cfg.step_rule(model, opt, seed)
    model.train()
    for _ in range(steps):
        rule.forward_backward(_loss_fn(model, x, y))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return rule, opt


def _z_scores(rule, draws=400):
    """Per-row z-score of the empirical noise variance against the law's (variance of a sample variance
    of N normals is 2v²/N)."""
    samples = {name: [] for name in rule.grad_sq} | {layer.weight_name: [] for layer in rule.layers}
    for _ in range(draws):
        for name, eps in rule.sample().items():
            samples[name].append(eps)
    out = []
    for layer in rule.layers:
        eps = torch.stack(samples[layer.weight_name]).double()  # draws x d_out x d_in
        n = eps.shape[0] * eps.shape[2]
        emp = eps.pow(2).sum((0, 2)) / n
        std, _ = rule.row_std(layer)
        v = std.double() ** 2
        out.append(((emp - v) / (v * math.sqrt(2 / n))).abs().max().item())
        assert eps.mean().abs() < 4 * v.mean().sqrt() / math.sqrt(eps.numel())
    return max(out)


@pytest.mark.parametrize(
    "std_form,norm_dim", [("paper", "in"), ("paper", "out"), ("kohya", "in"), ("kohya", "out")]
)
def test_row_noise_variance_matches_the_law(std_form, norm_dim):
    cfg, model = _mlp_lora("lora_ggpo", sigma=0.1, beta=0.5, std_form=std_form, norm_dim=norm_dim)
    rule, _ = _train(cfg, model, steps=3)  # steps refresh the gradient term, so β > 0 enters the law
    assert rule.grad_sq and all(g.gt(0).all() for g in rule.grad_sq.values())
    # the law by hand for one layer
    layer = rule.layers[1]
    merged = layer.base.weight + layer.scaling * layer.B @ layer.A
    w_sq, g_sq = merged.detach().pow(2).sum(1), rule.grad_sq[layer.weight_name]
    d = 32
    want = (
        ((0.1**2 / d) * (w_sq + 0.5 * g_sq)).sqrt()
        if std_form == "paper"
        else ((0.1 * w_sq.sqrt() + 0.5 * g_sq) / math.sqrt(d))
    )
    torch.testing.assert_close(rule.row_std(layer)[0], want, rtol=1e-5, atol=0)
    # 400 draws x 12 or 32 entries per row: a z-score above 5 in any of 64 rows would be a wrong law
    assert _z_scores(rule) < 5


def test_gradient_term_is_the_merged_weights_gradient_at_the_perturbed_point():
    cfg, model = _mlp_lora("lora_ggpo", beta=1.0)
    x, y = _data()
    rule = cfg.step_rule(model, None, 0)
    model.train()
    rule.forward_backward(_loss_fn(model, x, y))
    # the same loss as a function of explicit merged weights W' + ε
    for layer in rule.layers:
        ref = copy.deepcopy(model)
        target = dict(ref.named_parameters())[layer.weight_name]
        with torch.no_grad():
            for other in rule.layers:
                dict(ref.named_parameters())[other.weight_name].add_(rule.last_noise[other.weight_name])
        target.requires_grad_(True)
        nn.functional.mse_loss(ref(x), y).backward()
        torch.testing.assert_close(
            rule.grad_sq[layer.weight_name], target.grad.pow(2).sum(1), rtol=1e-5, atol=1e-12
        )
    # the frozen weights got no gradient and stay frozen
    assert all(
        layer.base.weight.grad is None and not layer.base.weight.requires_grad for layer in rule.layers
    )


def test_factor_gradient_source_is_kohyas_approximation_from_the_lora_gradients():
    cfg, model = _mlp_lora("lora_ggpo", beta=1.0, grad_source="factors")
    x, y = _data()
    rule = cfg.step_rule(model, None, 0)
    model.train()
    rule.forward_backward(_loss_fn(model, x, y))
    for layer in rule.layers:
        A, B = layer.A.detach().double(), layer.B.detach().double()
        G = layer.scaling * (B @ layer.A.grad.double() + layer.B.grad.double() @ A)
        torch.testing.assert_close(
            rule.grad_sq[layer.weight_name].double(), G.pow(2).sum(1), rtol=1e-5, atol=1e-12
        )
        assert layer.base.weight.grad is None and not layer.base.weight.requires_grad


def test_beta_zero_is_flat_lora_and_weights_come_back_bit_exactly():
    flat_cfg, flat = _mlp_lora("flat_lora", sigma=0.2)
    ggpo_cfg, ggpo = _mlp_lora("lora_ggpo", sigma=0.2, beta=0.0)
    frozen = {n: p.detach().clone() for n, p in flat.named_parameters() if not p.requires_grad}
    _train(flat_cfg, flat, steps=6, seed=3)
    _train(ggpo_cfg, ggpo, steps=6, seed=3)
    for (n, a), (_, b) in zip(flat.named_parameters(), ggpo.named_parameters()):
        assert torch.equal(a, b), n
    for n, p in flat.named_parameters():  # the noise never stays in the frozen weights
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    # and the noise changed the training: plain LoRA from the same start ends elsewhere
    plain_cfg, plain = _mlp_lora("lora")
    _train(plain_cfg, plain, steps=6, seed=3)
    assert not torch.equal(lora_layers(plain)[0].A, lora_layers(flat)[0].A)


@pytest.mark.parametrize("method", ["flat_lora", "lora_ggpo", "lora_mgpo", "lora_sam"])
def test_no_perturbation_outside_training(method):
    cfg, model = _mlp_lora(method)
    _train(cfg, model, steps=2)  # MGPO's momentum exists from here on
    x, y = _data(seed=5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rule = cfg.step_rule(model, opt, 0)
    model.eval()
    loss = rule.forward_backward(_loss_fn(model, x, y))
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    plain = nn.functional.mse_loss(model(x), y)
    plain.backward()
    assert torch.equal(loss, plain.detach())
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad]):
        assert torch.equal(g, p.grad)
    assert rule.stats() == {}


def test_mgpo_perturbs_along_the_momentum_over_a_gradient_norm_ema():
    cfg, model = _mlp_lora("lora_mgpo", rho=0.1, ema_beta=0.8)
    x, y = _data()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rule = cfg.step_rule(model, opt, 0)
    model.train()
    assert rule.perturbation() == {}  # no momentum before the first step: the first step is plain
    ema = {name: 1.0 for name in rule.factors}
    for step in range(3):
        eps = rule.perturbation()
        assert bool(eps) == (step > 0)
        for name, p in rule.factors.items():
            if eps:  # ε = ρ·m/ĝ with ĝ from the steps before this one
                torch.testing.assert_close(eps[name], 0.1 * opt.state[p]["exp_avg"] / ema[name])
        before = {n: p.detach().clone() for n, p in rule.factors.items()}
        rule.forward_backward(_loss_fn(model, x, y))
        for name, p in rule.factors.items():
            assert torch.equal(p, before[name])  # restored before the optimizer steps
            ema[name] = 0.8 * ema[name] + 0.2 * p.grad.norm().item()
            assert rule.ema[name].item() == pytest.approx(ema[name], rel=1e-6)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert set(rule.stats()) == {"mgpo/perturbation_norm"}


def test_sam_gradient_is_taken_at_the_normalised_ascent_point():
    cfg, model = _mlp_lora("lora_sam", rho=0.05)
    x, y = _data()
    rule = cfg.step_rule(model, None, 0)
    model.train()
    factors = list(rule.factors.values())
    start = [p.detach().clone() for p in factors]
    ref = copy.deepcopy(model)
    ref_factors = list(cfg.step_rule(ref, None, 0).factors.values())
    g = torch.autograd.grad(nn.functional.mse_loss(ref(x), y), ref_factors)
    norm = torch.sqrt(sum((t**2).sum() for t in g))
    with torch.no_grad():
        for p, t in zip(ref_factors, g):
            p.add_(0.05 * t / norm)
    want = torch.autograd.grad(nn.functional.mse_loss(ref(x), y), ref_factors)
    rule.forward_backward(_loss_fn(model, x, y))
    for p, s, w in zip(factors, start, want):
        assert torch.equal(p, s)
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)
    stats = rule.stats()
    assert set(stats) == {"sam/loss_increase"} and stats["sam/loss_increase"] > 0


def test_statistics_apply_or_are_absent_never_nan():
    assert StepRule().stats() == {}
    flat_cfg, flat = _mlp_lora("flat_lora")
    rule, _ = _train(flat_cfg, flat, steps=2)
    stats = rule.stats()
    assert set(stats) == {"noise/row_std"} and stats["noise/row_std"] > 0
    assert rule.stats() == {}  # nothing since the last call: nothing to average
    ggpo_cfg, ggpo = _mlp_lora("lora_ggpo")
    rule, _ = _train(ggpo_cfg, ggpo, steps=2)
    stats = rule.stats()
    assert set(stats) == {"noise/row_std", "ggpo/grad_share"} and 0 <= stats["ggpo/grad_share"] < 1


def test_a_model_without_lora_is_refused():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="no LoRA layer"):
        FINETUNE_METHODS.get("lora_ggpo")().step_rule(model, None, 0)


@pytest.fixture
def parent(home, tiny_pretrain):
    from overtrain.runs.store import Store
    from overtrain.training.pretrain_config import PretrainConfig

    store = Store()
    return store, store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))


@pytest.mark.parametrize("method", ["lora", "flat_lora", "lora_ggpo", "lora_mgpo", "lora_sam"])
def test_every_method_fine_tunes_a_language_model_from_a_config(parent, method):
    from overtrain.training.finetune import FinetuneConfig

    store, pre = parent
    cfg = validate(
        FinetuneConfig,
        {
            "parent": pre.run_id,
            "checkpoint": "budget_5120",
            "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
            "method": {"name": method, "rank": 2, "alpha": 4},
            "train": {"steps": 8, "batch_size": 8, "lr": 1e-2, "log_every": 4},
            "eval_batches": 2,
        },
    )
    out = store.execute(RUN_KINDS.get("finetune"), cfg)
    row = read_jsonl(out.dir / "evals.jsonl")[0]
    assert row["method"] == method and row["task_loss"] < row["base_task_loss"]
    records = read_jsonl(out.dir / "metrics.jsonl")
    text = (out.dir / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    keys = set().union(*(r.keys() for r in records))
    expected = {
        "lora": set(),
        "flat_lora": {"noise/row_std"},
        "lora_ggpo": {"noise/row_std", "ggpo/grad_share"},
        "lora_mgpo": {"mgpo/perturbation_norm"},
        "lora_sam": {"sam/loss_increase"},
    }[method]
    method_keys = {k for k in keys if k.split("/")[0] in ("noise", "ggpo", "mgpo", "sam")}
    assert method_keys == expected
    assert yaml.safe_load((out.dir / "config.yaml").read_text())["method"]["name"] == method


@pytest.mark.parametrize("std_form", ["paper", "kohya"])
def test_relative_beta_gives_the_gradient_term_its_target_share(std_form):
    """β̃ = 3 with no running average (grad_ema = 0): right after a refresh, summed over each layer's rows
    the gradient term is β̃ times the weight term, a share β̃/(1 + β̃) = 0.75 of the variance (paper) or of
    the summed std (kohya) — while an absolute β of 3 gives some other share."""
    cfg, model = _mlp_lora("lora_ggpo", beta=3.0, beta_scale="relative", grad_ema=0.0, std_form=std_form)
    x, y = _data()
    rule = cfg.step_rule(model, None, 0)
    model.train()
    rule.forward_backward(_loss_fn(model, x, y))  # refreshes the gradient; the weights do not move
    for layer in rule.layers:
        w_sq = layer.merged().float().pow(2).sum(1)
        weight = w_sq if std_form == "paper" else cfg.sigma * w_sq.sqrt()
        grad = rule.layer_beta(layer) * rule.grad_sq[layer.weight_name]
        assert float(grad.sum() / (grad.sum() + weight.sum())) == pytest.approx(0.75, rel=1e-5)
        std, _ = rule.row_std(layer)
        d = layer.base.in_features
        total = (std**2 * d / cfg.sigma**2) if std_form == "paper" else std * math.sqrt(d)
        assert float(total.sum()) == pytest.approx(float((grad + weight).sum()), rel=1e-4)
    absolute, model = _mlp_lora("lora_ggpo", beta=3.0, std_form=std_form)
    rule = absolute.step_rule(model, None, 0)
    model.train()
    rule.forward_backward(_loss_fn(model, x, y))
    layer = rule.layers[0]
    assert rule.layer_beta(layer) == 3.0
