"""Seeds derived from names, so every random stream is a pure function of (seed, purpose, index).

Deterministic indexed streams are what make resume exact: batch `i` of split `val` is the same tensor
whether it is drawn in the first process or after a restart.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any printable parts: `derive_seed(0, "hmm", "train", 17)`."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def numpy_rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(*parts))


def torch_generator(*parts: object):
    import torch

    return torch.Generator().manual_seed(derive_seed(*parts))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch global generators (model init draws from torch's)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
