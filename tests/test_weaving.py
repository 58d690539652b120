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
from kvmfuzz.corpus import Schedule, loads, replay
from kvmfuzz.coverage import CoverageCollector
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import InvalidSchedule
from kvmfuzz.machine import FAMILIES, HOST_OPS, KvmMachine, make_machine
from kvmfuzz.virt.kvm import KVM_MEM_GUEST_MEMFD
from kvmfuzz.weaving import WeavingMachine


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
    assert hasattr(WeavingMachine, "weave_stop_at") and hasattr(WeavingMachine, "weave_stop_at_huge")
    assert make_machine("skip_is_page_fault_stale").weaving is False
    assert issubclass(make_machine(None, weaving=True), WeavingMachine)
    # the hunting machine draws what it always drew: two VMM threads, swarm testing
    hunting = make_machine("skip_is_page_fault_stale")
    assert (hunting.nr_vmm_actors, hunting.swarm) == (2, True)
    assert (WeavingMachine.nr_vmm_actors, WeavingMachine.swarm) == (3, False)


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
    m.driver = Driver(config, slots, nr_vmm=m.nr_vmm_actors)
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
    ("to_shared_huge", VmConfig(private_mem=True, thp=True), {}, "ATTR_STORE"),
    ("clear_wrprot", VmConfig(thp=True, eager_split=False), {}, "CLEAR_DIRTY_LOG_BEFORE_FLUSH"),
    ("frozen_table", VmConfig(thp=True, nr_vcpus=2), {}, "TDP_MAP_STEP_DOWN"),
    ("writer_yield", VmConfig(private_mem=True, nr_vcpus=2), {"writer": "attributes"}, "TDP_MMU_YIELD"),
    ("writer_yield", VmConfig(private_mem=True, nr_vcpus=2), {"writer": "punch_hole"}, "TDP_MMU_YIELD"),
    ("writer_yield", VmConfig(nr_vcpus=2), {"writer": "zap_gfn_range"}, "TDP_MMU_YIELD"),
])
def test_stop_recipe_stops_where_it_says(recipe: str, config: VmConfig, over: dict[str, Any],
                                         point: str) -> None:
    gmem = over.get("writer") == "punch_hole" or recipe == "to_shared_huge"
    m = _machine(config, (GMEM0, SLOT1) if gmem else (SLOT0, SLOT1))
    assert recipe in m._stops()
    got = getattr(m, f"_stop_{recipe}")(_SimplestData(over))
    assert got is not None, f"{recipe} did not get there"
    actor = m.d.vm.sched.actor(got[0])
    assert actor.pending is not None and actor.pending.point.name == point, actor.where()


def test_fast_pf_retries_gives_up_and_frozen_table_retries() -> None:
    m = _machine(VmConfig(nr_vcpus=3, ad_bits=True))
    victim, _ = m._stop_fast_pf_retries(_SimplestData({"until_it_gives_up": True}))
    assert "fast_pf.gave_up" in m.seen_events, sorted(m.seen_events)
    m = _machine(VmConfig(thp=True, nr_vcpus=2))
    victim, _ = m._stop_frozen_table(_SimplestData({}))
    m._account(m.d.run_actor(victim).reached)
    assert "fault.retry.frozen_spte" in m.seen_events, sorted(m.seen_events)


def test_clear_dirty_log_splits_only_with_eager_split() -> None:
    """KVM_CLEAR_DIRTY_LOG splits huge pages itself only with INITIALLY_SET and eager split."""
    assert "clear_split" not in _machine(VmConfig(thp=True, eager_split=False))._stops()
    m = _machine(VmConfig(thp=True))
    m._set_logging(_SimplestData({}), m.d.vm.memslots[0].slots[1], True)
    assert "clear_split" in m._stops()  # (the recipe turns logging off before manual protect)
    assert m._stop_clear_split(_SimplestData({})) is not None


@pytest.mark.parametrize(("recipe", "point", "swap"), [("enable_split", "TDP_SPLIT_ALLOC", 1),
                                                       ("clear_split", "TDP_SPLIT_ALLOC", 1),
                                                       ("recover_huge", "TDP_RECOVER_HUGE", 2)])
def test_stop_recipe_gets_past_an_mmio_generation_wrap(recipe: str, point: str, swap: int) -> None:
    """With a narrow MMIO generation, a memslot update that wraps it zaps every root: the
    recipes spend the wrap before they map their huge pages, not after (the ``swap``-th
    memslot update from here would wrap: the one that enables logging, or for recovery the one
    that disables it)."""
    m = _machine(VmConfig(thp=True, mmio_gen_bits=2))
    data = _SimplestData({})
    for _ in range(4):  # create or delete a scratch slot (1 or 2 swaps) until that one wraps
        if m._mmio_wrap_ahead(swap) and not m._mmio_wrap_ahead(swap - 1):
            break
        there = 2 in m.d.vm.memslots[0].slots
        m._start("memslot", "vmm0", slot=2, as_id=0, flags=0, gfn=64, npages=0 if there else 1,
                 hva=64, gmem_offset=-1)
        m._run_to("vmm0", frozenset())
    assert m._mmio_wrap_ahead(swap) and not m._mmio_wrap_ahead(swap - 1)
    m.seen_events.clear()
    got = getattr(m, f"_stop_{recipe}")(data)
    assert got is not None, f"{recipe} did not get there"
    actor = m.d.vm.sched.actor(got[0])
    assert actor.pending is not None and actor.pending.point.name == point, actor.where()
    assert "mmio_gen.wrap" in m.seen_events  # (it did wrap, before the pages were mapped)


