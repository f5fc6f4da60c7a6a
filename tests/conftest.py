"""Shared fixtures. Factories and assertion helpers live in ``tests/utils``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits splits (seed 0), loaded once per session."""
    from search.zoo import get_dataset

    return get_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def cnn():
    """The digits CNN (conv 1->32->64->64, fc), initialised from seed 0, in eval mode."""
    import torch

    from search.zoo import get_model

    torch.manual_seed(0)
    return get_model("digits_cnn").eval()


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a module's tests on one intra-op thread, then restore the previous count.

    The models in these tests are small: a second thread buys little, and on a shared 2-core
    runner OpenMP threads that spin-wait for a busy core made the pruning tests 4-8x slower.
    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
