"""Many small models at once: the grouped paths against today's per-run path, in the same process.

How to run (from the repository root; ~4 minutes on 2 idle cores):

    .venv/bin/python bench/batched_training.py
    .venv/bin/python bench/batched_training.py --cases step --members 1 2 4 8 16

Cases (every ``ratio`` is per-run seconds / grouped seconds for the same work; > 1: grouping is faster):

- ``finetune_grid``: the demo's fine-tuning grid in miniature — a demo-shaped parent (llama-nano, the
  demo's HMM, 256 x 64 tokens a step) with two checkpoints, each fine-tuned at the demo's 4 full and 3
  LoRA learning rates (14 runs, the demo's 100 steps at 64 x 64, its four evaluation sets). Per-run:
  ``Store.execute`` of each run. Grouped: ``Store.execute_group`` of the full runs and of the LoRA runs
  (one evaluation per checkpoint, shared setup), members one at a time (``stack 1``, the CPU default) and
  all stacked (``stack K``). The records of the two paths are compared (stack 1: equal).
- ``step``: one training step of K llama-nano models, the HF model in a loop (forward, backward, clip,
  AdamW — `train_segment`'s work) against the stacked model (`overtrain.models.grouped`), at the
  fine-tuning batch (64 x 64) and the pre-training batch (256 x 64, "4 pre-training seeds").
- ``noise_draws``: K noisy copies of one model evaluated on the noise probe's batches (256 x 64): the
  per-draw loop (`evaluate_loss` per copy) against one stacked evaluation (`grouped_eval_loss`).

Each case is timed ``--repeats`` times, alternating the paths; reported: median seconds and the ratio of
medians. Results go to ``bench/results/batched_training-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "batched_training-cpu.json"

HMM = {
    "name": "hmm",
    "seed": 0,
    "states": 32,
    "vocab_size": 64,
    "transition_alpha": 0.1,
    "emission_alpha": 0.05,
}


def _parent(root: Path) -> str:
    from overtrain.config import validate
    from overtrain.registry import RUN_KINDS
    from overtrain.runs.store import Store
    from overtrain.training.pretrain_config import PretrainConfig

    cfg = {
        "data": HMM,
        "model": {"preset": "llama-nano"},
        "train": {
            "tokens": [0.33e6, 0.66e6],
            "batch_size": 256,
            "seq_len": 64,
            "lr": 3e-3,
            "warmup_steps": 5,
        },
        "eval": {"batches": 8},
    }
    return Store(root).execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, cfg)).run_id


def _grid(parent_id: str):
    from overtrain.config import validate
    from overtrain.training.finetune import FinetuneConfig

    task = {**HMM, "seed": 1}
    out = {"full": [], "lora": []}
    for checkpoint in ("budget_330000", "budget_660000"):
        for method, lrs in (("full", (1e-3, 3e-3, 1e-2, 3e-2)), ("lora", (3e-3, 1e-2, 3e-2))):
            spec = {"name": "full"} if method == "full" else {"name": "lora", "rank": 4, "alpha": 8}
            for lr in lrs:
                cfg = {
                    "parent": parent_id,
                    "checkpoint": checkpoint,
                    "data": task,
                    "method": spec,
                    "train": {"steps": 100, "batch_size": 64, "lr": lr},
                    "ood_data": {**HMM, "seed": 2},
                    "selection_batches": 8,
                }
                out[method].append(validate(FinetuneConfig, cfg))
    return out


def finetune_grid(repeats: int) -> dict:
    from overtrain.registry import RUN_KINDS
    from overtrain.runs.jsonl import read_jsonl
    from overtrain.runs.store import Store
    from overtrain.training.finetune_group import run_finetune_group

    kind = RUN_KINDS.get("finetune")
    work = Path(tempfile.mkdtemp(prefix="bench-grid-"))
    parent_root = work / "parent"
    parent_id = _parent(parent_root)
    grid = _grid(parent_id)
    n_runs = sum(len(v) for v in grid.values())

    def fresh(name: str) -> Store:
        root = work / name
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(parent_root / "pretrain", root / "pretrain")
        return Store(root)

    def per_run(method: str) -> Store:
        store = fresh(f"per_run-{method}")
        for cfg in grid[method]:
            store.execute(kind, cfg)
        return store

    def grouped(method: str, stack: int) -> Store:
        store = fresh(f"stack{stack}-{method}")
        group_kind = type(kind)(
            **{**kind.__dict__, "run_group": lambda c, r, p=None: run_finetune_group(c, r, p, stack=stack)}
        )
        outcomes = store.execute_group(group_kind, grid[method])
        bad = [o for o in outcomes if isinstance(o, BaseException)]
        if bad:
            raise SystemExit(f"grouped run failed: {bad[0]}")
        return store

    paths = {
        "per_run": per_run,
        "stack_1": lambda method: grouped(method, 1),
        "stack_all": lambda method: grouped(method, len(grid[method])),
    }
    times = {method: {name: [] for name in paths} for method in grid}
    stores: dict[tuple[str, str], Store] = {}
    for r in range(repeats):
        for method in grid:
            for name, fn in paths.items():
                t0 = time.perf_counter()
                stores[method, name] = fn(method)
                times[method][name].append(time.perf_counter() - t0)
            line = ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times[method].items())
            print(f"  finetune_grid {method} repeat {r + 1}: {line}")

    def rows(store: Store, cfg) -> list:
        return read_jsonl(store.run_dir("finetune", kind.run_id(cfg)) / "evals.jsonl")

    def rel(a: dict, b: dict) -> float:
        return max(
            abs(a[k] - b[k]) / abs(b[k]) for k in ("task_loss", "pretrain_loss", "select_loss", "ood_loss")
        )

    equal = all(rows(stores[m, "stack_1"], c) == rows(stores[m, "per_run"], c) for m in grid for c in grid[m])
    diff = max(
        rel(rows(stores[m, "stack_all"], c)[0], rows(stores[m, "per_run"], c)[0])
        for m in grid
        for c in grid[m]
    )
    if not equal:
        raise SystemExit("stack 1 records differ from the per-run records")
    shutil.rmtree(work, ignore_errors=True)
    out: dict = {"runs": n_runs, "steps": 100, "records_equal_stack_1": equal, "max_rel_diff_stack_all": diff}
    total = {name: 0.0 for name in paths}
    for method in grid:
        med = {k: statistics.median(v) for k, v in times[method].items()}
        for name in paths:
            total[name] += med[name]
        out[method] = {
            "runs": len(grid[method]),
            "median_s": med,
            "ratio_stack_1": med["per_run"] / med["stack_1"],
            "ratio_stack_all": med["per_run"] / med["stack_all"],
        }
    out["median_s"] = total
    out["ratio_stack_1"] = total["per_run"] / total["stack_1"]
    out["ratio_stack_all"] = total["per_run"] / total["stack_all"]
    return out


def step(members: list[int], repeats: int, device: str = "cpu", batches=(64, 256)) -> list[dict]:
    out = []
    for batch in batches:
        for k in members:
            row = _time_step(k, batch, repeats, device)
            print(
                f"  step {batch}x64 K={k}: loop {row['ms_per_member']['loop']:.1f} ms/member, stacked "
                f"{row['ms_per_member']['stacked']:.1f} ms/member, ratio {row['ratio']:.2f}"
            )
            out.append(row)
    return out


def _time_step(k: int, batch: int, repeats: int, device: str, steps: int = 5) -> dict:
    import torch

    from overtrain.models.grouped import GroupedLlama
    from overtrain.models.presets import ModelConfig, build_model
    from overtrain.training.grouped_optim import GroupedAdamW, clip_grad_norms_
    from overtrain.training.loop import build_optimizer

    torch.manual_seed(0)
    models = [build_model(ModelConfig(preset="llama-nano"), 64, 64).to(device) for _ in range(k)]
    opts = [build_optimizer(m, 1e-3, 0.1, (0.9, 0.95), 1e-8) for m in models]
    group = GroupedLlama.from_models(models)
    gopt = GroupedAdamW(group.trainable(), torch.full((k,), 1e-3), weight_decay=0.1, betas=(0.9, 0.95))
    x = torch.randint(0, 64, (batch, 64), device=device)

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    def loop():
        for m, o in zip(models, opts, strict=True):
            m(input_ids=x, labels=x, use_cache=False).loss.backward()
            torch.nn.utils.clip_grad_norm_(list(m.parameters()), 1.0, foreach=True)
            o.step()
            o.zero_grad(set_to_none=True)

    def stacked():
        group.loss(x).sum().backward()
        clip_grad_norms_(group.trainable(), 1.0)
        gopt.step()
        gopt.zero_grad()

    times = {"loop": [], "stacked": []}
    for fn in (loop, stacked):
        fn()  # warm
    for _ in range(repeats):
        for name, fn in (("loop", loop), ("stacked", stacked)):
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / steps)
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "batch": f"{batch}x64",
        "members": k,
        "ms_per_member": {n: 1e3 * v / k for n, v in med.items()},
        "ratio": med["loop"] / med["stacked"],
    }


def noise_draws(draws: int, repeats: int) -> dict:
    import torch

    from overtrain.core.evaluate import evaluate_loss
    from overtrain.models.grouped import GroupedLlama, grouped_eval_loss
    from overtrain.models.presets import ModelConfig, build_model

    torch.manual_seed(0)
    base = build_model(ModelConfig(preset="llama-nano"), 64, 64)
    batches = [torch.randint(0, 64, (256, 64)) for _ in range(2)]
    noisy = []
    for d in range(draws):
        torch.manual_seed(d)
        m = build_model(ModelConfig(preset="llama-nano"), 64, 64)
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        noisy.append(m)
    group = GroupedLlama.from_models(noisy, trainable="none")
    times = {"loop": [], "stacked": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = [evaluate_loss(m, batches) for m in noisy]
        times["loop"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = grouped_eval_loss(group, batches)
        times["stacked"].append(time.perf_counter() - t0)
    diff = max(abs(a - b) / a for a, b in zip(ref, got, strict=True))
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"  noise_draws K={draws}: loop {med['loop']:.2f} s, stacked {med['stacked']:.2f} s")
    return {
        "draws": draws,
        "batches": "2 x 256x64",
        "median_s": med,
        "ratio": med["loop"] / med["stacked"],
        "max_rel_diff": diff,
    }


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=["finetune_grid", "step", "noise_draws"])
    ap.add_argument("--members", type=int, nargs="*", default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--step-batches", type=int, nargs="*", default=[64, 256], help="sequences per step of the step case"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the executor gives each worker 1)")
    ap.add_argument("--device", default="cpu", help="device of the step case (cuda on a GPU)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"benchmark": "batched_training", "threads": args.threads, "device": args.device}
    if "step" in args.cases:
        result["step"] = step(args.members, args.repeats, args.device, args.step_batches)
    if "noise_draws" in args.cases:
        result["noise_draws"] = noise_draws(8, args.repeats)
    if "finetune_grid" in args.cases:
        result["finetune_grid"] = finetune_grid(max(1, args.repeats - 1))
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "load_avg": list(os.getloadavg()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
