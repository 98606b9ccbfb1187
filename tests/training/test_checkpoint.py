"""Checkpoints: HF round trip, refusal of pickles, corruption detection, bit-exact trainer state."""

from __future__ import annotations

import pytest
import torch

from overtrain.errors import CheckpointError
from overtrain.models.presets import ModelConfig, build_model
from overtrain.training import checkpoint as ckpt
from overtrain.training.loop import build_optimizer


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="llama-nano"), vocab_size=16, max_positions=32)


def _step(model, optimizer, seed):
    x = torch.randint(0, 16, (4, 32), generator=torch.Generator().manual_seed(seed))
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_model_checkpoint_round_trip(tmp_path, model):
    path = ckpt.save_checkpoint(tmp_path / "step_1", model, None, {"step": 1, "tokens_seen": 128})
    loaded, tokenizer, meta = ckpt.load_checkpoint(path)
    assert meta == {"step": 1, "tokens_seen": 128} and tokenizer is None
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert not list(tmp_path.glob(".tmp-*"))


def test_list_checkpoints_orders_by_tokens_and_skips_resume_and_temp(tmp_path, model):
    root = tmp_path / "ckpt"
    ckpt.save_checkpoint(root / "budget_900", model, None, {"tokens_seen": 900})
    ckpt.save_checkpoint(root / "step_00000002", model, None, {"tokens_seen": 200})
    (root / ckpt.RESUME).mkdir()
    (root / ".tmp-abc").mkdir()
    names = [m["name"] for m in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_00000002", "budget_900"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "checkpoint not found"),
        ("pickle", "refusing to unpickle pytorch_model.bin"),
        ("truncate", "corrupt checkpoint"),
        ("no-config", "no config.json"),
    ],
)
def test_damaged_checkpoints_are_one_line_errors(tmp_path, model, damage, message):
    path = ckpt.save_checkpoint(tmp_path / "c", model, None, {})
    weights = path / "model.safetensors"
    if damage == "missing":
        path = tmp_path / "nope"
    elif damage == "pickle":
        weights.unlink()
        (path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "no-config":
        (path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=message) as info:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_trainer_state_restores_weights_moments_and_rng_bit_exactly(tmp_path, model):
    optimizer = build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8)
    _step(model, optimizer, 0)
    torch.manual_seed(123)
    ckpt.save_trainer_state(tmp_path / "resume", model, optimizer, {"step": 1})
    expected_next = torch.rand(3)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()}
    _step(model, optimizer, 1)  # move everything away from the saved state
    torch.rand(7)
    fresh = build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8)
    state = ckpt.load_trainer_state(tmp_path / "resume", model, fresh)
    assert state == {"step": 1}
    assert torch.equal(torch.rand(3), expected_next)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    restored = fresh.state_dict()
    assert restored["param_groups"][0]["betas"] == (0.9, 0.95)
    for i, entry in saved_opt.items():
        for k, v in entry.items():
            assert torch.equal(restored["state"][i][k], v), (i, k)


def test_truncated_trainer_state_is_a_checkpoint_error(tmp_path, model):
    optimizer = build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8)
    _step(model, optimizer, 0)
    ckpt.save_trainer_state(tmp_path / "resume", model, optimizer, {})
    f = tmp_path / "resume" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:64])
    with pytest.raises(CheckpointError, match="corrupt resume state"):
        ckpt.load_trainer_state(tmp_path / "resume", model, optimizer)


def test_a_bit_flip_is_caught_by_the_checksums(tmp_path, model):
    path = ckpt.save_checkpoint(tmp_path / "c", model, None, {})
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-7] ^= 0x10  # inside a tensor: the file still parses, the model would load with one wrong weight
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors: sha256 mismatch"):
        ckpt.load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, model):
    """transformers alone re-initialises a missing tensor at random and only logs a report."""
    from safetensors.torch import load_file, save_file

    path = ckpt.save_checkpoint(tmp_path / "c", model, None, {})
    (path / "checksums.json").unlink()  # like a checkpoint written by another tool
    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        CheckpointError, match=r"weights do not fit config.json \(1 tensors .*model.norm.weight"
    ):
        ckpt.load_checkpoint(path)
