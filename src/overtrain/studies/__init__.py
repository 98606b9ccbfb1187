"""Studies: one folder per phenomenon (`overtrain.studies.base` says what a study is).

A study folder's ``__init__`` only *announces* the study and the run kinds it defines (`announce`), so
listing studies or building the CLI imports none of their engines; ``<folder>/study.py`` builds the
`Study` and registers the real objects when one of them is first looked up.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

from overtrain.registry import RUN_KINDS, STUDIES

API = ("run", "load_config", "sections", "analysis_id", "config_cls", "presets", "kind", "version")
"""What a study package offers as its Python API (``from overtrain.studies import overtraining;
overtraining.run(overtraining.load_config(preset="demo"))``): the attributes of its `Study`."""


def announce(package: str, *, help: str, kinds: Iterable[str]) -> Callable[[str], Any]:
    """Register the study of `package` (``overtrain.studies.<name>``) and its run `kinds` lazily: the
    first lookup of any of them imports ``<package>.study``, which registers them for real.

    Returns the package's module ``__getattr__`` (PEP 562): `API` names resolve to the registered
    `Study`'s attributes on first use, so the package is the study's Python API without importing its
    engine up front."""
    module = f"{package}.study"
    name = package.rsplit(".", 1)[-1]
    STUDIES.register(name, module, help=help)
    for kind in kinds:
        RUN_KINDS.register(kind, module)

    def __getattr__(attr: str) -> Any:
        # a submodule of the same name (report.py) must be imported as one, never shadowed
        if attr not in API or importlib.util.find_spec(f"{package}.{attr}") is not None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        return getattr(STUDIES.get(name), attr)

    return __getattr__
