"""Shared fixtures: tiny real systems, a temporary work directory, CUDA skip."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")  # before torch is imported, or it has no effect

import pytest  # noqa: E402
import torch  # noqa: E402  -- before any openmm import: openmm-torch's plugin loads only when torch's libraries are loaded


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` cleanly when no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
