"""The budgeted campaign: ``pytest -m campaign --kvmfuzz-seconds=N [--kvmfuzz-bug=NAME]``."""

from __future__ import annotations

import pytest

from kvmfuzz.campaign import run_campaign


@pytest.mark.campaign
def test_campaign(kvmfuzz_options: dict[str, object], kvmfuzz_report: list[list[str]]) -> None:
    seconds = kvmfuzz_options["seconds"]
    seed = kvmfuzz_options["seed"]
    bug = kvmfuzz_options["bug"]
    assert isinstance(seconds, float) and isinstance(seed, int)
    assert bug is None or isinstance(bug, str)
    result = run_campaign(seconds, seed=seed, bug=bug)
    kvmfuzz_report.append(result.summary())
    assert result.stats.steps > 0
    if result.failure is not None:
        raise result.failure
