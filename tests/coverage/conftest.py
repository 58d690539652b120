"""Shared fixtures for the protocol-coverage tests: one short campaign per test session."""

from __future__ import annotations

import pytest

from kvmfuzz.campaign import CampaignResult, run_campaign


@pytest.fixture(scope="session")
def short_campaign() -> CampaignResult:
    """A 2.5-second campaign of the correct model (no example database: reproducible)."""
    return run_campaign(2.5, seed=1, database="none")


@pytest.fixture(scope="session")
def other_campaign() -> CampaignResult:
    """A second, shorter campaign with other seeds (for merges)."""
    return run_campaign(1.0, seed=7, database="none")
