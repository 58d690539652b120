"""The concurrent stress mode: a short clean run, planted checker blindness, a long run."""

from __future__ import annotations

import pytest

from kvmfuzz.errors import InvalidArgument
from kvmfuzz.real import harness
from kvmfuzz.real.harness import RegionKinds, guest_memfd_usable, kvm_usable
from kvmfuzz.real.stress import PLANTS, StressReport, run_stress

USABLE, REASON = kvm_usable()
GMEM, GMEM_REASON = guest_memfd_usable()
pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not USABLE, reason=f"needs a usable /dev/kvm: {REASON}")]


def kinds_run(report: StressReport) -> set[str]:
    """The region kinds the host operations touched (op names end with the kind)."""
    return {name.rsplit("-", 1)[1] for name, _ in report.op_counts}


def test_short_run_has_no_violations() -> None:
    report = run_stress(seed=7, host_ops=2000, vcpus=2)
    assert report.violation_count == 0, "\n".join(report.violations)
    assert report.host_ops == 2000
    assert report.guest_accesses > 0 and report.host_ops_per_s > 0
    outcomes = dict(report.outcome_counts)
    assert outcomes.get("read", 0) > 0 and outcomes.get("write", 0) > 0
    assert report.ok and "seed 7" in report.summary()
    # guest_memfd is exercised where the kernel has it, and said to be left out where not
    assert kinds_run(report) == set(report.kinds.kinds)
    assert ("gmem" in report.kinds.kinds) == GMEM
    assert report.kinds.left_out == ("" if GMEM else f"gmem left out: {GMEM_REASON}")


def test_run_without_guest_memfd_creates_no_gmem_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "guest_memfd_usable", lambda: (False, "faked: no guest_memfd"))
    report = run_stress(seed=1, host_ops=300, vcpus=2)
    assert report.violation_count == 0, "\n".join(report.violations)
    assert report.kinds == RegionKinds(("anon", "memfd"), "gmem left out: faked: no guest_memfd")
    assert kinds_run(report) == {"anon", "memfd"}


@pytest.mark.parametrize("plant", PLANTS)
def test_planted_blindness_is_caught(plant: str) -> None:
    report = run_stress(seed=3, host_ops=2000, vcpus=2, plant=plant)
    assert report.violation_count > 0, f"{plant}: the checker saw nothing"


def test_bad_arguments() -> None:
    with pytest.raises(InvalidArgument):
        run_stress(seed=0, host_ops=10, vcpus=0)
    with pytest.raises(InvalidArgument):
        run_stress(seed=0, host_ops=10, plant="nonsense")
    with pytest.raises(InvalidArgument):
        run_stress(seed=0, host_ops=10, kinds=RegionKinds(()))


@pytest.mark.slow
def test_long_run_has_no_violations() -> None:
    report = run_stress(seed=2026, host_ops=100_000, vcpus=2)
    print(report.summary())
    assert report.violation_count == 0, "\n".join(report.violations)
