"""Thread limits for small dense linear algebra.

On 2 cores, OpenBLAS's own threading makes the mid-sized matrices of the double-descent sweeps (n ≤ 1,000)
slower, not faster: the random-features study runs 2.2x faster with one BLAS thread (11.0 s vs 24.8 s,
one seed of the default preset), and much slower still when another process is busy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Limit numpy's BLAS to `threads` threads inside the block (no-op without threadpoolctl, which comes
    with scikit-learn)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield
