"""Step time of each fine-tuning method relative to plain LoRA on the same model, in one run.

Run (from the repository root):

    .venv/bin/python bench/ggpo_overhead.py                      # LM and MLP, every method, ~2 min
    .venv/bin/python bench/ggpo_overhead.py --models lm --repeats 9

Two models, each with LoRA (r = 8, α = 16) through PEFT:

- ``lm``: the ``llama-tiny`` preset (1.1M parameters, d = 128, 4 layers), LoRA on every linear layer but
  the head, a batch of 16 x 128 tokens — the shape of a language-model fine-tuning step;
- ``mlp``: the lora-dd study's frozen 64-256-256-10 GELU MLP, LoRA on its two hidden layers, a full batch of
  256 examples (MSE) — where the adapted layers are all there is, the worst case for weight noise.

Methods: ``lora``, ``flat_lora`` (σ = 0.05), ``lora_ggpo`` (σ = 0.05, β = 0.01; the exact merged
gradient every step, with ``grad_every = 10``, and kohya's
approximation from the factor gradients, ``grad_source = factors``), ``lora_mgpo`` (ρ = 0.05), ``lora_sam`` (ρ = 0.05). A step is
what `overtrain.training.loop.train_segment` does: step rule (forward + backward at the perturbed point),
gradient clip, AdamW step, zero grad. Each repeat times ``--steps`` steps of every method after 3 warm-up
steps, in an order rotated per repeat (so drift and other processes hit every method alike); reported per
method: median seconds per step and ratio = median(method) / median(lora), with the per-repeat min..max
of the ratio. Results go to ``bench/results/ggpo_overhead-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

METHODS = {
    "lora": {},
    "flat_lora": {"sigma": 0.05},
    "lora_ggpo": {"sigma": 0.05, "beta": 0.01},
    "lora_ggpo/grad_every=10": {"sigma": 0.05, "beta": 0.01, "grad_every": 10},
    "lora_ggpo/grad_source=factors": {"sigma": 0.05, "beta": 0.01, "grad_source": "factors"},
    "lora_mgpo": {"rho": 0.05},
    "lora_sam": {"rho": 0.05},
}


def lm_setup():
    from overtrain.models.presets import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="llama-tiny"), vocab_size=128, max_positions=256)
    x = torch.randint(0, 128, (16, 128), generator=torch.Generator().manual_seed(0))
    return model, "all-linear", lambda m: m(input_ids=x, labels=x, use_cache=False).loss


def mlp_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 64, generator=g), torch.randn(256, 10, generator=g)
    return model, ["0", "2"], lambda m: nn.functional.mse_loss(m(x), y)


def build(setup, method: str):
    import copy

    from overtrain.registry import FINETUNE_METHODS
    from overtrain.training.loop import build_optimizer

    base, targets, loss_of = setup
    name = method.split("/")[0]
    cfg = FINETUNE_METHODS.get(name)(rank=8, alpha=16, target_modules=targets, **METHODS[method])
    model = cfg.apply(copy.deepcopy(base))
    optimizer = build_optimizer(model, 1e-3, 0.0, (0.9, 0.95), 1e-8)
    rule = cfg.step_rule(model, optimizer, 0)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step():
        rule.forward_backward(lambda: loss_of(model))
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["lm", "mlp"], choices=["lm", "mlp"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ggpo_overhead-cpu.json")
    args = ap.parse_args()

    record = {
        "benchmark": "ggpo_overhead",
        "steps": args.steps,
        "repeats": args.repeats,
        "models": {},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    for model_name in args.models:
        setup = (lm_setup if model_name == "lm" else mlp_setup)()
        steps = {m: build(setup, m) for m in METHODS}
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        order = list(METHODS)
        loads = []
        for rep in range(args.repeats):
            for m in order[rep % len(order) :] + order[: rep % len(order)]:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    steps[m]()
                times[m].append((time.perf_counter() - t0) / args.steps)
            loads.append(os.getloadavg()[0])
        base = statistics.median(times["lora"])
        rows = {}
        for m in METHODS:
            per_rep = [t / b for t, b in zip(times[m], times["lora"])]
            rows[m] = {
                "median_s": statistics.median(times[m]),
                "ratio": statistics.median(times[m]) / base,
                "ratio_min": min(per_rep),
                "ratio_max": max(per_rep),
            }
            print(
                f"{model_name:4s} {m:30s} {rows[m]['median_s'] * 1e3:8.2f} ms/step  {rows[m]['ratio']:.2f}x "
                f"[{rows[m]['ratio_min']:.2f}, {rows[m]['ratio_max']:.2f}]",
                flush=True,
            )
        record["models"][model_name] = {"methods": rows, "load_avg_1m": loads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
