"""Report section for pre-training runs: loss against tokens, the known floor, and the budget table."""

from __future__ import annotations

import json

from overtrain.report.html import Figure, Section, Table
from overtrain.report.plots import label, new_figure
from overtrain.runs.query import Reader


def pretrain_section(reader: Reader, run_ids: list[str] | None = None) -> Section | None:
    """Validation loss of every (or the given) pre-training run against tokens seen, with budgets marked."""
    runs = [r for r in reader.runs("pretrain", run_ids) if r["status"] == "success"]
    if not runs:
        return None
    ids = [r["run_id"] for r in runs]
    curves = reader.rows(
        "select run_id, tokens_seen, value from metrics where name = 'val/loss' and tags->>'line' = 'main' "
        "and list_contains(?, run_id) order by run_id, tokens_seen",
        [ids],
    )
    budgets = (
        reader.rows(
            "select run_id, budget, tokens_seen, tokens_per_param, loss, loss_floor, excess_loss from evals "
            "where kind = 'pretrain' and budget is not null and split = 'val' and list_contains(?, run_id) "
            "order by run_id, tokens_seen",
            [ids],
        )
        if {"budget", "split"} <= reader.columns("evals")
        else []
    )
    fig, (ax,) = new_figure(1, width=7.0, height=4.2)
    floors = set()
    for run in runs:
        pts = [
            (c["tokens_seen"], c["value"])
            for c in curves
            if c["run_id"] == run["run_id"] and c["tokens_seen"]
        ]
        cfg = json.loads(run["config"])
        tag = f"{run['run_id'][:6]} {cfg['model']['preset']} seed {cfg['seed']}"
        line = ax.plot(*zip(*pts), marker=".", lw=1, label=f"{tag} (main line)")[0] if pts else None
        ends = [(b["tokens_seen"], b["loss"]) for b in budgets if b["run_id"] == run["run_id"]]
        if ends:
            ax.plot(
                *zip(*ends),
                "o",
                ms=6,
                mfc="none",
                color=line.get_color() if line else None,
                label=f"{tag} budgets (after cool-down)",
            )
        info = json.loads(run["info"] or "{}")
        if info.get("loss_floor") is not None:
            floors.add(round(info["loss_floor"], 4))
    for floor in sorted(floors):
        ax.axhline(floor, color="k", ls="--", lw=1, label=f"Bayes floor {floor:.3f}")
    ax.set_xscale("log")
    label(ax, "tokens seen", "validation loss (nats/token)", "Pre-training: held-out loss vs tokens")
    # outside the axes: with many runs the legend grows, and inside it covers the curves or the floor line
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    rows = [
        {
            "run": b["run_id"],
            "budget (tokens)": b["budget"],
            "tokens seen": b["tokens_seen"],
            "tokens/param": round(b["tokens_per_param"], 1),
            "val loss": b["loss"],
            "floor": b["loss_floor"],
            "excess": b["excess_loss"],
        }
        for b in budgets
    ]
    return Section(
        "Pre-training",
        text=[
            f"{len(runs)} pre-training run(s). Circles are the budget checkpoints (each after its own "
            "cool-down under WSD); the line is the main trajectory. The dashed line is the Bayes-optimal "
            "loss of the data source, where it is known."
        ],
        figures=[
            Figure("pretrain_loss", fig, "Validation loss (nats/token) against tokens seen, log scale.")
        ],
        tables=[Table(rows, "Budget checkpoints")],
    )
