"""Model-wise random-features sweep: factorisations shared across widths vs a fit per width.

Run (from the repository root):

    .venv/bin/python bench/double_descent.py                 # digits, n = 500, 64 widths up to P = 20n
    .venv/bin/python bench/double_descent.py --widths 80 --repeats 3

On one dataset (scikit-learn's digits, n = 500, 10% label noise, one-hot targets) and one draw of random
Fourier features at the largest width, it times the full model-wise sweep (``--widths`` widths, dense
around P = n, up to 20n) three ways, each producing every width's test loss:

- ``ours``: `overtrain.models.random_features.sweep_widths` — for min-norm and ridge, one QR (and one
  Cholesky per λ) of the widest under-parameterised prefix serving every smaller width, one n x n Cholesky
  per width above n of the Gram accumulated across widths, and the test predictions of all widths in one
  pass over the feature columns; κ of every width by warm-started Lanczos;
- ``lstsq``: ``torch.linalg.lstsq(F_P, Y, driver="gelsd")`` per width (the min-norm solution by SVD);
- ``lstsq+ridge``: per width, that lstsq plus one ``sklearn.linear_model.Ridge`` fit per λ — what the
  same curves cost without a shared decomposition.

Two ratios are printed, each reference time / ours measured in the same process, interleaved, best of
``--repeats``: (1) the min-norm curve alone (ours computing only min-norm), (2) min-norm + the ridge grid
(ours computing both). ``ours_spectral`` times the route that also gives GD lengths (one Gram
eigendecomposition per width, min-norm + ridges + T = 10⁴); it has no reference: explicit GD to
T = 10⁴ steps at every width would take minutes. Curves must agree: the maximum
relative difference of the test losses is printed (min-norm vs lstsq; ridge vs scikit-learn).
Results go to ``bench/results/double_descent-cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def widths_grid(n: int, count: int, top: float = 20.0) -> list[int]:
    """`count` distinct widths: half log-spaced over [0.1n, top·n], half dense within ±30% of n."""
    half = count // 2
    grid = set(np.unique(np.geomspace(0.1 * n, top * n, half).round().astype(int)))
    grid |= set(np.unique(np.linspace(0.7 * n, 1.3 * n, count - half).round().astype(int)))
    grid.add(n)
    return sorted(int(p) for p in grid)


def main() -> None:
    import torch
    from sklearn.linear_model import Ridge

    from overtrain.data.regression import DigitsConfig
    from overtrain.models.random_features import FeatureConfig, fits, random_features, sweep_widths
    from overtrain.threads import blas_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ours-threads", type=int, default=1, help="BLAS threads of ours (the study uses 1)")
    ap.add_argument("--ridges", type=float, nargs="*", default=[1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "double_descent-cpu.json")
    args = ap.parse_args()

    data = DigitsConfig(n_train=500, n_test=1000, label_noise=0.1).build()
    n = data.n
    widths = widths_grid(n, args.widths)
    F, F_test = random_features(FeatureConfig(kind="fourier"), data.X, data.X_test, widths[-1])
    Y, Y_test = data.Y, data.Y_test

    def ours(fit_list):
        with blas_threads(args.ours_threads):  # as the study runs it (overtrain.threads)
            return sweep_widths(F, Y, F_test, widths, fit_list, Y_test=Y_test)

    def lstsq():
        out = []
        Ft, Yt = torch.from_numpy(F), torch.from_numpy(Y)
        for P in widths:
            a = torch.linalg.lstsq(Ft[:, :P], Yt, driver="gelsd").solution.numpy()
            out.append(float(((F_test[:, :P] @ a - Y_test) ** 2).sum(1).mean()))
        return out

    def lstsq_ridge():
        out = {"min_norm": lstsq()}
        for lam in args.ridges:
            losses = []
            for P in widths:
                # sklearn's alpha multiplies ‖a‖² against the *sum* of squares: n·λ matches our per-example λ
                model = Ridge(alpha=n * lam, fit_intercept=False).fit(F[:, :P], Y)
                losses.append(float(((model.predict(F_test[:, :P]) - Y_test) ** 2).sum(1).mean()))
            out[lam] = losses
        return out

    times: dict[str, list[float]] = {
        k: [] for k in ("ours_min_norm", "lstsq", "ours_ridge", "lstsq_ridge", "ours_spectral")
    }
    results = {}
    for rep in range(args.repeats):
        for name, fn in [
            ("ours_min_norm", lambda: ours(fits())),
            ("lstsq", lstsq),
            ("ours_ridge", lambda: ours(fits(args.ridges, (), n))),
            ("lstsq_ridge", lstsq_ridge),
            ("ours_spectral", lambda: ours(fits(args.ridges, [1e4], n))),
        ]:
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
        print(f"repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)

    best = {k: min(v) for k, v in times.items()}
    ours_mn = np.array([r["test_loss"] for r in results["ours_min_norm"]])
    diff_mn = float(np.max(np.abs(ours_mn - results["lstsq"]) / np.abs(results["lstsq"])))
    diff_ridge = 0.0
    for lam in args.ridges:
        mine = np.array(
            [r["test_loss"] for r in results["ours_ridge"] if r["solver"] == "ridge" and r["value"] == lam]
        )
        ref = np.array(results["lstsq_ridge"][lam])
        diff_ridge = max(diff_ridge, float(np.max(np.abs(mine - ref) / np.abs(ref))))
    record = {
        "benchmark": "double_descent",
        "dataset": "digits n=500 noise=0.1, random Fourier features",
        "widths": len(widths),
        "max_width": widths[-1],
        "n": n,
        "ridges": args.ridges,
        "repeats": args.repeats,
        "best_s": best,
        "ratio_min_norm": best["lstsq"] / best["ours_min_norm"],
        "ratio_min_norm_and_ridges": best["lstsq_ridge"] / best["ours_ridge"],
        "max_rel_diff_min_norm": diff_mn,
        "max_rel_diff_ridge": diff_ridge,
        "peak_width_ours": int(widths[int(np.argmax(ours_mn))]),
        "peak_width_lstsq": int(widths[int(np.argmax(results["lstsq"]))]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "torch_threads": torch.get_num_threads(),
            "ours_blas_threads": args.ours_threads,
            "load_avg": os.getloadavg(),
        },
    }
    print(
        f"min-norm curve, {len(widths)} widths up to P = {widths[-1]}: lstsq {best['lstsq']:.2f} s, "
        f"ours {best['ours_min_norm']:.2f} s -> ratio {record['ratio_min_norm']:.1f}x "
        f"(max rel. diff {diff_mn:.1e})"
    )
    print(
        f"min-norm + {len(args.ridges)} ridge curves: per-width fits {best['lstsq_ridge']:.2f} s, ours "
        f"{best['ours_ridge']:.2f} s -> ratio {record['ratio_min_norm_and_ridges']:.1f}x "
        f"(max rel. diff {diff_ridge:.1e})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"with GD length T = 1e4 too (spectral route): ours {best['ours_spectral']:.2f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
