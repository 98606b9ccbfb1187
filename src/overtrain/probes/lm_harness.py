"""lm-evaluation-harness tasks from local files, on a model already in memory.

``overtrain audit --lm-eval-tasks tasks/`` scores every audited checkpoint on the user's own lm-eval
task YAMLs (multiple choice, loglikelihood, rolling perplexity, generation) through lm-eval's
``HFLM`` wrapper around the loaded model, so the numbers come from the harness's own request building
and metrics, and nothing is downloaded:

- a task's ``dataset_path`` must be a packaged file builder (``json``, ``csv``, ``parquet``, ``text``,
  ``arrow``) with ``dataset_kwargs.data_files``, or a local directory; a hub dataset name is refused
  before any model is loaded. Relative ``data_files`` / ``data_dir`` / directory paths resolve against
  the YAML file's directory (lm-eval itself would resolve them against the working directory).
- the ``datasets`` cache of the prepared splits goes to the audit's run directory, and the hub is set
  offline while the harness runs.

This is not a registered probe: a probe scores batches of token ids, while a harness task brings its
own text, prompts and metrics and needs the tokenizer. Requires the optional ``lm-eval`` package
(``pip install 'overtrain[eval]'``).
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from pydantic import Field

from overtrain.config import BaseConfig
from overtrain.errors import DataError, UserError

FILE_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
"""``datasets`` builders that read local files (``dataset_kwargs.data_files``)."""


class LmEvalConfig(BaseConfig):
    """How the harness runs the tasks (``settings.lm_eval`` of an audit)."""

    batch_size: int = Field(8, ge=1)
    """Requests per forward pass."""

    limit: int | None = Field(None, ge=1)
    """Documents per task (the first ``limit``); None: all of them."""

    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per prompt, overriding the tasks' own ``num_fewshot``."""

    bootstrap_iters: int = Field(1000, ge=0)
    """Bootstrap resamples for the standard error of metrics without a closed form (0: none)."""

    seed: int = 1234
    """Seed of lm-eval's random, numpy, torch and few-shot sampling."""


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError(
            "--lm-eval-tasks needs lm-eval: pip install 'overtrain[eval]' (or lm_eval>=0.4.9)"
        ) from None


