"""lm-eval tasks from local files on audited checkpoints (``overtrain audit --lm-eval-tasks``)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from overtrain.cli.main import main
from overtrain.data.tokenizer import byte_tokenizer
from overtrain.errors import DataError, UserError
from overtrain.models.presets import ModelConfig, build_model
from overtrain.probes import lm_harness

MC = [
    {"question": "To be, or not to", "choices": [" be", " cat", " run"], "label": 0},
    {"question": "The quality of mercy is not", "choices": [" strained", " blue", " fish"], "label": 0},
    {"question": "All the world's a", "choices": [" tree", " stage", " dog"], "label": 1},
    {"question": "Now is the winter of our", "choices": [" discontent", " lunch"], "label": 0},
]
DOCS = ["Shall I compare thee to a summer's day?", "Friends, Romans, countrymen, lend me your ears;"]


@pytest.fixture(autouse=True)
def _one_thread(home):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tasks(root):
    """A multiple-choice and a rolling-perplexity task, each a YAML beside its JSONL (relative paths)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC))
    (root / "data" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    (root / "mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/mc.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
    )
    (root / "ppl.yaml").write_text(
        "task: tiny_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: data/docs.jsonl\n"
        "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: bits_per_byte\n  - metric: word_perplexity\n"
    )
    return root


def _logprob(model, ids: list[int]) -> float:
    """Σ_t log p(ids[t] | ids[:t]) for t >= 1, by hand."""
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = model(input_ids=x).logits.log_softmax(-1)[0]
    return float(logp[:-1].gather(1, x[0, 1:, None]).sum())


def test_harness_matches_a_hand_computed_likelihood(tmp_path):
    """bits/byte of the rolling task and accuracy of the multiple-choice task, recomputed from logits.

    With the byte tokenizer (no BOS/EOS) every document is scored after the prefix token "\\n" (id 10),
    so bits/byte = −Σ_docs Σ_t log p(byte_t | "\\n", bytes_<t) / (ln 2 · Σ_docs bytes).
    """
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="llama-nano"), 256, 64).eval()
    tasks = [
        lm_harness.load_task(f, tmp_path / "cache")
        for f in lm_harness.task_files([write_tasks(tmp_path / "t")])
    ]
    rows, results = lm_harness.evaluate_tasks(model, byte_tokenizer(), tasks, lm_harness.LmEvalConfig())
    got = {(r["task"], r["metric"]): r for r in rows}

    nll = -sum(_logprob(model, [10, *d.encode()]) for d in DOCS)
    n_bytes = sum(len(d.encode()) for d in DOCS)
    assert got["tiny_ppl", "bits_per_byte"]["value"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-5)
    assert got["tiny_ppl", "bits_per_byte"]["n"] == len(DOCS)

    correct = 0
    for doc in MC:  # the harness's acc: argmax over choices of log p(choice | question), summed over tokens
        ctx = list(doc["question"].encode())
        scores = [_logprob(model, ctx + list(c.encode())) - _logprob(model, ctx) for c in doc["choices"]]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    assert got["tiny_mc", "acc"]["value"] == pytest.approx(correct / len(MC))
    assert got["tiny_mc", "acc"]["stderr"] > 0 and got["tiny_mc", "acc"]["higher_is_better"] is True
    json.dumps(results)  # the record kept beside the rows is plain JSON


def test_limit_and_fewshot_settings_apply(tmp_path):
    model = build_model(ModelConfig(preset="llama-nano"), 256, 64).eval()
    tasks = [lm_harness.load_task(write_tasks(tmp_path / "t") / "mc.yaml")]
    rows, results = lm_harness.evaluate_tasks(
        model, byte_tokenizer(), tasks, lm_harness.LmEvalConfig(limit=2, num_fewshot=0)
    )
    assert {r["n"] for r in rows} == {2}
    assert results["n-shot"]["tiny_mc"] == 0


def test_only_local_single_task_yamls_are_accepted(tmp_path):
    root = write_tasks(tmp_path / "t")
    hub = root / "hub.yaml"
    hub.write_text("task: hs\ndataset_path: Rowan/hellaswag\noutput_type: multiple_choice\n")
    with pytest.raises(DataError, match="not local"):
        lm_harness.load_task(hub)
    missing = root / "missing.yaml"
    missing.write_text("task: m\ndataset_path: json\ndataset_kwargs: {data_files: {test: nope.jsonl}}\n")
    with pytest.raises(DataError, match="nope.jsonl not found"):
        lm_harness.load_task(missing)
    url = root / "url.yaml"
    url.write_text(
        "task: u\ndataset_path: json\ndataset_kwargs: {data_files: {test: 'https://x.org/a.jsonl'}}\n"
    )
    with pytest.raises(DataError, match="URL"):
        lm_harness.load_task(url)
    group = root / "group.yaml"
    group.write_text("group: g\ntask: [tiny_mc]\n")
    with pytest.raises(DataError, match="single-task"):
        lm_harness.load_task(group)
    with pytest.raises(DataError, match="not found"):
        lm_harness.task_files([root / "absent.yaml"])
    # relative data paths resolve against the YAML's directory, not the working directory
    cfg = lm_harness.load_task(root / "mc.yaml")
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str(root / "data" / "mc.jsonl")


def test_missing_lm_eval_is_a_one_line_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UserError, match=r"pip install 'overtrain\[eval\]'"):
        lm_harness.load_task(write_tasks(tmp_path / "t") / "mc.yaml")


def test_cli_audit_scores_tasks_on_every_revision(tmp_path, capsys, save_revisions):
    dirs = save_revisions(tmp_path, "neox", ["step0", "step10"])
    tasks = write_tasks(tmp_path / "tasks")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "audit",
                *map(str, dirs),
                "--probes",
                "none",
                "--lm-eval-tasks",
                str(tasks),
                "--report",
                str(tmp_path / "rep"),
                "--set",
                "settings.lm_eval.batch_size=4",
            ]
        )
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "tiny_mc acc" in out and "tiny_ppl bits_per_byte" in out
    run_dir = next((tmp_path / "home").rglob("lm_eval"))
    assert sorted(p.name for p in run_dir.iterdir()) == ["000-step0.json", "001-step10.json"]
    assert "tiny_ppl bits_per_byte" in (tmp_path / "rep" / "index.html").read_text()
    # the task files are part of the run id: editing the data makes a new run
    (tasks / "data" / "mc.jsonl").write_text(json.dumps(MC[0]) + "\n")
    with pytest.raises(SystemExit):
        main(["audit", *map(str, dirs), "--probes", "none", "--lm-eval-tasks", str(tasks / "mc.yaml")])
    assert "audit run" in capsys.readouterr().out
    assert len(list((tmp_path / "home").rglob("000-step0.json"))) == 2


def test_cli_bad_task_inputs_are_one_line_errors(tmp_path, save_revisions, fails):
    (good,) = save_revisions(tmp_path, "llama", ["good"])
    root = write_tasks(tmp_path / "tasks")
    (root / "hub.yaml").write_text("task: hs\ndataset_path: Rowan/hellaswag\noutput_type: multiple_choice\n")
    fails([str(good), "--lm-eval-tasks", str(root / "hub.yaml")], "not local")
    fails([str(good), "--lm-eval-tasks", str(tmp_path / "none.yaml")], "task file not found")
    fails([str(good), "--probes", "none"], "at least one probe or lm-eval task")
    fails([str(good), "--lm-eval-tasks", str(root / "mc.yaml"), "--set", "settings.lm_eval.limit=0"], "limit")
