"""The body of `overtrain audit`: builds the config from the flags, runs (or reuses) the audit, prints its
table, the U analysis in its unit (tokens or steps), and optionally the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOKENS_PER_STEP_HELP = (
    "Training tokens per step, for step<N> checkpoints without meta.json: tokens = step x N "
    "(Pythia: 2097152 = 1024 sequences x 2048 tokens). Without it the U analysis runs on steps."
)
TOKENIZER_HELP = "Tokenizer directory for every checkpoint (for checkpoints saved without one)."


def audit_command(
    models: list[Path],
    options: dict[str, Any],
    overrides: list[str],
    report_dir: Path | None,
    console,
) -> None:
    """Run the audit of `models`; `options` are AuditConfig fields from the flags (None: not given)."""
    import pyarrow as pa

    from overtrain.cli.output import run_facts
    from overtrain.cli.progress import step_progress
    from overtrain.config import build_config, config_hash
    from overtrain.registry import RUN_KINDS
    from overtrain.report.audit import audit_table, inflection_line
    from overtrain.runs.kinds.audit import AuditConfig, with_fingerprints
    from overtrain.runs.query import Reader, format_table
    from overtrain.runs.store import Store

    base: dict = {"models": [str(m) for m in models]}
    base.update({k: str(v) if isinstance(v, Path) else v for k, v in options.items() if v is not None})
    if options.get("probes") is not None:
        names = [p.strip() for p in options["probes"].split(",")]
        base["probes"] = [p for p in names if p and p != "none"]
    if options.get("lm_eval_tasks"):
        base["lm_eval_tasks"] = [str(t) for t in options["lm_eval_tasks"]]
    cfg = with_fingerprints(build_config(AuditConfig, None, overrides, base=base))
    kind, store = RUN_KINDS.get("audit"), Store()
    with step_progress(f"audit {config_hash(cfg)}", len(cfg.models)) as on_progress:
        outcome = store.execute(kind, cfg, on_progress=on_progress)
    with Reader(store) as reader:
        rows = audit_table(reader, outcome.run_id)
        inflections = reader.evals(outcome.run_id, record="inflection")
    console.print(format_table(pa.Table.from_pylist(rows)), end="", markup=False)
    for inf in inflections:
        console.print(inflection_line(inf, rows), markup=False)
    console.print(f"audit run {outcome.run_id}: {store.run_dir(kind.name, outcome.run_id)}")
    console.print(run_facts(store, kind.name, outcome.run_id, cfg), markup=False)
    if report_dir is not None:
        from overtrain.report.build import build_report

        console.print(f"report: {build_report(report_dir, 'audit', store)}")
