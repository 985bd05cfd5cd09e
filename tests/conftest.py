"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, tiny matrices run many times faster than with two."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
