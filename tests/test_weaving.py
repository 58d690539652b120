"""The WeavingMachine (the ``weave`` rule): it reaches what the hunting machine does not, and
the hunting machine stays free of it."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from kvmfuzz.coverage import CoverageCollector
from kvmfuzz.machine import KvmMachine, WeavingMachine, make_machine


def _collect(weaving: bool, examples: int = 150) -> CoverageCollector:
    collector = CoverageCollector(emit_events=False)
    base = make_machine(None, weaving=weaving)

    def teardown(self: KvmMachine) -> None:
        try:
            base.teardown(self)
        finally:
            collector.finish_example()

    machine: Any = type(base.__name__, (base,), {"observe_steps": staticmethod(collector.on_step),
                                                 "teardown": teardown})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=20, derandomize=True, database=None,
        deadline=None, suppress_health_check=list(HealthCheck)))
    return collector


def test_the_hunting_machine_has_no_weave_rule() -> None:
    assert not any(n.startswith("weave") for n in dir(KvmMachine))
    assert hasattr(WeavingMachine, "weave_stop_at")
    assert make_machine("skip_is_page_fault_stale").weaving is False
    assert issubclass(make_machine(None, weaving=True), WeavingMachine)


def test_weaving_reaches_contended_yields_and_more_pairs() -> None:
    plain, woven = _collect(False), _collect(True)
    # a writer walking under mmu_lock yields it only when another writer is queued on it:
    # the weave rule's contended set-up (the hunting machine only does it for recovery)
    yields = {k for k in woven.points if k.endswith("@TDP_MMU_YIELD") and not k.startswith("memslot")}
    assert yields, sorted(woven.points)
    assert len(woven.pairs) > len(plain.pairs) * 1.1, (len(woven.pairs), len(plain.pairs))
