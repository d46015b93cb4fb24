"""Shared fixtures: small real data (scikit-learn's digits) and CPU-only settings."""
import pytest
import torch

from selfsup.data import load_data


@pytest.fixture(scope="session")
def digits():
    """(train, test) Dataset of the 8x8 digits."""
    return load_data("digits", "train"), load_data("digits", "test")


@pytest.fixture(autouse=True)
def _cpu_threads():
    torch.set_num_threads(2)
