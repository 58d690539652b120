"""The budgeted campaign: ``pytest -m campaign --kvmfuzz-seconds=N [--kvmfuzz-bug=NAME]
[--kvmfuzz-corpus=DIR] [--kvmfuzz-seed=S] [--kvmfuzz-db=URL] [--kvmfuzz-profile=P] [-n K]``.

One test item per xdist worker (``kvmfuzz_shard``), each with its own seeds; the plugin merges
their results in the terminal summary. Fails when the campaign found a violation (each one
saved to the corpus directory, its replay command in the summary).
"""

from __future__ import annotations

from typing import Any

import pytest

from kvmfuzz.campaign import SHARD_SEED_STRIDE, run_campaign


@pytest.mark.campaign
def test_campaign(kvmfuzz_options: dict[str, Any], kvmfuzz_report: list[Any],
                  kvmfuzz_progress: Any, kvmfuzz_shard: int) -> None:
    o = kvmfuzz_options
    result = run_campaign(o["seconds"], seed=o["seed"] + kvmfuzz_shard * SHARD_SEED_STRIDE,
                          bug=o["bug"], profile=o["profile"], corpus=o["corpus"],
                          database=o["db"], progress=kvmfuzz_progress,
                          started=kvmfuzz_report.append)
    assert result.stats.steps > 0
    if result.failures:
        lines = [f"{len(result.failures)} distinct failure(s):"]
        for f in result.failures:
            lines.append(f"  {f.signature}: {f.message.splitlines()[0]}")
            if f.path is not None:
                lines.append(f"    saved: {f.path}")
        pytest.fail("\n".join(lines), pytrace=False)
