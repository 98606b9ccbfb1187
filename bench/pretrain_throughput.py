"""Pre-training throughput: our loop (`train_segment`) against a minimal hand-written PyTorch loop.

Run (from the repository root):

    .venv/bin/python bench/pretrain_throughput.py --all                      # default CPU matrix, ~5 min
    .venv/bin/python bench/pretrain_throughput.py --preset llama-small --dtype bfloat16 --repeats 15
    python bench/pretrain_throughput.py --device cuda --preset llama-base --vocab 50304 \\
        --batch-size 16 --seq-len 1024 --dtype bfloat16 --compile

In one process, on one architecture, with the same pre-generated batches (int64 tensors already on the
device), the same AdamW (`build_optimizer`, constant lr, grad clip 1.0) and three copies of one
initialisation (deep copies taken before any step), it times:

- ``ours``: `train_segment` over the batches (one segment of ``--steps`` steps);
- ``reference``: the same steps written plainly: ``loss = model(input_ids=x, labels=x,
  use_cache=False).loss; loss.backward(); clip_grad_norm_; opt.step(); opt.zero_grad(set_to_none=True)``,
  with bf16 autocast around the forward only, as PyTorch recommends, and the norm clipped over the
  optimizer's parameter list (ours' order, so the two stay bit-identical);
- ``ours+data``: `train_segment` drawing every batch from the HMM source inside ``batch_at`` (the real
  pre-training path), so the cost of sampling data shows.

Warm-up steps (untimed; they also compile with ``--compile``) come first, then the measurements are
interleaved, rotating their order every repeat, to cancel drift and background load. Reported: the
median tokens/s of each, ``ratio = median(ours) / median(reference)`` with the min/max of the per-repeat
ratios (adjacent measurements) as its spread; also the median of those paired ratios and the ratio of the
best (fastest) measurements, the estimators least moved by other processes on a shared machine, whose
load only ever slows a measurement down (the load average after each repeat is recorded too).
**ratio >= 1.0 (within the spread) means the framework adds no overhead over a hand-written loop.**
The ``equivalence`` block proves the comparison is apples to
apples: ours and the reference see the same batches from the same init, so their losses and parameters
must agree (to float rounding).

MFU = tokens/s x FLOPs/token / peak, with the standard estimate (Kaplan et al. 2020; PaLM, App. B)

    FLOPs/token = 6 N + 12 L T d

N = parameters excluding the input embedding table but including the LM head matmul (V x d, counted
even when tied), L layers, T sequence length, d hidden width: 6N for forward + backward of the matmuls,
12 L T d for attention scores and the weighted sum (causal masking not discounted). The peak is measured
here: best of several square matmuls (2 n^3 FLOP) in fp32 and bf16; fp32 runs use the fp32 peak, bf16
runs the bf16 peak. Results go to ``bench/results/*.json`` with a description of the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from overtrain.data.hmm import HMMConfig
from overtrain.models.presets import ModelConfig, build_model, count_params
from overtrain.seed import torch_generator
from overtrain.training.loop import build_optimizer, train_segment
from overtrain.training.schedules import warmup_stable

RESULTS = Path(__file__).resolve().parent / "results"
# Per size: (vocab, batch size, seq len) that keep a CPU step in the 0.1-2 s range.
DEFAULTS = {
    "nano": (64, 256, 64),
    "micro": (128, 64, 64),
    "tiny": (128, 32, 128),
    "small": (4096, 8, 256),
    "medium": (8192, 8, 512),
    "base": (50304, 8, 1024),
}
MATRIX = [
    ("llama-nano", 64, 256, 64, "float32"),
    ("llama-tiny", 128, 32, 128, "float32"),
    ("llama-small", 4096, 8, 256, "float32"),
    ("llama-small", 4096, 8, 256, "bfloat16"),
]
LR, WD, BETAS, EPS, CLIP = 3e-3, 0.1, (0.9, 0.95), 1e-8, 1.0
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # never touch CUDA on a CPU run
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu
        )
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent
    )
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(getattr(os, "sched_getaffinity", lambda _: range(os.cpu_count() or 0))(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git.stdout.strip() or None,
        "device": device.type,
        "device_name": cpu,
        "loadavg_start": os.getloadavg(),
    }
    if device.type == "cuda":
        info.update(device_name=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best GFLOP/s of ``reps`` timings of square ``n x n`` matmuls (2 n^3 FLOP each)."""
    inner = 10 if device.type == "cuda" else 1
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / inner)
    return 2 * n**3 / best / 1e9


def flops_per_token(model, seq_len: int) -> tuple[int, int]:
    """(N, 6 N + 12 L T d), N as in the module docstring."""
    c = model.config
    n = count_params(model, non_embedding=True) + c.vocab_size * c.hidden_size
    return n, 6 * n + 12 * c.num_hidden_layers * seq_len * c.hidden_size


