"""Suite-wide pytest options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long", action="store_true", default=False,
        help="Fuzz stage 1 with many more mutations of every small real file (minutes instead of seconds).",
    )
