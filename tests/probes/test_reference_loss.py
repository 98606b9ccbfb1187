"""Reference-loss (forgetting) probe: equals `evaluate_loss`, its standard error is sd/√n over batches,
and it runs through the probe run kind on the parent's data and on a user's text file.

Tolerance: the probe's loss is the token-weighted mean of per-batch `evaluate_loss` values, which
differs from one `evaluate_loss` over all batches only by float64 rounding (1e-12 relative).
"""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch

from overtrain.config import validate
from overtrain.core.evaluate import evaluate_loss
from overtrain.data.hmm import HMMConfig
from overtrain.errors import ConfigError, DataError
from overtrain.models.presets import ModelConfig, build_model
from overtrain.probes.reference_loss import (
    ReferenceLossConfig,
    ReferenceLossProbe,
    ReferenceLossResult,
    reference_loss,
)
from overtrain.registry import PROBES, RUN_KINDS

VOCAB, SEQ = 16, 16


@pytest.fixture(scope="module")
def source():
    return HMMConfig(vocab_size=VOCAB, states=4, floor_sequences=64).build()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="llama-nano"), VOCAB, SEQ)


def test_loss_is_evaluate_loss_and_stderr_is_sd_over_sqrt_n(model, source):
    probe = PROBES.get("reference_loss")(ReferenceLossConfig(eval_batches=4, batch_size=8))
    xs = probe.batches(source, SEQ)
    assert len(xs) == 4 and all(torch.equal(x, source.batch("val", i, 8, SEQ)) for i, x in enumerate(xs))
    model.train()
    res = probe.run(model, xs)
    assert model.training  # restored
    assert res.loss == pytest.approx(evaluate_loss(model, xs), rel=1e-12)
    assert res.batch_losses == tuple(evaluate_loss(model, [x]) for x in xs)
    assert res.stderr == pytest.approx(statistics.stdev(res.batch_losses) / 2, rel=1e-12)
    assert res.tokens == 4 * 8 * (SEQ - 1) and res.split == "val"


def test_one_batch_has_no_stderr_and_train_split_differs(model, source):
    res = reference_loss(model, [source.batch("val", 0, 4, SEQ)])
    assert math.isnan(res.stderr) and res.loss == res.batch_losses[0] and res.split is None
    train = ReferenceLossProbe(ReferenceLossConfig(eval_batches=1, batch_size=4, split="train"))
    assert not torch.equal(train.batches(source, SEQ)[0], source.batch("val", 0, 4, SEQ))


def test_rows_and_summary_rows():
    res = ReferenceLossResult(2.0, 0.1, (1.9, 2.1), 30, "val")
    assert res.rows(step=3) == [
        {"probe": "reference_loss", "split": "val", "batch": 0, "loss": 1.9, "step": 3},
        {"probe": "reference_loss", "split": "val", "batch": 1, "loss": 2.1, "step": 3},
    ]
    assert res.summary_rows(step=3) == [
        {
            "probe": "reference_loss",
            "split": "val",
            "loss": 2.0,
            "stderr": 0.1,
            "ppl": math.exp(2.0),
            "batches": 2,
            "tokens": 30,
            "step": 3,
        }
    ]


def test_bad_input(model):
    with pytest.raises(DataError, match="outside the model's vocabulary of 16"):
        reference_loss(model, [torch.full((2, 8), VOCAB)])
    with pytest.raises(ValueError, match="no evaluation batches"):
        reference_loss(model, [])
    with pytest.raises(ValueError, match="T >= 2"):
        reference_loss(model, [torch.zeros(2, 1, dtype=torch.long)])


