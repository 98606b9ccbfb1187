"""lm_harness silences lm-eval's `git describe` by patching the name ``lm_eval.evaluator`` imports; the
patch must take (so git is never asked) and the installed lm-eval must lie in pyproject's bound."""

from __future__ import annotations

import json
import re
import tomllib
from importlib.metadata import version

import pytest
import torch

from overtrain.data.tokenizer import byte_tokenizer
from overtrain.models.presets import ModelConfig, build_model
from overtrain.paths import repo_root
from overtrain.probes import lm_harness

lm_eval = pytest.importorskip("lm_eval")


def test_installed_lm_eval_is_within_the_eval_extra_bound():
    from packaging.specifiers import SpecifierSet

    root = repo_root()
    if root is None:
        pytest.skip("not a source checkout")
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["eval"]
    spec = SpecifierSet(re.sub(r"^lm_eval", "", next(e for e in extra if e.startswith("lm_eval"))))
    assert spec.contains(version("lm_eval")), (version("lm_eval"), str(spec))


def test_the_harness_never_asks_git(tmp_path, home, monkeypatch):
    import lm_eval.evaluator

    def asked() -> str:
        raise AssertionError("lm-eval ran git describe")

    assert hasattr(lm_eval.evaluator, "get_git_commit_hash")  # the name the patch replaces
    monkeypatch.setattr(lm_eval.evaluator, "get_git_commit_hash", asked)
    (tmp_path / "mc.jsonl").write_text(
        json.dumps({"q": "To be, or not to", "c": [" be", " x"], "y": 0}) + "\n"
    )
    (tmp_path / "mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: mc.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: '{{c}}'\ndoc_to_target: y\nmetric_list:\n  - metric: acc\n"
    )
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="llama-nano"), 256, 64).eval()
    tasks = [lm_harness.load_task(tmp_path / "mc.yaml", tmp_path / "cache")]
    rows, _ = lm_harness.evaluate_tasks(model, byte_tokenizer(), tasks, lm_harness.LmEvalConfig())
    assert {(r["task"], r["metric"]) for r in rows} == {("tiny_mc", "acc")}
