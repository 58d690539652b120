"""The x86 planted bugs are found by the machine and shrunk to short schedules.

For each bug: the machine (``make_machine(bug)``) runs derandomized, so the outcome is the same
on every run of the same code; it must raise a violation with one of the titles its catalogue
entry names (``caught_by``), the shrunk example (the final replay, ``machine.driver.steps``)
must be short, and the same schedule replayed on the correct model must not fail (the finding
is the bug's, not an invariant's false positive). Shrunk length is counted in machine steps
(operation starts plus run segments, as tests/planted counts them); the driver's atomic steps
are reported beside it.

Timing (find + shrink) is printed; bugs that need more than ~30 s are marked ``slow`` (run them
with ``pytest -m slow tests/x86/test_planted_x86.py``).
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import get_state_machine_test

from kvmfuzz.bugs import BY_NAME
from kvmfuzz.driver import Driver, Step
from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.machine import KvmMachine, make_machine

MAX_MACHINE_STEPS = 12


def machine_steps(steps: list[Step]) -> int:
    """Operation starts plus run segments (consecutive scheduler steps of one actor)."""
    count, prev = 0, None
    for s in steps:
        if s.do == "start":
            count, prev = count + 1, None
        elif s.actor != prev:
            count, prev = count + 1, s.actor
    return count


@attrs.define
class Hunt:
    bug: str
    violation: ProtocolViolation
    machine: KvmMachine
    examples: int
    seconds: float

    @property
    def steps(self) -> list[Step]:
        assert self.machine.driver is not None
        return list(self.machine.driver.steps)

    def report(self) -> str:
        return (f"{self.bug}: {self.violation.title} after {self.examples} machine runs "
                f"(find+shrink) in {self.seconds:.1f}s; shrunk to {machine_steps(self.steps)} "
                f"machine steps / {len(self.steps)} driver steps")


def hunt(bug: str, max_examples: int) -> Hunt:
    base = make_machine(bug)
    machines: list[KvmMachine] = []

    def init(self: KvmMachine) -> None:
        base.__init__(self)
        machines.append(self)

    machine = type(base.__name__, (base,), {"__init__": init})
    test = get_state_machine_test(machine, settings=settings(  # type: ignore[no-untyped-call]
        derandomize=True, database=None, max_examples=max_examples, stateful_step_count=50,
        deadline=None, suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
        print_blob=False))
    start = time.monotonic()
    with pytest.raises(ProtocolViolation) as info:
        test()
    return Hunt(bug, info.value, machines[-1], len(machines), time.monotonic() - start)


def replays_clean_on_correct_model(h: Hunt) -> bool:
    """The shrunk schedule, replayed step by step on the correct model, raises nothing."""
    d0 = h.machine.driver
    assert d0 is not None
    d = Driver(attrs.evolve(d0.config, bug=None), d0.slots)
    try:
        for s in h.steps:
            if s.do == "start":
                args: dict[str, Any] = dict(s.args)
                actor = d.vm.sched.actor(s.actor)
                if actor.busy:
                    continue
                d.start(s.op or "", s.actor, **args)
            elif d.vm.sched.is_runnable(d.vm.sched.actor(s.actor)):
                d.run_actor(s.actor)
        d.finish()
    except ProtocolViolation:
        return False
    return True


def check(bug: str, max_examples: int) -> None:
    h = hunt(bug, max_examples)
    print(h.report())
    expected = [t.strip() for t in BY_NAME[bug].caught_by.split("/")]
    assert h.violation.title in expected, f"{bug} caught by {h.violation}"
    assert machine_steps(h.steps) <= MAX_MACHINE_STEPS, "\n".join(map(str, h.steps))
    assert replays_clean_on_correct_model(h), "the shrunk schedule fails the correct model too"


def test_machine_steps_counts_starts_and_run_segments() -> None:
    steps = [Step("start", "vcpu0", "access"), Step("run", "vcpu0", reached="A"),
             Step("run", "vcpu0", reached="B"), Step("run", "mm0", reached="C"),
             Step("run", "vcpu0", reached="D")]
    assert machine_steps(steps) == 4


@pytest.mark.slow
def test_dirty_log_enable_skips_wrprot() -> None:
    check("dirty_log_enable_skips_wrprot", 2000)


@pytest.mark.slow
def test_zap_all_fast_forgets_invalidate() -> None:
    check("zap_all_fast_forgets_invalidate", 2000)


@pytest.mark.slow
def test_mmio_spte_without_generation() -> None:
    check("mmio_spte_without_generation", 2000)


@pytest.mark.slow
def test_fast_pf_without_cmpxchg() -> None:
    check("fast_pf_without_cmpxchg", 4000)


@pytest.mark.slow
def test_recovery_ignores_invalidation() -> None:
    check("recovery_ignores_invalidation", 8000)
