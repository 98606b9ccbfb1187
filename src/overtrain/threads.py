"""Thread limits for small dense linear algebra.

On few cores, OpenBLAS's own threading makes the mid-sized matrices of the double-descent sweeps
(n ≤ 1,000) slower, not faster, and much slower when another process is busy; the measured times are in
docs/double_descent.md.
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
