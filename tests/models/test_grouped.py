"""The grouped model against the HF model, member by member: logits, loss, gradients, LoRA, evaluation."""

from __future__ import annotations

import pytest
import torch

from overtrain.core.evaluate import evaluate_loss
from overtrain.models.grouped import GroupedLlama, grouped_eval_loss, grouping_problem
from overtrain.models.presets import ModelConfig, build_hf_config, build_model

V, T = 32, 16


def _members(k: int, preset: str = "llama-nano", **overrides):
    models = []
    for i in range(k):
        torch.manual_seed(100 + i)
        # a wider init than the default so the members differ well above float noise
        cfg = ModelConfig(preset=preset, overrides={"initializer_range": 0.2, **overrides})
        models.append(build_model(cfg, V, T))
    return models


def _hf_loss(model, x):
    return model(input_ids=x, labels=x, use_cache=False).loss


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("shared_batch", [False, True])
def test_members_match_the_hf_model_in_loss_logits_and_gradients(tied, shared_batch):
    models = _members(3, tie_word_embeddings=tied)
    group = GroupedLlama.from_models(models)
    torch.manual_seed(0)
    x = torch.randint(0, V, (4, T)) if shared_batch else torch.randint(0, V, (3, 4, T))
    per_member = [x if shared_batch else x[i] for i in range(3)]

    loss = group.loss(x)
    loss.sum().backward()
    logits = group.logits(x).detach()
    for i, model in enumerate(models):
        ref = _hf_loss(model, per_member[i])
        ref.backward()
        torch.testing.assert_close(loss[i], ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(logits[i], model(input_ids=per_member[i]).logits, rtol=1e-5, atol=1e-5)
        for name, p in model.named_parameters():
            torch.testing.assert_close(group.params[name].grad[i], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the members really differ: a wrong stacking order would not pass the loop above by accident
    assert len({round(float(v), 4) for v in loss.detach()}) == 3


def test_lora_members_match_peft_in_loss_and_adapter_gradients():
    from overtrain.core.lora import lora_layers
    from overtrain.training.methods.lora import LoraFinetune

    method = LoraFinetune(rank=2, alpha=4)
    peft_models = []
    for i, model in enumerate(_members(2)):
        torch.manual_seed(i)
        peft_model = method.apply(model)
        for view in lora_layers(peft_model):  # B starts at zero; give it a value so the adapter counts
            torch.nn.init.normal_(view.B, std=0.3)
        peft_models.append(peft_model)
    group = GroupedLlama.from_models(peft_models, trainable="lora")
    assert all(not p.requires_grad for p in group.params.values())
    assert len(group.lora) == 14  # 7 linears x 2 layers
    x = torch.randint(0, V, (4, T))
    loss = group.loss(x)
    loss.sum().backward()
    for i, peft_model in enumerate(peft_models):
        ref = _hf_loss(peft_model, x)
        ref.backward()
        torch.testing.assert_close(loss[i], ref, rtol=0, atol=1e-5)
        for view in lora_layers(peft_model):
            key = view.name.removeprefix("base_model.model.")
            torch.testing.assert_close(group.lora[key].A.grad[i], view.A.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(group.lora[key].B.grad[i], view.B.grad, rtol=1e-4, atol=1e-6)
        state = group.member_state(i)
        key = "model.layers.0.mlp.up_proj"
        assert torch.equal(
            state[f"{key}.lora_B.default.weight"],
            dict(peft_model.named_parameters())[f"base_model.model.{key}.lora_B.default.weight"],
        )


def test_grouped_eval_loss_is_evaluate_loss_per_member():
    models = _members(2)
    group = GroupedLlama.from_models(models, trainable="none")
    batches = [torch.randint(0, V, (5, T)) for _ in range(3)]
    got = grouped_eval_loss(group, batches)
    for value, model in zip(got, models, strict=True):
        assert value == pytest.approx(evaluate_loss(model, batches), abs=2e-6)


def test_stacks_are_copies():
    models = _members(2)
    before = models[0].model.norm.weight.detach().clone()
    group = GroupedLlama.from_models(models)
    with torch.no_grad():
        group.params["model.norm.weight"].add_(1.0)
    assert torch.equal(models[0].model.norm.weight, before)


@pytest.mark.parametrize(
    ("preset", "overrides", "reason"),
    [
        ("neox-nano", {}, "model type 'gpt_neox'"),
        ("olmo2-nano", {}, "model type 'olmo2'"),
        ("llama-nano", {"num_key_value_heads": 2}, "grouped-query attention"),
        ("llama-nano", {"mlp_bias": True}, "linear biases"),
    ],
)
def test_models_it_cannot_group_are_named_with_the_reason(preset, overrides, reason):
    config = build_hf_config(ModelConfig(preset=preset, overrides=overrides), V, T)
    assert reason in grouping_problem(config)
    with pytest.raises(ValueError, match="cannot group"):
        GroupedLlama(config, {"x": torch.zeros(1, 1)})


def test_plain_llama_can_be_grouped():
    assert grouping_problem(build_hf_config(ModelConfig(preset="llama-nano"), V, T)) is None
