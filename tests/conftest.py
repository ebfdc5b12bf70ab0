"""Suite-wide pytest options."""

from __future__ import annotations

import pytest
import torch

from temporal.train import torch_threads

# The test session is an entry point like cli.main: flush denormal floats once, at start-up
# (untrained MobileViT is about ten times slower on CPU without it).
torch.set_flush_denormal(True)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on a shared 2-core machine: one intra-op thread is 10-400x faster
    than two that fight other processes for the cores (and exactly reproducible).
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with torch_threads(1):
        yield


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long", action="store_true", default=False,
        help="Fuzz stage 1 with many more mutations of every small real file (minutes instead of seconds).",
    )
