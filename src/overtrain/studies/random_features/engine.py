"""The random-features sweep: for every dataset, feature map and seed, one draw of ``P_max`` random
features fitted at every width ``P = ratio·n`` of the grid by minimum-norm least squares, ridge and
finite-step GD (`overtrain.models.random_features`: one factorisation per width serves every fit), and the
sample-wise sweep (P fixed, nested training sets). Rows: ``record = 'curve'`` and ``'samplewise'``."""

from __future__ import annotations

import time
from typing import Any

from overtrain.config import to_plain
from overtrain.models.random_features import FeatureConfig, fits, random_features, sweep_widths
from overtrain.studies.random_features.config import RandomFeaturesConfig
from overtrain.threads import blas_threads


def dataset_label(data) -> str:
    if data.name == "digits":
        return f"digits noise={data.label_noise:g}"
    return f"teacher σ={data.noise_std:g}"


def _with_seed(data, seed: int, **update):
    return type(data).model_validate({**to_plain(data), "seed": seed, **update})


def compute(cfg: RandomFeaturesConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    with blas_threads(1):  # 2.2x faster than two BLAS threads at these sizes (overtrain.threads)
        return _compute(cfg, progress)


def _compute(cfg: RandomFeaturesConfig, progress) -> tuple[list[dict], dict]:
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    jobs = [(d, k, s) for d in cfg.datasets for k in cfg.features for s in cfg.seeds]
    total = len(jobs) * (2 if cfg.samplewise else 1)
    done = 0
    for data_cfg, kind, seed in jobs:
        data = _with_seed(data_cfg, seed).build()
        n = data.n
        widths = sorted({max(1, round(r * n)) for r in cfg.width_ratios})
        # ridge λ is per example: the fits' n must be this dataset's
        for row in sweep_widths(
            *_features(data, kind, seed, widths[-1]),
            widths,
            fits(cfg.ridges, cfg.steps, n),
            labels=data.labels,
            labels_test=data.labels_test,
            Y_test=data.Y_test,
        ):
            rows.append(
                {
                    "record": "curve",
                    "dataset": dataset_label(data_cfg),
                    "features": kind,
                    "seed": seed,
                    "n": n,
                    "ratio": row["width"] / n,
                    **row,
                }
            )
        done += 1
        progress(done, total)
    if cfg.samplewise:
        for data_cfg, kind, seed in jobs:
            rows += _samplewise(cfg, data_cfg, kind, seed)
            done += 1
            progress(done, total)
    return rows, {"wall_s": time.perf_counter() - started, "curves": len(jobs)}


def _features(data, kind: str, seed: int, width: int):
    F, F_test = random_features(FeatureConfig(kind=kind, seed=seed), data.X, data.X_test, width)
    return F, data.Y, F_test


def _samplewise(cfg: RandomFeaturesConfig, data_cfg, kind: str, seed: int) -> list[dict]:
    sw = cfg.samplewise
    sizes = sorted({max(2, round(r * sw.width)) for r in sw.n_ratios})
    full = _with_seed(data_cfg, seed, n_train=sizes[-1]).build()
    F, F_test = random_features(FeatureConfig(kind=kind, seed=seed), full.X, full.X_test, sw.width)
    out = []
    for n in sizes:
        part = full.subset(n)
        (row,) = sweep_widths(
            F[:n],
            part.Y,
            F_test,
            [sw.width],
            fits(),
            labels=part.labels,
            labels_test=part.labels_test,
            Y_test=part.Y_test,
        )
        out.append(
            {
                "record": "samplewise",
                "dataset": dataset_label(data_cfg),
                "features": kind,
                "seed": seed,
                "n": n,
                "ratio": n / sw.width,
                **row,
            }
        )
    return out
