"""The WeavingMachine (the ``weave`` rule): it reaches what the hunting machine does not, and
the hunting machine stays free of it."""

from __future__ import annotations

from typing import Any

import pytest
from driving import SLOT0, SLOT1
from hypothesis import HealthCheck, find, settings
from hypothesis.stateful import run_state_machine_as_test

import kvmfuzz.machine as machine_mod
from kvmfuzz.config import VmConfig
from kvmfuzz.coverage import CoverageCollector
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.machine import FAMILIES, HOST_OPS, KvmMachine, WeavingMachine, make_machine
from kvmfuzz.virt.kvm import KVM_MEM_GUEST_MEMFD


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


class _SimplestData:
    """A stand-in for ``st.data()``: each draw is the strategy's simplest value (what
    Hypothesis shrinks toward), unless ``over`` names the draw's label."""

    def __init__(self, over: dict[str, Any]) -> None:
        self.over = over

    def draw(self, strategy: Any, label: str | None = None) -> Any:
        if label in self.over:
            return self.over[label]
        return find(strategy, lambda _: True, settings=settings(database=None))


def _machine(config: VmConfig, slots: tuple[SlotSpec, ...] = (SLOT0, SLOT1)) -> Any:
    m = make_machine(None, weaving=True)()
    m.driver = Driver(config, slots)
    m.families, m.host_ops = frozenset(FAMILIES), HOST_OPS
    return m


@pytest.fixture(autouse=True)
def _no_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine_mod, "event", lambda _label: None)  # outside a Hypothesis test


GMEM0 = SlotSpec(0, 0, 16, 0, flags=KVM_MEM_GUEST_MEMFD, gmem_offset=0)


@pytest.mark.parametrize(("recipe", "config", "over", "point"), [
    ("clear_split", VmConfig(thp=True), {}, "TDP_SPLIT_ALLOC"),
    ("clear_yield", VmConfig(thp=True, nr_vcpus=2), {}, "TDP_MMU_YIELD"),
    ("enable_split", VmConfig(thp=True), {}, "TDP_SPLIT_ALLOC"),
    ("recover_huge", VmConfig(thp=True), {}, "TDP_RECOVER_HUGE"),
    ("memslot_lock", VmConfig(), {}, "MMU_LOCK_WRITE"),
    ("age_spte", VmConfig(), {}, "AGE_SPTE"),
    ("before_flush", VmConfig(), {}, "DIRTY_LOG_BEFORE_FLUSH"),
    ("fast_pf_retries", VmConfig(nr_vcpus=3, ad_bits=True), {"changes": 4}, "FAST_PF_CMPXCHG"),
    ("frozen_table", VmConfig(thp=True, nr_vcpus=2), {}, "TDP_MAP_STEP_DOWN"),
    ("writer_yield", VmConfig(private_mem=True, nr_vcpus=2), {"writer": "attributes"}, "TDP_MMU_YIELD"),
    ("writer_yield", VmConfig(private_mem=True, nr_vcpus=2), {"writer": "punch_hole"}, "TDP_MMU_YIELD"),
    ("writer_yield", VmConfig(nr_vcpus=2), {"writer": "zap_gfn_range"}, "TDP_MMU_YIELD"),
])
def test_stop_recipe_stops_where_it_says(recipe: str, config: VmConfig, over: dict[str, Any],
                                         point: str) -> None:
    m = _machine(config, (GMEM0, SLOT1) if over.get("writer") == "punch_hole" else (SLOT0, SLOT1))
    assert recipe in m._stops()
    got = getattr(m, f"_stop_{recipe}")(_SimplestData(over))
    assert got is not None, f"{recipe} did not get there"
    actor = m.d.vm.sched.actor(got[0])
    assert actor.pending is not None and actor.pending.point.name == point, actor.where()


def test_fast_pf_retries_gives_up_and_frozen_table_retries() -> None:
    m = _machine(VmConfig(nr_vcpus=3, ad_bits=True))
    victim, _ = m._stop_fast_pf_retries(_SimplestData({"changes": 5}))
    assert "fast_pf.gave_up" in m.seen_events, sorted(m.seen_events)
    m = _machine(VmConfig(thp=True, nr_vcpus=2))
    victim, _ = m._stop_frozen_table(_SimplestData({}))
    m._account(m.d.run_actor(victim).reached)
    assert "fault.retry.frozen_spte" in m.seen_events, sorted(m.seen_events)
