"""One torch intra-op thread per test, restored afterwards: the one definition the test packages
that run many small forwards or training steps import into their conftest (on a shared 2-core box,
two spinning OpenMP threads per process made those tests many times slower)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
