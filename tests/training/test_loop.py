"""The training loop against a plain hand-written loop doing the same work."""

from __future__ import annotations

import copy

import pytest
import torch

from overtrain.core.evaluate import evaluate_loss
from overtrain.models.presets import ModelConfig, build_model
from overtrain.training.loop import build_optimizer, train_segment


def _setup():
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="llama-nano"), vocab_size=16, max_positions=16)
    batches = [torch.randint(0, 16, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(5)]
    return model, batches


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_segment_equals_a_plain_loop(dtype):
    model, batches = _setup()
    ref = copy.deepcopy(model)
    opt = build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8)
    ref_opt = build_optimizer(ref, 1e-2, 0.1, (0.9, 0.95), 1e-8)
    stats = train_segment(
        model, opt, batches.__getitem__, lambda s: 1e-2, 0, 5, grad_clip=1.0, autocast_dtype=dtype
    )
    losses = []
    for x in batches:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = ref(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        ref_opt.step()
        ref_opt.zero_grad()
        losses.append(loss.item())
    assert stats.mean_loss == pytest.approx(sum(losses) / 5, rel=1e-6)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_evaluate_loss_is_the_token_mean_of_the_hf_loss():
    model, batches = _setup()
    with torch.no_grad():
        expected = sum(model(input_ids=x, labels=x).loss.item() for x in batches) / len(batches)
    assert evaluate_loss(model, batches) == pytest.approx(expected, rel=1e-6)
    assert model.training  # restored
