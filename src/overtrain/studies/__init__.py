"""Studies: one folder per phenomenon (`overtrain.studies.base` says what a study is).

A study folder's ``__init__`` only *announces* the study and the run kinds it defines (`announce`), so
listing studies or building the CLI imports none of their engines; ``<folder>/study.py`` builds the
`Study` and registers the real objects when one of them is first looked up.
"""

from __future__ import annotations

from collections.abc import Iterable

from overtrain.registry import RUN_KINDS, STUDIES


def announce(package: str, *, help: str, kinds: Iterable[str]) -> None:
    """Register the study of `package` (``overtrain.studies.<name>``) and its run `kinds` lazily: the
    first lookup of any of them imports ``<package>.study``, which registers them for real."""
    module = f"{package}.study"
    STUDIES.register(package.rsplit(".", 1)[-1], module, help=help)
    for kind in kinds:
        RUN_KINDS.register(kind, module)