def task_files(paths: Sequence[Path]) -> list[Path]:
    """YAML files named directly or found (non-recursively, sorted) in the named directories."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise DataError(f"no lm-eval task YAML (*.yaml) in {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"lm-eval task file not found: {path}")
    return [f.resolve() for f in files]


def _local(value: Any, base: Path) -> Any:
    """`value` (a path, a list of them or a split -> path(s) mapping) with relative paths made absolute
    against `base`."""
    if isinstance(value, str):
        return value if "://" in value or Path(value).is_absolute() else str(base / value)
    if isinstance(value, list):
        return [_local(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _local(v, base) for k, v in value.items()}
    return value


def _data_paths(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _data_paths(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _data_paths(v)


def load_task(file: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """One task YAML as lm-eval reads it (``include:`` merged, ``!function`` resolved beside the file),
    made local: relative data paths absolute, the ``datasets`` cache in `cache_dir`.

    Raises:
        DataError: the file is not a single-task config, reads from the hub, or names missing data.
    """
    _require_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(file, resolve_func=True)
    except Exception as exc:  # yaml, include cycles, a !function that does not import
        raise DataError(f"cannot read lm-eval task {file}: {str(exc).splitlines()[0]}") from None
    if "task" not in cfg or not isinstance(cfg["task"], str) or "class" in cfg or "task_list" in cfg:
        raise DataError(
            f"{file}: give single-task YAMLs (a `task:` name); groups and Python tasks are not run"
        )
    base = file.parent
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    source = cfg.get("dataset_path")
    if source in FILE_BUILDERS:
        if "data_files" not in kwargs and "data_dir" not in kwargs:
            raise DataError(f"{file}: dataset_path {source!r} needs dataset_kwargs.data_files")
    elif isinstance(source, str) and (base / source).is_dir():
        cfg["dataset_path"] = str((base / source).resolve())
    else:
        raise DataError(
            f"{file}: dataset_path {source!r} is not local (nothing is downloaded): use one of "
            f"{', '.join(FILE_BUILDERS)} with dataset_kwargs.data_files, or a local directory"
        )
    for key in ("data_files", "data_dir"):
        if key in kwargs:
            kwargs[key] = _local(kwargs[key], base)
            for p in _data_paths(kwargs[key]):
                if "://" in p:
                    raise DataError(f"{file}: {key} {p} is a URL (nothing is downloaded)")
                if not (glob.glob(p) if any(c in p for c in "*?[") else Path(p).exists()):
                    raise DataError(f"{file}: {key} {p} not found")
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    cfg["dataset_kwargs"] = kwargs
    return cfg


def data_files_of(cfg: dict[str, Any]) -> list[Path]:
    """The local files a loaded task reads (for fingerprints)."""
    kwargs = cfg.get("dataset_kwargs") or {}
    paths = [Path(p) for key in ("data_files", "data_dir") for p in _data_paths(kwargs.get(key))]
    if Path(cfg["dataset_path"]).is_dir():
        paths.append(Path(cfg["dataset_path"]))
    out: list[Path] = []
    for p in paths:
        out += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return out


@contextlib.contextmanager
def _offline_and_quiet() -> Iterator[None]:
    """No hub access, no progress bars (the harness's tqdm bars would break our rich one), harness
    logging at error level, for the duration."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    loggers = {name: logging.getLogger(name) for name in ("lm_eval", "lm-eval", "datasets")}
    levels = {name: lg.level for name, lg in loggers.items()}
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
    import datasets

    hub_offline = datasets.config.HF_HUB_OFFLINE  # read at import: the environment alone is too late
    datasets.config.HF_HUB_OFFLINE = True
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        datasets.config.HF_HUB_OFFLINE = hub_offline
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def prefix_token_id(tokenizer) -> int:
    """The token lm-eval puts before an empty context: BOS, else EOS, else the newline's id (tokenizers
    without special tokens, like our byte-level one), else 0."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    ids = tokenizer("\n", add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else 0


def evaluate_tasks(
    model, tokenizer, tasks: Sequence[dict[str, Any]], cfg: LmEvalConfig, max_length: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score an in-memory causal LM on loaded task configs (`load_task`).

    Returns:
        ``(rows, results)``: one row per (task, metric, filter) with ``task``, ``metric``, ``filter``,
        ``value``, ``stderr`` (NaN where the harness gives none), ``higher_is_better`` and ``n``
        (documents scored); and lm-eval's own results dict (JSON-serialisable) for the record.
    """
    _require_lm_eval()
    import lm_eval
    import lm_eval.evaluator
    from lm_eval.models.huggingface import HFLM

    with _offline_and_quiet():
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=cfg.batch_size,
            max_length=max_length or getattr(model.config, "max_position_embeddings", None),
            prefix_token_id=prefix_token_id(tokenizer),
        )
        # the harness asks `git describe` about the working directory (not the model; the audit's
        # manifest records our commit), and git prints "fatal: not a git repository" outside one, on
        # its own stderr where redirect_stderr cannot catch it. No public switch turns that off, and the
        # public `evaluate` (which skips it) would mean redoing simple_evaluate's seeding and few-shot
        # setup, so we patch the name lm_eval.evaluator imports: it is there in every 0.4.x (checked on
        # 0.4.13; pyproject bounds lm_eval to <0.5). If a later version drops it, only the noise returns.
        quiet_git = (
            mock.patch.object(lm_eval.evaluator, "get_git_commit_hash", lambda: None)
            if hasattr(lm_eval.evaluator, "get_git_commit_hash")
            else contextlib.nullcontext()
        )
        with quiet_git:
            out = _simple_evaluate(lm_eval, lm, tasks, cfg)
    rows = []
    for task, metrics in out["results"].items():
        n = out.get("n-samples", {}).get(task, {}).get("effective")
        better = out.get("higher_is_better", {}).get(task, {})
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric, filt = key.split(",", 1)
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filt,
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else math.nan,
                    "higher_is_better": better.get(metric),
                    "n": n,
                }
            )
    keep = ("results", "versions", "n-shot", "higher_is_better", "n-samples", "configs", "lm_eval_version")
    return rows, {k: out[k] for k in keep if k in out}


def _simple_evaluate(lm_eval, lm, tasks, cfg: LmEvalConfig) -> dict[str, Any]:
    from lm_eval.tasks import TaskManager

    was_training = lm.model.training
    try:
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=[dict(t) for t in tasks],
            task_manager=TaskManager(include_defaults=False),
            num_fewshot=cfg.num_fewshot,
            limit=cfg.limit,
            bootstrap_iters=cfg.bootstrap_iters,
            log_samples=False,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:  # bad task content, named by the harness
        raise DataError(f"lm-eval task failed: {str(exc).splitlines()[0]}") from None
    finally:
        lm.model.train(was_training)