def test_interpositions_that_would_block_come_last() -> None:
    """A VMM kind that would block on the slots_lock a stopped operation holds keeps its VMM
    thread: a series runs the VMM kinds that would not block first."""
    m = _machine(VmConfig(private_mem=True, nr_vcpus=1), (GMEM0, SLOT1))
    got = m._stop_before_flush(_SimplestData({"manual": False}))
    assert got is not None and m.d.vm.slots_lock.owner is not None
    assert m._interpose_each(_SimplestData({}), *got)
    started = [st_.op for st_ in m.d.steps if st_.do == "start" and st_.actor != got[0]]
    vmm = [op for op in started if op in ("memslot", "set_attributes", "get_dirty_log",
                                          "clear_dirty_log", "enable_manual_protect",
                                          "punch_hole", "zap_gfn_range")]
    # a hole punch and a zap first; then the third VMM thread is taken by the first that blocks
    assert vmm[:2] == ["punch_hole", "zap_gfn_range"] or vmm[:2] == ["zap_gfn_range", "punch_hole"], vmm
    assert len(vmm) == 4, vmm  # ... and the fourth by the second: no VMM thread is left


def test_a_schedule_naming_the_third_vmm_thread_replays() -> None:
    """Corpus files name up to three VMM threads; a file that names none beyond vmm1 (every
    file before the WeavingMachine had two) replays on a VM with two."""
    d = Driver(VmConfig(), (SLOT0,), nr_vmm=3)
    d.start("get_dirty_log", "vmm2", slot=0)
    while d.vm.sched.actor("vmm2").busy:
        d.run_actor("vmm2")
    s = Schedule("clean", VmConfig(), (SLOT0,), tuple(d.steps))
    again = loads(s.dumps())
    assert again.nr_vmm == 3 and again.actors[-1] == "vmm2"
    r = replay(again, None)
    assert r.violation is None and r.diverged_at is None
    assert [a.name for a in r.driver.vm.sched.actors][-1] == "vmm2"
    two = Schedule("clean", VmConfig(), (SLOT0,), ())
    assert two.nr_vmm == 2 and two.driver(None).vm.sched.actors[-1].name == "vmm1"
    with pytest.raises(InvalidSchedule, match="unknown actor"):
        loads(s.dumps().replace('"vmm2"', '"vmm3"'))


def test_a_conversion_to_shared_zaps_a_huge_shared_leaf() -> None:
    """attr.to_shared.huge: the to_shared_huge recipe's conversion zapped a 2M leaf."""
    m = _machine(VmConfig(private_mem=True, thp=True), (GMEM0, SLOT1))
    victim, frame = m._stop_to_shared_huge(_SimplestData({}))
    assert "spte.zap.L2" in m.seen_events, sorted(m.seen_events)
    m._run_to(victim, frozenset())
    assert "attr.to_shared.slot" in m.seen_events and frame - 1 not in m.d.vm.mem_attr_array


def test_an_initially_set_clear_write_protects_a_huge_leaf() -> None:
    """spte.wrprot_huge: without eager split, an INITIALLY_SET CLEAR write-protects the huge
    leaf at the start of its range (kvm_mmu_slot_gfn_write_protect() at 2M)."""
    m = _machine(VmConfig(thp=True, eager_split=False))
    assert "clear_split" not in m._stops() and "clear_wrprot" in m._stops()
    assert m._stop_clear_wrprot(_SimplestData({})) is not None
    assert "spte.wrprot_huge" in m.seen_events, sorted(m.seen_events)


def _mmio_stale_entries(m: Any) -> list[int]:
    """The gfns of MMIO SPTEs (live roots) that a memslot now covers."""
    from kvmfuzz.invariants.walk import TableWalk, live_roots

    from kvmfuzz.x86 import spte as S
    vm = m.d.vm
    walk, masks = TableWalk(vm), vm.arch.masks
    return [S.get_mmio_spte_gfn(masks, spte) for root in live_roots(vm)
            for _sp, _idx, _gfn, spte in walk.other(root)
            if S.is_mmio_spte(masks, spte) and vm.memslots[0].search(S.get_mmio_spte_gfn(masks, spte))]


def test_the_mmio_cycle_brings_the_generation_back_to_the_stamp() -> None:
    """weave_mmio_cycle: an MMIO SPTE, a slot created over its gfn, then dirty-logging toggles
    until the generation is back at the SPTE's stamp. The correct model zaps everything at the
    wrap (kvm_arch_memslots_updated()); with the wrap unhandled, I15 fires then."""
    from kvmfuzz.errors import ProtocolViolation
    config = VmConfig(mmio_gen_bits=2)
    m = _machine(config)
    assert m._mmio_cycle() == 4 and m._mmio_cycle_possible()
    m._weave_mmio_cycle(_SimplestData({}))
    assert "spte.install.mmio" in m.seen_events and "mmio_gen.wrap" in m.seen_events
    assert not _mmio_stale_entries(m)
    # the access, the CREATE, three toggles: four memslot updates, a whole cycle
    assert [s.op for s in m.d.steps if s.do == "start"] == ["access"] + ["memslot"] * 4
    buggy = _machine(VmConfig(mmio_gen_bits=2, bug="mmio_gen_wrap_not_handled"))
    with pytest.raises(ProtocolViolation, match=r"I15|stamped at generation"):
        buggy._weave_mmio_cycle(_SimplestData({}))
    # with the kernel's 19-bit generation the cycle is 2^19 updates: not offered; nor a
    # one-update cycle (every update wraps: nothing outlives a wrap to be found stale)
    assert not _machine(VmConfig())._mmio_cycle_possible()
    one = _machine(VmConfig(mmio_gen_bits=1, nr_as=2))
    assert one._mmio_cycle() == 1 and not one._mmio_cycle_possible()
