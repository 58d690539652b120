"""kvmfuzz's pytest plugin (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmfuzz")
    group.addoption("--kvmfuzz-seconds", type=float, default=None,
                    help="campaign time budget in seconds")