def reference_steps(model, opt, batches, start, stop, autocast_dtype, device) -> float:
    """The plain loop; returns the mean loss (read once at the end, like ours)."""
    model.train()
    # Clip over the optimizer's parameter order (= ours): model.parameters() order sums the global norm in
    # another order, 1 ulp apart, and once clipping is active bf16 runs drift apart chaotically from there.
    params = [p for group in opt.param_groups for p in group["params"]]
    loss_sum = torch.zeros((), device=device)
    for step in range(start, stop):
        x = batches[step % len(batches)]
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_sum += loss.detach().float()
    return (loss_sum / max(1, stop - start)).item()


def max_param_diff(a, b) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def measure(
    preset="llama-small",
    vocab=None,
    batch_size=None,
    seq_len=None,
    steps=None,
    repeats=11,
    warmup=3,
    device="cpu",
    dtype="float32",
    compile=False,
    data=None,
    target_s=1.5,
    peaks=None,
    seed=0,
) -> dict:
    """Time ours / reference / ours+data (see the module docstring) and return the result record.

    ``steps=None`` picks the steps per measurement so that one lasts about `target_s` seconds.
    """
    device = torch.device(device)
    v0, b0, t0 = DEFAULTS[preset.split("-", 1)[1]]
    vocab, batch_size, seq_len = vocab or v0, batch_size or b0, seq_len or t0
    data = data or ("hmm" if vocab <= 1024 else "random")
    autocast = None if dtype == "float32" else DTYPES[dtype]
    source = HMMConfig(vocab_size=vocab, seed=seed).build()

    def make(i: int) -> torch.Tensor:
        if data == "hmm":
            return source.batch("train", i, batch_size, seq_len).to(device)
        return torch.randint(0, vocab, (batch_size, seq_len), generator=torch_generator(seed, "bench", i)).to(
            device
        )

    torch.manual_seed(seed)
    base = build_model(ModelConfig(preset=preset), vocab, seq_len).to(device)
    models = {k: copy.deepcopy(base) for k in ("ours", "reference", "ours+data")}
    opts = {k: build_optimizer(m, LR, WD, BETAS, EPS) for k, m in models.items()}
    run = {k: torch.compile(m) if compile else m for k, m in models.items()}
    lr_at = warmup_stable(LR, 0)  # constant: the reference sets it once, ours every step
    batches = [make(i) for i in range(max(warmup, 1))]
    pos = dict.fromkeys(models, 0)  # next step of each copy: ours and reference see the same batches
    losses = {"ours": [], "reference": []}

    def go(name: str, n: int) -> float:
        """Take n steps with `name`; returns seconds."""
        gc.collect()
        sync(device)
        t = time.perf_counter()
        a, b = pos[name], pos[name] + n
        if name == "reference":
            losses[name].append(reference_steps(run[name], opts[name], batches, a, b, autocast, device))
        else:
            batch_at = (
                (lambda s: source.batch("train", s, batch_size, seq_len))
                if name == "ours+data"
                else (lambda s: batches[s % len(batches)])
            )
            stats = train_segment(
                run[name],
                opts[name],
                batch_at,
                lr_at,
                a,
                b,
                grad_clip=CLIP,
                autocast_dtype=autocast,
                device=device,
            )
            if name == "ours":
                losses[name].append(stats.mean_loss)
        sync(device)
        pos[name] = b
        return time.perf_counter() - t

    warm = {k: go(k, warmup) for k in models}  # one segment each: ours' warm-up loss is checked too
    warm_param_diff = max_param_diff(models["ours"], models["reference"])
    if steps is None:  # calibrate on two more (warm) steps of each, so the copies stay in step
        one = min(go("reference", 2), go("ours", 2), go("ours+data", 2)) / 2
        steps = max(3, round(target_s / one))
    batches += [make(i) for i in range(len(batches), steps)]
    tokens = steps * batch_size * seq_len
    names = list(models)
    tok_s: dict[str, list[float]] = {k: [] for k in names}
    load = []  # 1-minute load average after each repeat: the machine may be shared
    for r in range(repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            tok_s[name].append(tokens / go(name, steps))
        load.append(os.getloadavg()[0])
    t = time.perf_counter()
    for i in range(steps):
        source.batch("train", 10**6 + i, batch_size, seq_len)
    sample_ms = (time.perf_counter() - t) / steps * 1e3

    n_params, fpt = flops_per_token(models["ours"], seq_len)
    med = {k: statistics.median(v) for k, v in tok_s.items()}
    ratios = [a / b for a, b in zip(tok_s["ours"], tok_s["reference"])]
    loss_diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["reference"]))
    return with_peaks(
        {
            "settings": {
                "preset": preset,
                "vocab": vocab,
                "batch_size": batch_size,
                "seq_len": seq_len,
                "tokens_per_step": batch_size * seq_len,
                "steps": steps,
                "repeats": repeats,
                "warmup": warmup,
                "device": device.type,
                "dtype": dtype,
                "compile": compile,
                "data": data,
                "lr": LR,
                "weight_decay": WD,
                "betas": BETAS,
                "grad_clip": CLIP,
                "seed": seed,
            },
            "model": {
                "params": count_params(models["ours"]),
                "N_flops": n_params,
                "flops_per_token": fpt,
                "hidden": base.config.hidden_size,
                "layers": base.config.num_hidden_layers,
            },
            "warmup_seconds": warm,
            "tokens_per_s": tok_s,
            "loadavg_per_repeat": load,
            "median_tokens_per_s": med,
            "ratio": med["ours"] / med["reference"],
            "ratio_paired_median": statistics.median(ratios),
            "ratio_best": max(tok_s["ours"]) / max(tok_s["reference"]),
            "ratio_per_repeat": ratios,
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "data_ratio": med["ours+data"] / med["ours"],
            "hmm_sample_ms_per_batch": sample_ms,
            "equivalence": {
                "losses_ours": losses["ours"],
                "losses_reference": losses["reference"],
                "max_loss_diff": loss_diff,
                "max_param_diff_after_warmup": warm_param_diff,
                "max_param_diff_end": max_param_diff(models["ours"], models["reference"]),
            },
        },
        peaks or measure_peaks(device),
    )


