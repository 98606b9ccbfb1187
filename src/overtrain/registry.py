"""One generic registry for every pluggable thing: datasets, model presets, probes, fine-tuning methods,
studies, executors and run kinds.

Built-in entries register themselves with a decorator in their own module. A registry knows the package
that holds its built-ins and imports every module in it on first lookup, so adding a probe or a method
means adding one file. Optional heavy entries (Ray) register as a lazy ``"module:attr"`` string and are
imported only when used.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from overtrain.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map with lazy entries, duplicate checks and did-you-mean errors.

    Args:
        kind: what the entries are, for messages (``"dataset"``).
        package: dotted package (or packages) whose submodules and subpackages hold the built-in
            entries; imported on first lookup. ``"pkg.*"``: only its subpackages (one folder per entry;
            its plain modules are shared code, not entries).
    """

    def __init__(self, kind: str, package: str | tuple[str, ...] | None = None) -> None:
        self.kind = kind
        self.packages = (package,) if isinstance(package, str) else tuple(package or ())
        self._entries: dict[str, T | str] = {}
        self._help: dict[str, str] = {}
        self._loaded = package is None

    def register(self, name: str, obj: T | str | None = None, *, help: str | None = None):
        """Register `obj` under `name`; without `obj`, return a decorator.

        `obj` may be a ``"module:attr"`` string, imported on first `get`, or a bare ``"module"`` whose
        import registers the real entry under `name` (a study folder announces its study and run kinds
        this way, so listing them imports nothing heavy). A lazy entry may be replaced by the object it
        stands for.
        """
        if name != name.lower() or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"{self.kind} names are lowercase words with - or _: {name!r}")

        def add(target: T | str) -> T | str:
            old = self._entries.get(name)
            replaces_lazy = isinstance(old, str) and not isinstance(target, str)
            if old is not None and old is not target and old != target and not replaces_lazy:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = target
            if help is not None:
                self._help[name] = help
            return target

        if obj is not None:
            add(obj)
            return obj
        return add

    def _load_builtins(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for package in self.packages:
            folders_only = package.endswith(".*")
            pkg = importlib.import_module(package.removesuffix(".*"))
            for info in pkgutil.iter_modules(pkg.__path__, prefix=pkg.__name__ + "."):
                if not info.name.rsplit(".", 1)[-1].startswith("_") and (info.ispkg or not folders_only):
                    importlib.import_module(info.name)

    def get(self, name: str) -> T:
        """The entry called `name`; an unknown name raises `UnknownNameError` listing the choices."""
        self._load_builtins()
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            choices = ", ".join(sorted(self._entries)) or "none registered"
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; choose from: {choices}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            imported = importlib.import_module(module)
            if attr:
                entry = getattr(imported, attr)
                self._entries[name] = entry
            else:
                entry = self._entries[name]
                if isinstance(entry, str):
                    raise ValueError(f"importing {module} did not register the {self.kind} {name!r}")
        return entry  # type: ignore[return-value]

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        """One line about the entry: its registered help, else its own ``help`` attribute (a lazy entry is
        imported for it), else the first line of its docstring."""
        self._load_builtins()
        if self._help.get(name):
            return self._help[name]
        entry = self.get(name)
        if isinstance(getattr(entry, "help", None), str) and entry.help:
            return entry.help
        doc = getattr(entry, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


DATASETS: Registry[type] = Registry("dataset", "overtrain.data")
"""Data-source config classes by name; each class has ``build() -> TokenSource``."""

MODELS: Registry = Registry("model preset", "overtrain.models")
"""Model size presets (`overtrain.models.presets.Preset`) by name."""

RUN_KINDS: Registry = Registry("run kind", ("overtrain.runs.kinds", "overtrain.studies.*"))
"""Run kinds (`overtrain.runs.kinds.RunKind`): config class + run function, e.g. ``pretrain``; a study
registers its own kinds (its analysis, its computations) in its folder."""

EXECUTORS: Registry[Callable] = Registry("executor", "overtrain.executors")
"""Executors that carry out a plan of runs (``local``, ``ray``)."""

PROBES: Registry = Registry("probe", "overtrain.probes")
"""Checkpoint probes (noise sensitivity, sharpness, induction, ...)."""

FINETUNE_METHODS: Registry = Registry("fine-tuning method", "overtrain.training.methods")
"""Fine-tuning methods (full, lora, lora_ggpo, ...)."""

STUDIES: Registry = Registry("study", "overtrain.studies.*")
"""Studies (`overtrain.studies.base.Study`), one folder each under ``overtrain/studies/``; the CLI's study
commands are generated from this registry."""

REGISTRIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "presets": MODELS,
    "kinds": RUN_KINDS,
    "executors": EXECUTORS,
    "probes": PROBES,
    "methods": FINETUNE_METHODS,
    "studies": STUDIES,
}
