"""The import contracts of `docs/design.md` ("Layers"), checked on the source.

Every ``import`` of an ``overtrain`` module, at module level or inside a function, is an edge from the
importing module's layer to the imported one's. An edge must point down the stack (or stay inside a
layer); layers on one line of the stack are independent of each other, and one study never imports
another. Imports inside functions hide cycles, so outside the CLI (which imports lazily to keep
``overtrain --help`` fast) each one must be listed in `DEFERRED` with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "overtrain"

STACK: list[tuple[str, ...]] = [
    ("cli",),
    ("studies",),
    ("report", "executors"),
    ("runs",),
    ("training",),
    ("probes",),
    ("analysis",),
    ("models",),
    ("data",),
    ("core",),
    ("config", "registry", "errors", "paths", "seed", "threads", "distributed", "overtrain"),
]
"""Layers from the top: a module may import its own layer and any layer below it; layers on one line
are independent. ``overtrain`` is the package's ``__init__``."""

GROUND_ORDER = ["config", "registry", "distributed", "threads", "seed", "paths", "errors", "overtrain"]
"""Inside the ground layer, the same rule in this order (``errors`` imports nothing of ours)."""

SHARED_STUDY_MODULES = {"overtrain.studies", "overtrain.studies.base"}
"""What every study may import from the studies layer besides its own folder."""

DEFERRED: dict[tuple[str, str], str] = {}
"""(module, imported module) -> why the import sits inside a function."""

LAZY_THIRD_PARTY: dict[str, str] = {
    "torch": "the ground layer, data configs and the CLI validate configs without importing torch (~1 s)",
    "transformers": "~2 s to import; only model building, checkpoints and tokenizers need it",
    "tokenizers": "only the BPE tokenizer trains or loads one",
    "peft": "imports transformers; only LoRA methods need it",
    "accelerate": "only a multi-process launch needs it",
    "safetensors": "only checkpoint reading and writing need it",
    "scipy": "~0.3 s; only a few statistics and solvers need it",
    "sklearn": "~1 s; only the digits dataset needs it",
    "matplotlib": "~0.5 s; only figures need it",
    "rich": "only progress bars and tables on a terminal need it",
    "duckdb": "only queries need it",
    "pyarrow": "only the Parquet/Arrow paths need it",
    "threadpoolctl": "only BLAS thread limits need it",
    "lm_eval": "an optional extra (overtrain[eval]): imported only for --lm-eval-tasks",
    "datasets": "an optional dependency: only `hf_dataset` directories need it",
    "ray": "an optional extra (overtrain[ray]): imported only by the Ray executor",
    "wandb": "optional, never required: imported only when OVERTRAIN_WANDB asks for the metrics mirror",
    "ctypes": "platform-specific (Linux renameat2); probed once, where it is used",
}
"""Packages that may be imported inside a function (outside the CLI), each with the reason."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom) -> str | None:
    if node.level == 0:
        return node.module
    base = module.split(".")
    is_package = (SRC.parent / Path(*base) / "__init__.py").is_file()
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> list[tuple[str, str, bool, int]]:
    """``(module, imported, inside_function, line)`` for every internal import."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for sub in ast.walk(node)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = [_resolve(module, node)]
                if (
                    targets[0] in ("overtrain", "overtrain.core", "overtrain.training", "overtrain.probes")
                    or (targets[0] or "").count(".") == 1
                ):
                    # `from overtrain.core import perturb` imports a module of the package
                    targets = [
                        f"{targets[0]}.{a.name}" if _is_module(f"{targets[0]}.{a.name}") else targets[0]
                        for a in node.names
                    ]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target and (target == "overtrain" or target.startswith("overtrain.")):
                    out.append((module, target, id(node) in nested, node.lineno))
    return out


def _is_module(name: str) -> bool:
    path = SRC.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "overtrain"


def _rank(layer: str) -> int:
    for i, row in enumerate(STACK):
        if layer in row:
            return i
    raise AssertionError(f"module layer {layer!r} is in no layer of STACK: add it")


def _study(module: str) -> str | None:
    parts = module.split(".")
    return (
        parts[2] if len(parts) > 2 and parts[1] == "studies" and module not in SHARED_STUDY_MODULES else None
    )


def _violation(src: str, dst: str) -> str | None:
    a, b = _layer(src), _layer(dst)
    if a == b:
        if a == "studies":
            sa, sb = _study(src), _study(dst)
            if sb is not None and sa != sb:
                return "one study imports another (move the shared code below the studies)"
        return None
    ra, rb = _rank(a), _rank(b)
    if ra == rb == len(STACK) - 1:
        return None if GROUND_ORDER.index(a) < GROUND_ORDER.index(b) else "ground modules import upward"
    if ra < rb:
        return None
    return f"{a} may not import {b} ({'a layer above' if ra > rb else 'an independent layer'})"


EDGES = _imports()


def _lazy_third_party() -> list[tuple[str, str, int]]:
    """``(module, top-level package, line)`` for every import of another package inside a function."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.level == 0:
                    names = [sub.module]
                elif isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                else:
                    continue
                out += [
                    (module, n.split(".")[0], sub.lineno) for n in names if n.split(".")[0] != "overtrain"
                ]
    return out


def test_lazy_imports_of_other_packages_have_a_reason():
    unexplained = sorted(
        {
            f"{m}:{line} imports {pkg}"
            for m, pkg, line in _lazy_third_party()
            if _layer(m) != "cli" and pkg not in LAZY_THIRD_PARTY
        }
    )
    assert not unexplained, (
        "import these at the top, or add the package to LAZY_THIRD_PARTY with its reason:\n"
        + "\n".join(unexplained)
    )


def test_every_module_has_a_layer():
    for module, _, _, _ in EDGES:
        _rank(_layer(module))


@pytest.mark.parametrize("contract", ["downward", "deferred"])
def test_import_contracts(contract):
    problems = []
    for src, dst, deferred, line in EDGES:
        if contract == "downward":
            why = _violation(src, dst)
            if why:
                problems.append(f"{src}:{line} imports {dst}: {why}")
        elif deferred and _layer(src) != "cli" and (src, dst) not in DEFERRED:
            problems.append(
                f"{src}:{line} imports {dst} inside a function: move it to the top or list it in "
                "DEFERRED with the reason"
            )
    assert not problems, "\n".join(problems)


def test_the_checker_sees_a_violation():
    """The rules themselves: an upward, a sideways and a study-to-study edge are caught."""
    assert _violation("overtrain.training.loop", "overtrain.runs.store")
    assert _violation("overtrain.data.hmm", "overtrain.models.presets")
    assert _violation("overtrain.report.html", "overtrain.executors.local")
    assert _violation("overtrain.studies.hyperfit.plan", "overtrain.studies.overtraining.config")
    assert _violation("overtrain.errors", "overtrain.config")
    assert _violation("overtrain.studies.lora_dd.engine", "overtrain.studies.lora_dd.plan") is None
    assert _violation("overtrain.probes.noise", "overtrain.core.perturb") is None


MAX_LINES = 600
"""A module longer than this does more than one job: split it by job."""


def test_no_module_is_over_the_line_limit():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