def with_peaks(r: dict, peaks: dict[str, float]) -> dict:
    """`r` with its peak (GFLOP/s by dtype) and the MFU of each loop against the peak of its dtype."""
    per_token = r["model"]["flops_per_token"] * 1e-9 / peaks[r["settings"]["dtype"]]
    return {**r, "peak_gflops": peaks, "mfu": {k: v * per_token for k, v in r["median_tokens_per_s"].items()}}


def measure_peaks(device: torch.device, n: int | None = None) -> dict[str, float]:
    n = n or (8192 if device.type == "cuda" else 2048)
    return {name: matmul_peak(device, dt, n) for name, dt in DTYPES.items()}


def default_out(s: dict) -> Path:
    tag = "-compiled" if s["compile"] else ""
    return RESULTS / f"pretrain_throughput-{s['device']}-{s['preset']}-{s['dtype']}{tag}.json"


def summary(results: list[dict]) -> str:
    head = (
        f"{'config':<34} {'ours tok/s':>11} {'ref tok/s':>11} {'ratio [min, max]':>22} {'paired':>6} "
        f"{'best':>6} {'+data tok/s':>11} {'MFU ours':>8} {'MFU ref':>8} {'loss diff':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        s, m = r["settings"], r["median_tokens_per_s"]
        cfg = f"{s['preset']} {s['batch_size']}x{s['seq_len']} V={s['vocab']} {s['dtype']}"
        cfg += " compiled" if s["compile"] else ""
        spread = f"{r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]"
        lines.append(
            f"{cfg:<34} {m['ours']:>11,.0f} {m['reference']:>11,.0f} {spread:>22} "
            f"{r['ratio_paired_median']:>6.3f} {r['ratio_best']:>6.3f} {m['ours+data']:>11,.0f} "
            f"{r['mfu']['ours']:>8.1%} {r['mfu']['reference']:>8.1%} {r['equivalence']['max_loss_diff']:>9.1e}"
        )
        if r["equivalence"]["max_param_diff_end"] > 1e-4:
            lines.append(
                f"  ^ NOT EQUIVALENT: ours and reference diverged (max param diff "
                f"{r['equivalence']['max_param_diff_end']:.1e}); the ratio compares different work"
            )
    p = results[0]["peak_gflops"]
    lines.append(f"peak: fp32 {p['float32']:,.0f} GFLOP/s, bf16 {p['bfloat16']:,.0f} GFLOP/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="llama-small")
    ap.add_argument("--vocab", type=int, help="default per size, 4096 for small")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--steps", type=int, help="steps per measurement (default: about --target-s seconds)")
    ap.add_argument("--target-s", type=float, default=1.5, help="seconds per measurement")
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument(
        "--peak-n", type=int, help="matmul size of the peak FLOP/s (default 8192 on CUDA, 2048 on CPU)"
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32", help="autocast dtype")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model copy")
    ap.add_argument(
        "--data", choices=["hmm", "random"], help="pre-generated batches (default: hmm if V<=1024)"
    )
    ap.add_argument("--out", type=Path, help="JSON path (default bench/results/pretrain_throughput-...)")
    ap.add_argument("--all", action="store_true", help="run the default CPU matrix, one JSON per config")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    info = machine(device)
    peaks = measure_peaks(device, args.peak_n)
    configs = MATRIX if args.all else [(args.preset, args.vocab, args.batch_size, args.seq_len, args.dtype)]
    results = []
    for preset, vocab, bs, T, dtype in configs:
        r = measure(
            preset,
            vocab,
            bs,
            T,
            args.steps,
            args.repeats,
            args.warmup,
            device,
            dtype,
            args.compile,
            args.data,
            args.target_s,
            peaks,
        )
        # A peak is a best case: measure again after each config and keep the best, so that a busy spell
        # during one peak measurement cannot inflate MFU.
        again = measure_peaks(device, args.peak_n)
        peaks = {k: max(v, w) for (k, v), w in zip(peaks.items(), again.values())}
        r = with_peaks(r, peaks)
        r = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {**info, "loadavg_end": os.getloadavg()},
            **r,
        }
        out = default_out(r["settings"]) if args.all or not args.out else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=1) + "\n")
        results.append(r)
        print(*summary([r]).splitlines()[2:-1], f"-> {out}", sep="\n", flush=True)
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