def test_bad_settings_are_config_errors():
    from overtrain.runs.kinds.probe import ProbeRunConfig

    for bad in ({"eval_batches": 0}, {"batch_size": 0}, {"split": ""}, {"batches": 2}):
        with pytest.raises(ConfigError):
            validate(ReferenceLossConfig, bad)
    with pytest.raises(ConfigError, match="settings.eval_batches"):
        validate(
            ProbeRunConfig,
            {
                "parent": "0123456789ab",
                "checkpoint": "b",
                "probe": "reference_loss",
                "settings": {"eval_batches": -1},
            },
        )


def _text(seed: int, chars: int = 4000) -> str:
    """Lines of pseudo-random lower-case words (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    letters = "etaoinshrdlu"
    words = [
        "".join(letters[i] for i in torch.randint(0, len(letters), (int(n),), generator=g).tolist())
        for n in torch.randint(2, 8, (chars // 5,), generator=g)
    ]
    return "\n".join(" ".join(words[i : i + 10]) for i in range(0, len(words), 10)) + "\n"


def test_probe_run_kind_on_the_parent_data_and_on_a_user_file(home, tiny_pretrain, tmp_path):
    """A byte-level text model probed on its own val split, then on another text file (`data`)."""
    from overtrain.data.corpus import TextConfig
    from overtrain.runs.jsonl import read_jsonl
    from overtrain.runs.kinds.probe import ProbeRunConfig
    from overtrain.runs.store import Store
    from overtrain.training.checkpoint import load_checkpoint
    from overtrain.training.pretrain_config import PretrainConfig

    pre_file, user_file = tmp_path / "pre.txt", tmp_path / "mine.txt"
    pre_file.write_text(_text(0))
    user_file.write_text(_text(1).upper())
    pretrain = copy.deepcopy(tiny_pretrain)
    pretrain["data"] = {"name": "text", "train": [str(pre_file)]}
    store = Store()
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, pretrain))
    model, _, _ = load_checkpoint(pre.dir / "ckpt" / "budget_5120")
    settings = {"eval_batches": 3, "batch_size": 4}
    base = {
        "parent": pre.run_id,
        "checkpoint": "budget_5120",
        "probe": "reference_loss",
        "settings": settings,
    }

    summaries = {}
    for name, data in (("parent", None), ("user", {"name": "text", "train": [str(user_file)]})):
        cfg = validate(ProbeRunConfig, {**base, **({"data": data} if data else {})})
        out = store.execute(RUN_KINDS.get("probe"), cfg)
        rows = read_jsonl(out.dir / "probes.jsonl")
        (summary,) = read_jsonl(out.dir / "evals.jsonl")
        source = TextConfig(train=[pre_file if data is None else user_file]).build()
        xs = [source.batch("val", i, 4, 32) for i in range(3)]
        assert [r["loss"] for r in rows] == pytest.approx([evaluate_loss(model, [x]) for x in xs], rel=1e-6)
        assert summary["loss"] == pytest.approx(evaluate_loss(model, xs), rel=1e-6)
        assert summary["split"] == "val" and summary["batches"] == 3 and summary["budget"] == 5120
        summaries[name] = summary
    assert summaries["user"]["loss"] > summaries["parent"]["loss"]  # upper case: unseen bytes


def test_probe_run_kind_refuses_data_of_another_vocabulary(home, tiny_pretrain, tmp_path):
    from overtrain.runs.kinds.probe import ProbeRunConfig
    from overtrain.runs.store import Store
    from overtrain.training.pretrain_config import PretrainConfig

    text = tmp_path / "mine.txt"
    text.write_text(_text(2))
    store = Store()
    pre = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, copy.deepcopy(tiny_pretrain)))
    cfg = validate(
        ProbeRunConfig,
        {
            "parent": pre.run_id,
            "checkpoint": "budget_5120",
            "probe": "reference_loss",
            "settings": {"eval_batches": 1, "batch_size": 2},
            "data": {"name": "text", "train": [str(text)]},
        },
    )
    with pytest.raises(DataError, match="vocabulary of 16"):  # bytes of text vs the HMM's 16 tokens
        store.execute(RUN_KINDS.get("probe"), cfg)
