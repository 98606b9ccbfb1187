"""Fixtures shared by the probe tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine each op of a 2-thread pool
    waits for a busy core (measured: 30 training steps 0.2 s with 1 thread, 4 s with 2 under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
