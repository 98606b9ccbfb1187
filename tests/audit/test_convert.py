"""``overtrain convert``: pickle weights to safetensors, tied tensors included, bit-exact, atomic."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from overtrain.core.convert import convert_dir, unshare
from overtrain.data.tokenizer import byte_tokenizer
from overtrain.models.presets import ModelConfig, build_model
from overtrain.training.checkpoint import load_checkpoint


def _pickled_model(path, tied: bool = True):
    """A tiny Llama saved the old way: config + tokenizer + ``pytorch_model.bin`` (a plain state dict, in
    which tied embeddings share storage, as transformers 4's ``safe_serialization=False`` wrote them)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="llama-nano", overrides={"tie_word_embeddings": tied}), 256, 64)
    path.mkdir(parents=True)
    model.config.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    return model


def test_convert_then_audit_reads_bit_exact_weights(tmp_path, fails, cli):
    model = _pickled_model(tmp_path / "old")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    fails([str(tmp_path / "old"), "--probes", "reference_loss"], "overtrain convert")
    code, out, err = cli("convert", str(tmp_path / "old"))
    assert code == 0, err
    assert "only files you trust" in out and "copied 1 tensor(s) that shared storage" in out
    assert (tmp_path / "old" / "pytorch_model.bin").is_file()  # kept without --remove-bin
    stored = load_file(tmp_path / "old" / "model.safetensors")
    for name, t in model.state_dict().items():
        assert stored[name].dtype == t.dtype and torch.equal(stored[name], t), name
    loaded, _, _ = load_checkpoint(tmp_path / "old")
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    code, out, err = cli("audit", str(tmp_path / "old"), "--probes", "reference_loss", "--set", "seq_len=32")
    assert code == 0, err
    assert "old" in out
    # a second conversion has nothing to do: one line, exit 2
    code, _, err = cli("convert", str(tmp_path / "old"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "already has safetensors" in err


def test_remove_bin_and_bad_inputs(tmp_path, cli):
    _pickled_model(tmp_path / "a", tied=False)
    done = convert_dir(tmp_path / "a", remove_bin=True)
    assert done.removed == ["pytorch_model.bin"] and done.shared == 0
    assert not (tmp_path / "a" / "pytorch_model.bin").exists()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tmp")]
    code, _, err = cli("convert", str(tmp_path / "missing"))
    assert code == 2 and "checkpoint not found" in err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "pytorch_model.bin").write_bytes(b"not a pickle")
    code, _, err = cli("convert", str(tmp_path / "junk"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "cannot read" in err
    torch.save([1, 2], tmp_path / "junk" / "pytorch_model.bin")
    code, _, err = cli("convert", str(tmp_path / "junk"))
    assert code == 2 and "not a dict of named tensors" in err


def test_unshare_copies_views_and_ties():
    base = torch.arange(12.0).reshape(3, 4)
    out, copied = unshare({"a": base, "b": base, "c": base[1:], "d": torch.ones(2)})
    assert copied == 2 and all(torch.equal(out[k], v) for k, v in [("a", base), ("b", base), ("c", base[1:])])
    ptrs = [t.untyped_storage().data_ptr() for t in out.values()]
    assert len(set(ptrs)) == len(ptrs)
