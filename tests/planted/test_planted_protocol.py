"""Planted protocol bugs are found by the machine and shrunk to short schedules.

Derandomized (a fixed Hypothesis seed per test), so the outcome is the same on every run and
every machine. For each bug: the machine must raise a violation with the expected title, and
the schedule of the final (shrunk) example must have at most ``MAX_STEPS`` steps (operation
starts plus explicit scheduler runs; teardown then runs everything to completion with the
fewest switches).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import get_state_machine_test

from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.machine import KvmMachine, make_machine

MAX_STEPS = 10
STEP_COUNT = 20  # rules per generated example: short first failures shrink fast

# bug -> the invariant titles that may legitimately catch it
EXPECTED: dict[str, tuple[str, ...]] = {
    "skip_is_page_fault_stale": ("I1-no-mapping-in-closed-range", "I2-host-consistency",
                                 "I5-no-mapping-of-dead-slot", "I10-freed-pfn-mapped",
                                 "I11-guest-data-coherence", "I6-private-shared-source",
                                 "I19-obsolete-root",  # installs on a root zap-all obsoleted
                                 "I7-dirty-writable-unlogged"),  # through a pre-enable slot
    "retry_ignores_in_progress": ("I1-no-mapping-in-closed-range", "I2-host-consistency",
                                  "I10-freed-pfn-mapped", "I11-guest-data-coherence",
                                  "I6-private-shared-source"),
    "swap_ignores_mn_active_count": ("I4-swap-while-invalidating", "W0-kernel-warning",
                                     "I3-invalidate-counters"),
}


def find(bug: str) -> tuple[ProtocolViolation, list[Any]]:
    machine = make_machine(bug)
    schedules: list[list[Any]] = []
    teardown = machine.teardown

    def recording_teardown(self: KvmMachine) -> None:
        if self.driver is not None:
            schedules.append(list(self.driver.steps))
        teardown(self)

    machine.teardown = recording_teardown  # type: ignore[method-assign]
    test = get_state_machine_test(machine, settings=settings(  # type: ignore[no-untyped-call]
        max_examples=4000, stateful_step_count=STEP_COUNT, deadline=None, database=None,
        derandomize=True, report_multiple_bugs=False, print_blob=False,
        suppress_health_check=list(HealthCheck)))
    with pytest.raises(ProtocolViolation) as info:
        test()
    return info.value, schedules[-1]


def machine_steps(steps: list[Any]) -> int:
    """Schedule length in machine steps: operation starts plus run segments (a run segment is
    one ``run`` rule: consecutive scheduler steps of one actor)."""
    count, prev = 0, None
    for s in steps:
        if s.do == "start":
            count, prev = count + 1, None
        elif s.actor != prev:
            count, prev = count + 1, s.actor
    return count


def test_machine_steps_counts_starts_and_run_segments() -> None:
    from kvmfuzz.driver import Step
    steps = [Step("start", "vcpu0", "access"), Step("run", "vcpu0", reached="A"),
             Step("run", "vcpu0", reached="B"), Step("run", "mm0", reached="C"),
             Step("run", "vcpu0", reached="D")]
    assert machine_steps(steps) == 4


# Slow (minutes each) and, as of this commit, not yet meeting its bounds for all three bugs on
# the full operation mix: see the issue notes. Run with: pytest -m slow tests/planted
@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(EXPECTED))
def test_planted_bug_found_and_shrunk(bug: str) -> None:
    violation, steps = find(bug)
    assert violation.title in EXPECTED[bug], f"{bug} caught by {violation.title}: {violation}"
    n = machine_steps(steps)
    assert 0 < n <= MAX_STEPS, f"{bug}: shrunk to {n} steps: " + "; ".join(str(s) for s in steps)
