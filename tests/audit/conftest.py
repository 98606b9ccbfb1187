"""Tiny Hugging Face checkpoints saved as "revisions", and the one-line-error check of ``overtrain audit``."""

from __future__ import annotations

import pytest
import torch

from overtrain.cli.main import main
from overtrain.data.tokenizer import byte_tokenizer
from overtrain.models.presets import ModelConfig, build_model


@pytest.fixture(autouse=True)
def _one_thread(home):
    """Tiny models run slower with two threads fighting over two cores than with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save_revisions(root, family: str, names, tokenizer=None, vocab=256):
    """Save one tiny model per name; revision k has had k SGD steps on random bytes (distinct weights)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=f"{family}-nano"), vocab, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    dirs = []
    for k, name in enumerate(names):
        if k:
            x = torch.randint(0, vocab, (4, 32))
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
        path = root / name
        model.save_pretrained(path, safe_serialization=True)
        (tokenizer or byte_tokenizer()).save_pretrained(path)
        dirs.append(path)
    return dirs


@pytest.fixture
def save_revisions():
    """``save_revisions(root, family, names, tokenizer=None)`` -> the saved directories."""
    return _save_revisions


@pytest.fixture
def cli(capsys):
    """``cli(*argv)``: run ``overtrain ARGV`` in-process; returns (exit code, stdout, stderr)."""

    def run(*argv):
        capsys.readouterr()  # only the command's own output (a fixture's progress bar printed before it)
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        out = capsys.readouterr()
        return info.value.code, out.out, out.err

    return run


@pytest.fixture
def fails(capsys):
    """``fails(args, match)``: ``overtrain audit ARGS`` exits 2 with one stderr line containing `match`."""

    def check(args, match):
        # drop what the test printed before (transformers' "Writing model shards" bar when a fixture saved
        # checkpoints in this test's process): only the command's own stderr is judged
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["audit", *args])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2, err
        assert len(err.splitlines()) == 1 and match in err, err

    return check
