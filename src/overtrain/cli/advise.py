"""The wording of `overtrain advise`: which run it reads (auditing checkpoint directories first) and how
its forecast and trade-off are introduced."""

from __future__ import annotations

import math
from pathlib import Path

from overtrain.analysis.forecast import MIN_CHECKS
from overtrain.cli.progress import step_progress
from overtrain.config import build_config, config_hash
from overtrain.errors import UserError
from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds.audit import AuditConfig, with_fingerprints
from overtrain.studies.overtraining.advise import Advice, forecast_tokens


def resolve_target(run: list[str], text: Path | None, store, tokens_per_step: int | None = None) -> str:
    """The run to advise from: `run` names one stored run, or is a list of checkpoint directories, which
    are audited with the noise probe first (reused when the store has that audit); `tokens_per_step`
    gives step-only directories (Pythia's step<N>) their token counts."""
    if all(Path(r).is_dir() for r in run):
        base: dict = {"models": run, "probes": ["noise"]}
        if text is not None:
            base["text"] = str(text)
        if tokens_per_step is not None:
            base["tokens_per_step"] = tokens_per_step
        cfg = with_fingerprints(build_config(AuditConfig, None, [], base=base))
        with step_progress(f"audit {config_hash(cfg)}", len(cfg.models)) as on_progress:
            outcome = store.execute(RUN_KINDS.get("audit"), cfg, on_progress=on_progress)
        return f"audit/{outcome.run_id}"
    if len(run) == 1:
        return run[0]
    missing = ", ".join(r for r in run if not Path(r).is_dir())
    raise UserError(f"give one run id, or checkpoint directories; not directories: {missing}")


def forecast_line(a: Advice) -> str:
    """One sentence: the forecast at the newest check, its interval, and when the forecaster warned."""
    what = "pre-training run" if a.source == "pretrain" else "audit run"
    f = a.forecast
    if f is None:
        more = "pretrain.monitor checks" if a.source == "pretrain" else "checkpoints with token counts"
        return f"{what} {a.run_id}: fewer than {MIN_CHECKS} checks to forecast from (needs more {more})"
    if math.isnan(f["t_star"]):
        return (
            f"{what} {a.run_id}: after {f['checks']} checks ({f['now_tokens']:,.0f} tokens) no forecast yet: "
            "the loss has not passed its fastest fall (the laws need 5 checks after its rate has halved)"
        )
    t_star = (
        "none: the sensitivity does not catch up with the loss"
        if math.isinf(f["t_star"])
        else f"{forecast_tokens(f['t_star'])} tokens"
    )
    warned = f"first warned at {f['warned_tokens']:,.0f} tokens" if f["warned_tokens"] else "has not warned"
    return (
        f"{what} {a.run_id}: after {f['checks']} checks ({f['now_tokens']:,.0f} tokens), watching the "
        f"{f['signal']}, the forecast T* is {t_star} (90% interval {forecast_tokens(f['low'])}–{forecast_tokens(f['high'])}); "
        f"P(T* within {f['horizon']:g} doubling) = {f['p_within']:.2f}; the forecaster {warned}"
    )


def tradeoff_title(a: Advice, ft_lr: float | None) -> str:
    if a.source != "pretrain":
        return "Checkpoints (nats/token; no fine-tunes: the perturbed loss stands in for them)"
    lr = f"LR {ft_lr:g}" if ft_lr is not None else "LR tuned on the selection split"
    return f"Trade-off after fine-tuning (nats/token; {lr})"
