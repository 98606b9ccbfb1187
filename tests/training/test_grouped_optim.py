"""Grouped AdamW + per-member clipping follow each model trained alone with torch's AdamW and clip."""

from __future__ import annotations

import torch

from overtrain.models.grouped import GroupedLlama
from overtrain.models.presets import ModelConfig, build_model
from overtrain.training.grouped_optim import GroupedAdamW, clip_grad_norms_
from overtrain.training.loop import build_optimizer

V, T = 32, 16


def test_members_follow_their_single_model_trajectories():
    lrs = [1e-3, 3e-3, 1e-2]
    models = []
    for i in range(3):
        torch.manual_seed(i)
        models.append(build_model(ModelConfig(preset="llama-nano"), V, T))
    group = GroupedLlama.from_models(models)
    opt = GroupedAdamW(group.trainable(), torch.tensor(lrs), weight_decay=0.1, betas=(0.9, 0.95))
    singles = [build_optimizer(m, lr, 0.1, (0.9, 0.95), 1e-8) for m, lr in zip(models, lrs, strict=True)]
    torch.manual_seed(0)
    batches = [torch.randint(0, V, (3, 4, T)) for _ in range(5)]
    for step, x in enumerate(batches):
        scale = 0.5 + 0.1 * step  # a schedule shared by the members
        group.loss(x).sum().backward()
        norms = clip_grad_norms_(group.trainable(), 0.5)  # small enough that every member is clipped
        opt.set_lr(torch.tensor(lrs) * scale)
        opt.step()
        opt.zero_grad()
        for i, (model, single) in enumerate(zip(models, singles, strict=True)):
            model(input_ids=x[i], labels=x[i], use_cache=False).loss.backward()
            ref_norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), 0.5)
            torch.testing.assert_close(norms[i], ref_norm, rtol=1e-5, atol=0)
            assert ref_norm > 0.5
            for group_ in single.param_groups:
                group_["lr"] = lrs[i] * scale
            single.step()
            single.zero_grad()
    for i, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(group.params[name][i], p.detach(), rtol=1e-5, atol=1e-6, msg=name)
    # the members moved apart: a member reading another's learning rate would fail above
    moved = [float((group.params["model.norm.weight"][i].detach() - 1).abs().max()) for i in range(3)]
    assert moved[0] < moved[1] < moved[2]


def test_clip_leaves_small_gradients_alone():
    p = torch.zeros(2, 3, 4, requires_grad=True)
    p.grad = torch.stack([torch.full((3, 4), 0.01), torch.full((3, 4), 10.0)])
    norms = clip_grad_norms_([p], 1.0)
    torch.testing.assert_close(norms, torch.tensor([0.01 * 12**0.5, 10 * 12**0.5]))
    assert torch.allclose(p.grad[0], torch.full((3, 4), 0.01))
    torch.testing.assert_close(p.grad[1].norm(), torch.tensor(1.0), rtol=1e-5, atol=0)
