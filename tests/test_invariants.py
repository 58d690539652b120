"""Every invariant against a hand-built bad state that must fire it and a good one that must not.

Architecture §6: "for each invariant a hand-built bad state that must fire it and a good one
that must not". Good states are reached by really running operations through the Driver (which
itself runs ``check_step`` after every step); bad states start from a good state and corrupt
exactly one thing by hand. Each bad state must raise the invariant's own ProtocolViolation
subclass from the specific check, with the invariant's title and a message naming the object
(gfn / pfn / actor / lock), and the aggregated ``check_step`` / ``check_quiescent`` must raise
too.

``BAD`` and ``GOOD`` are the tables (title -> builders); ``test_every_title_is_covered`` makes a
new invariant without a bad and a good state here fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import attrs
import pytest
from driving import SLOT0, SLOT1, run_op, run_until, run_while_runnable
from kvmfuzz.invariants import bookkeeping, mapping, structure, x86
from kvmfuzz.invariants.walk import Leaf, present_leaves

from kvmfuzz import invariants
from kvmfuzz.config import VmConfig
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import Deadlock, NoProgress, ProtocolViolation
from kvmfuzz.points import Point
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMSLOT_INVALID, Vm
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import PresentLeafPfnChange, Source, TdpIter, tdp_mmu_set_spte_atomic
from kvmfuzz.x86.tlb import TlbEntry
from kvmfuzz.x86.vcpu import AccessResult

# Titles raised outside invariants.check_step / check_quiescent.
PFN_CHANGE = "I3-present-leaf-pfn-change"
DEADLOCK = "deadlock"
FAULT_PROGRESS = "I12-fault-progress"
EXTRA_TITLES: tuple[str, ...] = (PFN_CHANGE, DEADLOCK, FAULT_PROGRESS)
ALL_TITLES: tuple[str, ...] = (*invariants.STEP_INVARIANTS, *invariants.QUIESCENT_INVARIANTS,
                               *EXTRA_TITLES)



# -- driving helpers ------------------------------------------------------------------------

@dataclass
class State:
    """A built state: the driver, what the violation message must name, an optional action."""

    d: Driver
    names: tuple[str, ...] = ()
    trigger: Callable[[], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vm(self) -> Vm:
        return self.d.vm


def access(d: Driver, vcpu: str, gfn: int, write: bool = False,
           private: bool = False) -> AccessResult:
    d.start("access", vcpu, gfn=gfn, write=write, private=private)
    result = run_op(d, vcpu)
    assert isinstance(result, AccessResult) and result.outcome == "ok", result
    return result


def memslot(d: Driver, actor: str, spec: SlotSpec, *, delete: bool = False) -> None:
    d.start("memslot", actor, slot=spec.slot, as_id=0, flags=spec.flags, gfn=spec.base_gfn,
            npages=0 if delete else spec.npages, hva=spec.hva_offset,
            gmem_offset=spec.gmem_offset)


def leaf_at(vm: Vm, gfn: int) -> Leaf:
    n = vm.arch.geo.pages
    found = [lf for lf in present_leaves(vm) if lf.gfn <= gfn < lf.gfn + n(lf.level)]
    assert len(found) == 1, f"expected one leaf over gfn {gfn:#x}: {found}"
    return found[0]


def tlb_entry(vm: Vm, vcpu: int, gfn: int) -> TlbEntry:
    entries = [e for e in vm.vcpus[vcpu].tlb.entries.values() if e.gfn == gfn]
    assert len(entries) == 1, entries
    return entries[0]


def set_spte(leaf: Leaf, spte: int, src: Source | None = None) -> None:
    """Write an SPTE by hand (no handle_changed_spte, no flush): the corruption."""
    leaf.sp.spt[leaf.idx] = spte
    if src is not None:
        leaf.sp.src[leaf.idx] = src


def with_pfn(spte: int, pfn: int) -> int:
    return (spte & ~S.SPTE_BASE_ADDR_MASK) | (pfn << S.PAGE_SHIFT)


def h(n: int) -> str:
    return f"{n:#x}"


# -- good states (real operations through the Driver) -----------------------------------------

def shared_state() -> State:
    """Two faults installing 2M (L2) leaves: gfn 5 written by vcpu0, gfn 9 read by vcpu1."""
    d = Driver(VmConfig(), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    access(d, "vcpu1", 9)
    assert [(lf.gfn, lf.level) for lf in present_leaves(d.vm)] == [(4, 2), (8, 2)]
    return State(d)


def mn_window_state() -> State:
    """shared_state + madvise(DONTNEED) of hva [4, 8) stopped after invalidate_range_start:
    gfn [4, 8) zapped and closed, in_progress == 1, the host PTEs not yet changed."""
    s = shared_state()
    vm = s.vm
    lf, tlb = leaf_at(vm, 5), tlb_entry(vm, 0, 5)
    s.info.update(leaf=lf, tlb=tlb)
    s.d.start("dontneed", "mm0", hva=4, npages=4)
    run_until(s.d, "mm0", Point.HOST_PTE_CHANGE)
    assert vm.mmu_invalidate_in_progress == 1 and vm.mn_active_invalidate_count == 1
    assert [w.phase for w in vm.ghost.windows] == ["returned"]
    assert [lf.gfn for lf in present_leaves(vm)] == [8]
    assert not vm.vcpus[0].tlb.entries
    return s


def dontneed_done_state() -> State:
    """shared_state + a completed DONTNEED of hva [4, 8): the THP at gfn 4 is freed."""
    s = shared_state()
    vm = s.vm
    lf, tlb = leaf_at(vm, 5), tlb_entry(vm, 0, 5)
    s.info.update(leaf=lf, tlb=tlb)
    s.d.start("dontneed", "mm0", hva=4, npages=4)
    run_op(s.d, "mm0")
    assert vm.pages.is_freed(S.spte_to_pfn(lf.spte))
    assert [lf.gfn for lf in present_leaves(vm)] == [8]
    return s


def migrated_state() -> State:
    """shared_state + migrate of the THP at gfn 4 + a re-fault: the leaf went non-present and
    came back with another pfn (the legitimate way for a present leaf to change pfn)."""
    s = shared_state()
    old = S.spte_to_pfn(leaf_at(s.vm, 5).spte)
    s.d.start("migrate", "mm1", hva=4)
    assert run_op(s.d, "mm1") is True
    access(s.d, "vcpu0", 6, write=True)
    new = S.spte_to_pfn(leaf_at(s.vm, 5).spte)
    assert new != old and s.vm.pages.is_freed(old)
    return s


def srcu_reader_state() -> State:
    """vcpu0 is inside its SRCU section (fault on gfn 1 stopped before GUP) while vmm0 creates
    slot 1: the new set is published and vmm0 sleeps in synchronize_srcu() for vcpu0."""
    s = shared_state()
    vm = s.vm
    s.d.start("access", "vcpu0", gfn=1, write=False, private=False)
    run_until(s.d, "vcpu0", Point.FAULT_GUP)
    old_set = vm.memslots[0]
    memslot(s.d, "vmm0", SLOT1)
    run_while_runnable(s.d, "vmm0")
    vmm0 = vm.sched.actor("vmm0")
    assert vmm0.pending is not None and vmm0.pending.point is Point.SYNCHRONIZE_SRCU
    assert vm.memslots[0] is not old_set
    assert [sl for sl, _ in vm.ghost.srcu_views["vcpu0"]] == [old_set]
    s.info["old_set"] = old_set
    return s


def swap_waited_state() -> State:
    """A memslot CREATE racing a notifier window: the swap sleeps until mn_active drops to 0,
    then publishes. The driver's own per-step check is off so the swap count is kept."""
    s = shared_state()
    vm = s.vm
    s.d.start("dontneed", "mm0", hva=4, npages=4)
    run_until(s.d, "mm0", Point.HOST_PTE_CHANGE)
    memslot(s.d, "vmm0", SLOT1)
    run_while_runnable(s.d, "vmm0")
    assert vm.sched.actor("vmm0").pending.point is Point.SWAP_WAIT_MN_ACTIVE  # type: ignore[union-attr]
    run_op(s.d, "mm0")
    s.d.check = False
    swaps = vm.ghost.swaps
    while vm.ghost.swaps == swaps:
        s.d.run_actor("vmm0")
    assert vm.ghost.swap_waited == 1
    return s


def dirty_log_state() -> State:
    """A dirty-logged slot: vcpu0 writes gfn 3 (a writable 4K leaf, dirty bit set)."""
    d = Driver(VmConfig(), (SlotSpec(0, 0, 16, 0, flags=KVM_MEM_LOG_DIRTY_PAGES),))
    access(d, "vcpu0", 3, write=True)
    access(d, "vcpu1", 6)
    lf = leaf_at(d.vm, 3)
    assert lf.level == 1 and S.is_writable_pte(lf.spte)
    return State(d)


def dirty_log_harvested_state() -> State:
    """dirty_log_state + KVM_GET_DIRTY_LOG: bit harvested, the leaf write-protected, flushed."""
    s = dirty_log_state()
    tlb = tlb_entry(s.vm, 0, 3)
    s.d.start("get_dirty_log", "vmm0", slot=0)
    harvested = run_op(s.d, "vmm0")
    assert harvested[0] & (1 << 3)
    assert not S.is_writable_pte(leaf_at(s.vm, 3).spte)
    s.info["tlb"] = tlb
    return s


def private_state() -> State:
    """private_mem VM, guest_memfd slot: gfn [0, 4) private, vcpu0 writes gfn 2 (a guest_memfd
    4K leaf), vcpu1 reads shared gfn 9 (a host-mm leaf)."""
    d = Driver(VmConfig(private_mem=True), (SlotSpec(0, 0, 16, 0, gmem_offset=0),))
    d.start("set_attributes", "vmm0", start=0, end=4, private=True)
    assert run_op(d, "vmm0") == 0
    access(d, "vcpu0", 2, write=True, private=True)
    access(d, "vcpu1", 9)
    src = leaf_at(d.vm, 2).source
    assert src is not None and src.kind == "gmem" and src.private
    src = leaf_at(d.vm, 9).source
    assert src is not None and src.kind == "hva" and not src.private
    return State(d)


def attr_window_state() -> State:
    """private_state + KVM_SET_MEMORY_ATTRIBUTES(gfn [8, 12) -> private) stopped half-way
    through the xarray stores: gfn 8 is private, 9 not yet, the window is open."""
    s = private_state()
    s.info["leaf"] = leaf_at(s.vm, 9)
    s.d.start("set_attributes", "vmm1", start=8, end=12, private=True)
    run_until(s.d, "vmm1", Point.ATTR_STORE)
    run_until(s.d, "vmm1", Point.ATTR_STORE)
    vm = s.vm
    assert vm.kvm_mem_is_private(8) and not vm.kvm_mem_is_private(9)
    assert [w.kind for w in vm.ghost.windows] == ["attr"]
    return s


def punch_hole_state() -> State:
    """private_state + fallocate(PUNCH_HOLE) of gmem [0, 4) stopped before the truncate."""
    s = private_state()
    lf = leaf_at(s.vm, 2)
    s.info["leaf"] = lf
    s.d.start("punch_hole", "vmm1", start=0, end=4)
    run_until(s.d, "vmm1", Point.GMEM_TRUNCATE)
    assert [lf.gfn for lf in present_leaves(s.vm)] == [8]
    return s


def deleted_slot_state() -> State:
    """Without the SLOT_ZAP_ALL quirk: two slots mapped, then slot 1 DELETEd (its leaves zapped
    by kvm_mmu_zap_memslot, the struct freed)."""
    d = Driver(VmConfig(slot_zap_all=False), (SLOT0, SLOT1))
    access(d, "vcpu0", 5, write=True)
    access(d, "vcpu1", 21, write=True)
    s = State(d, info={"leaf": leaf_at(d.vm, 21), "tlb": tlb_entry(d.vm, 1, 21)})
    memslot(d, "vmm0", SLOT1, delete=True)
    assert run_op(d, "vmm0") == 0
    assert [lf.gfn for lf in present_leaves(d.vm)] == [4]
    assert d.vm.ghost.slot_state[s.info["leaf"].source.slot_serial] == "dead"
    return s


def dead_root_tlb_state() -> State:
    """With the SLOT_ZAP_ALL quirk (default): vcpu0 maps gfn 0x15 of slot 1, slot 1 is
    DELETEd (zap_all_fast: roots invalidated, zapped without a flush), vcpu0 reloads a new root
    and accesses gfn 5. Its TLB still holds the entry of the abandoned root for gfn 0x15, which
    it can never hit again (lookups are by current root; a new root is flushed on load)."""
    d = Driver(VmConfig(), (SLOT0, SLOT1))
    access(d, "vcpu0", 21, write=True)
    old_root = d.vm.vcpus[0].root
    memslot(d, "vmm0", SLOT1, delete=True)
    assert run_op(d, "vmm0") == 0
    access(d, "vcpu0", 5)
    vcpu = d.vm.vcpus[0]
    assert old_root is not None and vcpu.root is not old_root
    assert {e.root_id for e in vcpu.tlb.entries.values() if e.gfn == 21} == {old_root.id}
    return State(d)


def huge_leaf_over_closed_range_state() -> State:
    """DONTNEED of hva [5, 9) is between invalidate_range_start and the host change; the THP
    at hva [8, 12) is still PMD-mapped. vcpu1 faults gfn 0xb, outside the invalidated range, so
    mmu_invalidate_retry_gfn() lets it map a 2M leaf over gfn [8, 12), overlapping the range.
    The kernel does the same (retry is per faulting gfn) and it is safe: the host can change
    hva 8 only after __split_huge_pmd(), whose own notifier over the whole PMD zaps the leaf
    first. (The driver's per-step check is off for the fault: I1 fires there.)"""
    d = Driver(VmConfig(), (SLOT0,))
    d.start("host_write", "mm1", hva=9)
    run_op(d, "mm1")
    d.start("dontneed", "mm0", hva=5, npages=4)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)
    d.check = False
    access(d, "vcpu1", 0xB)
    lf = leaf_at(d.vm, 0xB)
    assert (lf.gfn, lf.level) == (8, 2) and d.vm.mm.host_pfn_mapping_level(0x40008) == 2
    return State(d)


def finished(s: State) -> State:
    s.d.finish()
    return s


def last_access_state() -> State:
    """shared_state + vcpu0 writes gfn 6 (a page walk: its TLB holds gfn 5 only) and vcpu1
    reads gfn 9 again (through its TLB), with the driver's per-step check off so that
    ``last_access`` is still recorded when the check runs."""
    s = shared_state()
    s.d.check = False
    access(s.d, "vcpu0", 6, write=True)
    assert s.vm.vcpus[0].last_access is not None and not s.vm.vcpus[0].last_access.via_tlb
    access(s.d, "vcpu1", 9)
    acc = s.vm.vcpus[1].last_access
    assert acc is not None and acc.via_tlb
    return s


# -- the tables ---------------------------------------------------------------------------------

Check = Callable[[State], Any]
Aggregate = Literal["step", "quiescent", "none"]


@dataclass(frozen=True)
class BadCase:
    title: str
    variant: str
    build: Callable[[], State]
    check: Check
    exc: type[ProtocolViolation]
    aggregate: Aggregate
    step_title: str | None  # what check_step reports when an earlier check sees it first
    marks: tuple[Any, ...] = ()


@dataclass(frozen=True)
class GoodCase:
    title: str
    variant: str
    build: Callable[[], State]
    check: Check
    aggregate: Aggregate
    marks: tuple[Any, ...] = ()


BAD: list[BadCase] = []
GOOD: list[GoodCase] = []


def leaves_check(fn: Callable[[Vm, list[Leaf]], None]) -> Check:
    return lambda s: fn(s.vm, present_leaves(s.vm))


def vm_check(fn: Callable[[Vm], None]) -> Check:
    return lambda s: fn(s.vm)


def trigger(s: State) -> Any:
    assert s.trigger is not None
    return s.trigger()


CHECKS: dict[str, tuple[Check, type[ProtocolViolation]]] = {
    "W0-kernel-warning": (vm_check(bookkeeping.check_kernel_warnings), bookkeeping.KernelWarning),
    "I3-invalidate-counters": (vm_check(bookkeeping.check_invalidate_counters),
                               bookkeeping.InvalidateCounters),
    "I7-mn-active-count": (vm_check(bookkeeping.check_mn_active_count), bookkeeping.MnActiveCount),
    "I4-swap-while-invalidating": (vm_check(bookkeeping.check_swap_while_invalidating),
                                   bookkeeping.SwapWhileInvalidating),
    "I4-srcu-reader-saw-change": (vm_check(bookkeeping.check_srcu_readers),
                                  bookkeeping.SrcuReaderSawChange),
    "I9-spte-format": (vm_check(structure.check_spte_format), structure.SpteFormat),
    "I1-no-mapping-in-closed-range": (leaves_check(mapping.check_no_mapping_in_closed_range),
                                      mapping.ClosedRangeMapped),
    "I2-host-consistency": (leaves_check(mapping.check_host_consistency),
                            mapping.HostInconsistent),
    "I5-no-mapping-of-dead-slot": (leaves_check(mapping.check_no_mapping_of_dead_slot),
                                   mapping.DeadSlotMapped),
    "I6-private-shared-source": (leaves_check(mapping.check_private_shared_source),
                                 mapping.PrivateSharedMismatch),
    "I8-huge-eligibility": (leaves_check(mapping.check_huge_eligibility), mapping.HugeNotEligible),
    "I10-freed-pfn-mapped": (leaves_check(mapping.check_freed_pfn_mapped), mapping.FreedPfnMapped),
    "I7-dirty-writable-unlogged": (leaves_check(structure.check_dirty_logging),
                                   structure.DirtyNotLogged),
    "I11-guest-data-coherence": (vm_check(mapping.check_guest_data_coherence),
                                 mapping.StaleGuestData),
    "I12-quiescent-idle": (vm_check(structure.check_quiescent_idle), structure.NotIdle),
    "I10-pin-leak": (vm_check(structure.check_pins_released), structure.PinLeak),
    PFN_CHANGE: (trigger, PresentLeafPfnChange),
    DEADLOCK: (trigger, Deadlock),
    FAULT_PROGRESS: (trigger, NoProgress),
}


def _default_aggregate(title: str) -> Aggregate:
    if title in invariants.STEP_INVARIANTS:
        return "step"
    if title in invariants.QUIESCENT_INVARIANTS:
        return "quiescent"
    return "none"


def bad(title: str, *, step_title: str | None = None,
        marks: tuple[Any, ...] = ()) -> Callable[[Callable[[], State]], Callable[[], State]]:
    def register(build: Callable[[], State]) -> Callable[[], State]:
        check, exc = CHECKS[title]
        BAD.append(BadCase(title, build.__name__.removeprefix("bad_"), build, check, exc,
                           _default_aggregate(title), step_title, marks))
        return build
    return register


def good(title: str, build: Callable[[], State], variant: str | None = None,
         check: Check | None = None, marks: tuple[Any, ...] = ()) -> None:
    GOOD.append(GoodCase(title, variant or build.__name__.removesuffix("_state"), build,
                         check or CHECKS[title][0], _default_aggregate(title), marks))


# -- W0-kernel-warning ------------------------------------------------------------------------

good("W0-kernel-warning", shared_state)
good("W0-kernel-warning", mn_window_state)


@bad("W0-kernel-warning")
def bad_ghost_warning() -> State:
    s = mn_window_state()
    s.vm.ghost.warnings.append("invalidate_end with no range added")
    return State(s.d, ("invalidate_end with no range added",))


@bad("W0-kernel-warning")
def bad_kvm_bug_on() -> State:
    s = shared_state()
    s.vm.kvm_bug("mmu_invalidate_in_progress < 0")
    return State(s.d, ("KVM_BUG_ON: mmu_invalidate_in_progress < 0",))


# -- I3-invalidate-counters --------------------------------------------------------------------

good("I3-invalidate-counters", shared_state)
good("I3-invalidate-counters", mn_window_state)
good("I3-invalidate-counters", attr_window_state)
good("I3-invalidate-counters", punch_hole_state)


@bad("I3-invalidate-counters")
def bad_in_progress_without_begin() -> State:
    s = mn_window_state()
    s.vm.mmu_invalidate_in_progress += 1
    return State(s.d, ("mmu_invalidate_in_progress = 2 but 1 invalidations",))


@bad("I3-invalidate-counters")
def bad_seq_without_end() -> State:
    s = shared_state()
    s.vm.mmu_invalidate_seq += 1
    return State(s.d, ("mmu_invalidate_seq = 1 after 0 invalidate_end calls",))


@bad("I3-invalidate-counters")
def bad_range_does_not_cover_window() -> State:
    s = mn_window_state()
    s.vm.mmu_invalidate_range_end = s.vm.mmu_invalidate_range_start + 1
    return State(s.d, ("gfn [0x4, 0x8)", "[0x4, 0x5)"))


# -- I7-mn-active-count ------------------------------------------------------------------------

good("I7-mn-active-count", shared_state)
good("I7-mn-active-count", mn_window_state)
good("I7-mn-active-count", swap_waited_state)


@bad("I7-mn-active-count")
def bad_mn_active_extra() -> State:
    s = mn_window_state()
    s.vm.mn_active_invalidate_count += 1
    return State(s.d, ("mn_active_invalidate_count = 2 with 1 notifier",))


@bad("I7-mn-active-count")
def bad_mn_active_lost() -> State:
    s = mn_window_state()
    s.vm.mn_active_invalidate_count -= 1
    return State(s.d, ("mn_active_invalidate_count = 0 with 1 notifier",))


# -- I4-swap-while-invalidating ----------------------------------------------------------------

good("I4-swap-while-invalidating", shared_state)
good("I4-swap-while-invalidating", swap_waited_state)


@bad("I4-swap-while-invalidating")
def bad_swap_count_set() -> State:
    s = shared_state()
    s.vm.ghost.last_swap_count = 1
    return State(s.d, ("mn_active_invalidate_count = 1",))


@bad("I4-swap-while-invalidating")
def bad_swap_ignores_mn_active_planted() -> State:
    """Not a hand corruption: the planted bug publishes while a notifier is in flight."""
    d = Driver(VmConfig(bug="swap_ignores_mn_active_count"), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    d.start("dontneed", "mm0", hva=4, npages=4)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)
    d.check = False
    memslot(d, "vmm0", SLOT1)
    swaps = d.vm.ghost.swaps
    while d.vm.ghost.swaps == swaps:
        d.run_actor("vmm0")
    return State(d, ("mn_active_invalidate_count = 1",))


# -- I4-srcu-reader-saw-change -----------------------------------------------------------------

good("I4-srcu-reader-saw-change", shared_state)
good("I4-srcu-reader-saw-change", srcu_reader_state)


@bad("I4-srcu-reader-saw-change")
def bad_set_changed_under_reader() -> State:
    s = srcu_reader_state()
    s.info["old_set"].version += 1
    return State(s.d, ("vcpu0 is inside its SRCU read section", "as0/"))


@bad("I4-srcu-reader-saw-change")
def bad_slot_freed_under_fault() -> State:
    s = srcu_reader_state()
    fault = s.vm.vcpus[0].fault
    assert fault is not None and fault.slot is not None
    fault.slot.freed = True
    return State(s.d, ("vcpu0's fault on gfn 0x1", "slot 0#"))


# -- I9-spte-format ----------------------------------------------------------------------------

good("I9-spte-format", shared_state)
good("I9-spte-format", dirty_log_state)
good("I9-spte-format", private_state)
good("I9-spte-format", mn_window_state)


@bad("I9-spte-format")
def bad_reserved_memtype() -> State:
    s = shared_state()
    lf = leaf_at(s.vm, 9)
    set_spte(lf, (lf.spte & ~S.VMX_EPT_MT_MASK) | (2 << S.VMX_EPT_MT_EPTE_SHIFT))
    return State(s.d, ("gfn 0x8", "reserved memory type 2"))


@bad("I9-spte-format")
def bad_write_without_read() -> State:
    s = shared_state()
    lf = leaf_at(s.vm, 9)
    set_spte(lf, lf.spte & ~S.VMX_EPT_READABLE_MASK)
    return State(s.d, ("gfn 0x8", "W without R"))


@bad("I9-spte-format")
def bad_frozen_reachable() -> State:
    s = shared_state()
    set_spte(leaf_at(s.vm, 9), S.FROZEN_SPTE)
    return State(s.d, ("FROZEN SPTE reachable at gfn 0x8",))


@bad("I9-spte-format")
def bad_nonleaf_to_freed_table() -> State:
    s = shared_state()
    lf = leaf_at(s.vm, 9)
    s.vm.arch.sp_by_pfn.pop(lf.sp.pfn)  # the L2 table is gone, its parent still points at it
    return State(s.d, (f"points to pfn {h(lf.sp.pfn)}", "no live page table"))


# -- I1-no-mapping-in-closed-range -------------------------------------------------------------

good("I1-no-mapping-in-closed-range", shared_state)
good("I1-no-mapping-in-closed-range", mn_window_state)
good("I1-no-mapping-in-closed-range", attr_window_state)
good("I1-no-mapping-in-closed-range", punch_hole_state)
good("I1-no-mapping-in-closed-range", dead_root_tlb_state)
# A fault outside the closed hva range may map a 2M leaf the range covers in part while the
# host PMD is intact: the host's whole-PMD split bracket zaps it before any change.
good("I1-no-mapping-in-closed-range", huge_leaf_over_closed_range_state)


@bad("I1-no-mapping-in-closed-range")
def bad_leaf_survives_mn_start() -> State:
    s = mn_window_state()
    lf: Leaf = s.info["leaf"]
    set_spte(lf, lf.spte, lf.source)
    return State(s.d, ("gfn 0x4 L2", "[0x40004, 0x40008)", "mn window"))


@bad("I1-no-mapping-in-closed-range")
def bad_tlb_survives_mn_start() -> State:
    s = mn_window_state()
    s.vm.vcpus[0].tlb.fill(s.info["tlb"])
    return State(s.d, ("vcpu0 TLB gfn 0x5", "mn window"))


@bad("I1-no-mapping-in-closed-range")
def bad_leaf_survives_punch_hole() -> State:
    s = punch_hole_state()
    lf: Leaf = s.info["leaf"]
    set_spte(lf, lf.spte, lf.source)
    return State(s.d, ("gfn 0x2 L1", "(gmem)", "gmem window"))


@bad("I1-no-mapping-in-closed-range")
def bad_leaf_survives_attr_pre() -> State:
    s = attr_window_state()
    lf: Leaf = s.info["leaf"]
    set_spte(lf, lf.spte, lf.source)  # the shared 2M leaf over gfn [8, 12) put back
    return State(s.d, ("gfn 0x8 L2", "[0x8, 0xc) (gfn)", "attr window"))


# -- I2-host-consistency -----------------------------------------------------------------------

good("I2-host-consistency", shared_state)
good("I2-host-consistency", migrated_state)
good("I2-host-consistency", mn_window_state)
good("I2-host-consistency", private_state)
good("I2-host-consistency", dirty_log_harvested_state)


@bad("I2-host-consistency")
def bad_spte_pfn_overwritten() -> State:
    s = shared_state()
    a, b = leaf_at(s.vm, 5), leaf_at(s.vm, 9)
    set_spte(a, with_pfn(a.spte, S.spte_to_pfn(b.spte)))  # another live, aligned anon THP
    return State(s.d, ("gfn 0x4 L2", f"maps pfn {h(S.spte_to_pfn(b.spte))}",
                       f"now maps pfn {h(S.spte_to_pfn(a.spte))}"))


@bad("I2-host-consistency")
def bad_host_readonly_behind_kvm() -> State:
    s = shared_state()
    s.vm.mm.prot[0x40006] = False  # mprotect without the notifier bracket
    return State(s.d, ("gfn 0x4 L2", "writable but the host mapping is read-only"))


@bad("I2-host-consistency")
def bad_tlb_stale_pfn() -> State:
    s = shared_state()
    e = tlb_entry(s.vm, 1, 9)
    s.vm.vcpus[1].tlb.fill(attrs.evolve(e, pfn=e.pfn + 1))
    return State(s.d, ("vcpu1 TLB gfn 0x9", f"pfn {h(e.pfn + 1)}"))


@bad("I2-host-consistency")
def bad_host_remapped_behind_kvm() -> State:
    s = shared_state()
    vm = s.vm
    old = vm.mm.pmds[0x40008]
    vm.mm.pmds[0x40008] = vm.pages.alloc(old.nr_pages, "anon")  # no notifier, old kept alive
    return State(s.d, ("gfn 0x8 L2", f"now maps pfn {h(vm.mm.pmds[0x40008].head)}"))


# -- I5-no-mapping-of-dead-slot ----------------------------------------------------------------

good("I5-no-mapping-of-dead-slot", shared_state)
good("I5-no-mapping-of-dead-slot", deleted_slot_state)
good("I5-no-mapping-of-dead-slot", dead_root_tlb_state)


@bad("I5-no-mapping-of-dead-slot")
def bad_leaf_survives_delete() -> State:
    s = deleted_slot_state()
    lf: Leaf = s.info["leaf"]
    set_spte(lf, lf.spte, lf.source)
    return State(s.d, ("gfn 0x14 L2", "survives its slot's deletion"))


@bad("I5-no-mapping-of-dead-slot")
def bad_tlb_survives_delete() -> State:
    s = deleted_slot_state()
    s.vm.vcpus[1].tlb.fill(s.info["tlb"])
    return State(s.d, ("vcpu1 TLB gfn 0x15", "survives its slot's zap"))


# -- I6-private-shared-source ------------------------------------------------------------------

good("I6-private-shared-source", shared_state)
good("I6-private-shared-source", private_state)
good("I6-private-shared-source", attr_window_state)


@bad("I6-private-shared-source")
def bad_private_gfn_flipped_shared() -> State:
    s = private_state()
    s.vm.mem_attr_array.pop(2)  # attributes changed without the invalidation
    return State(s.d, ("gfn 0x2 L1", "gfn 0x2 is shared now"))


@bad("I6-private-shared-source")
def bad_shared_gfn_flipped_private() -> State:
    s = private_state()
    s.vm.mem_attr_array[9] = 1 << 3  # KVM_MEMORY_ATTRIBUTE_PRIVATE, no invalidation
    return State(s.d, ("gfn 0x8 L2", "gfn 0x9 is private now"))


@bad("I6-private-shared-source", step_title="I2-host-consistency")
def bad_private_leaf_maps_anon_page() -> State:
    s = private_state()
    lf = leaf_at(s.vm, 2)
    anon = S.spte_to_pfn(leaf_at(s.vm, 9).spte)
    set_spte(lf, with_pfn(lf.spte, anon))
    return State(s.d, ("gfn 0x2 L1", "maps a anon page"))


# -- I8-huge-eligibility -----------------------------------------------------------------------

good("I8-huge-eligibility", shared_state)
good("I8-huge-eligibility", private_state)
good("I8-huge-eligibility", attr_window_state)
good("I8-huge-eligibility", migrated_state)


@bad("I8-huge-eligibility")
def bad_disallow_lpage_set() -> State:
    s = shared_state()
    slot = s.vm.memslots[0].slots[0]
    slot.lpage_info[2][2] = 1  # the frame gfn [8, 12) may no longer be huge; nothing zapped
    return State(s.d, ("gfn 0x8 L2", "disallow_lpage = 0x1"))


@bad("I8-huge-eligibility")
def bad_host_split_behind_kvm() -> State:
    s = shared_state()
    s.vm.mm._split_pmd_locked(0x40008)  # __split_huge_pmd without the notifier bracket
    return State(s.d, ("gfn 0x8 L2", "hva 0x40008 at L1"))


# -- I10-freed-pfn-mapped ----------------------------------------------------------------------

good("I10-freed-pfn-mapped", shared_state)
good("I10-freed-pfn-mapped", dontneed_done_state)
good("I10-freed-pfn-mapped", migrated_state)
good("I10-freed-pfn-mapped", punch_hole_state)
good("I10-freed-pfn-mapped", dead_root_tlb_state)


@bad("I10-freed-pfn-mapped")
def bad_mapped_page_freed() -> State:
    s = shared_state()
    pfn = S.spte_to_pfn(leaf_at(s.vm, 9).spte)
    s.vm.pages.folio(pfn).freed = True
    return State(s.d, ("gfn 0x8 L2", f"pfn {h(pfn)} has been freed"))


@bad("I10-freed-pfn-mapped")
def bad_tlb_keeps_freed_page() -> State:
    s = dontneed_done_state()
    e: TlbEntry = s.info["tlb"]
    s.vm.vcpus[0].tlb.fill(e)
    return State(s.d, (f"vcpu0 TLB gfn 0x5 -> freed pfn {h(e.pfn)}",))


# -- I7-dirty-writable-unlogged ----------------------------------------------------------------

good("I7-dirty-writable-unlogged", dirty_log_state)
good("I7-dirty-writable-unlogged", dirty_log_harvested_state)
good("I7-dirty-writable-unlogged", shared_state)


@bad("I7-dirty-writable-unlogged")
def bad_dirty_bit_cleared() -> State:
    s = dirty_log_state()
    bitmap = s.vm.memslots[0].slots[0].dirty_bitmap
    assert bitmap is not None and bitmap[0] & (1 << 3)
    bitmap[0] &= ~(1 << 3)  # harvested without write-protecting
    return State(s.d, ("gfn 0x3 L1", "gfn 0x3's dirty bit is clear"))


@bad("I7-dirty-writable-unlogged")
def bad_writable_tlb_after_harvest() -> State:
    s = dirty_log_harvested_state()
    s.vm.vcpus[0].tlb.fill(s.info["tlb"])  # the GET's flush skipped
    return State(s.d, ("vcpu0 TLB holds a writable entry for gfn 0x3",))


# -- I11-guest-data-coherence ------------------------------------------------------------------

good("I11-guest-data-coherence", last_access_state)
good("I11-guest-data-coherence", shared_state)


@bad("I11-guest-data-coherence")
def bad_access_used_other_pfn() -> State:
    s = last_access_state()
    acc = s.vm.vcpus[1].last_access
    assert acc is not None
    other = S.spte_to_pfn(leaf_at(s.vm, 5).spte)
    s.vm.vcpus[1].last_access = attrs.evolve(acc, pfn=other)
    return State(s.d, (f"vcpu1 read of gfn 0x9 used pfn {h(other)}", "a stale read"))


@bad("I11-guest-data-coherence", step_title="I10-freed-pfn-mapped")
def bad_write_through_stale_tlb() -> State:
    s = dontneed_done_state()
    e: TlbEntry = s.info["tlb"]
    s.vm.vcpus[0].tlb.fill(e)  # the notifier's flush skipped
    s.d.check = False
    d = s.d
    d.start("access", "vcpu0", gfn=5, write=True, private=False)
    run_op(d, "vcpu0")
    acc = s.vm.vcpus[0].last_access
    assert acc is not None and acc.via_tlb
    return State(d, (f"vcpu0 wrote gfn 0x5 through freed pfn {h(e.pfn)} (TLB)",))


# -- I12-quiescent-idle ------------------------------------------------------------------------

good("I12-quiescent-idle", lambda: finished(shared_state()), "finished-shared")
good("I12-quiescent-idle", lambda: finished(srcu_reader_state()), "finished-srcu-race")
good("I12-quiescent-idle", lambda: finished(punch_hole_state()), "finished-punch-hole")


@bad("I12-quiescent-idle")
def bad_slots_lock_left_held() -> State:
    s = finished(shared_state())
    s.vm.slots_lock.acquire(s.vm.sched.actor("vmm1"))
    return State(s.d, ("slots_lock held by vmm1",))


@bad("I12-quiescent-idle")
def bad_mmu_lock_left_read_held() -> State:
    s = finished(shared_state())
    s.vm.mmu_lock.acquire_read(s.vm.sched.actor("vcpu0"))
    return State(s.d, ("mmu_lock held by vcpu0 (R)",))


@bad("I12-quiescent-idle")
def bad_srcu_reader_left() -> State:
    s = finished(shared_state())
    s.vm.srcu.read_lock(s.vm.sched.actor("mm0"))
    return State(s.d, ("1 SRCU readers",))


@bad("I12-quiescent-idle")
def bad_window_left_open() -> State:
    s = finished(shared_state())
    s.vm.ghost.open("gmem", s.vm.sched.actor("vmm0"))
    return State(s.d, ("1 invalidation windows open",))


@bad("I12-quiescent-idle")
def bad_gmem_invalidate_lock_left_held() -> State:
    s = finished(private_state())
    s.vm.gmem_files[0].invalidate_lock.acquire(s.vm.sched.actor("vmm1"))
    return State(s.d, ("filemap_invalidate_lock held by vmm1",))


# -- I10-pin-leak --------------------------------------------------------------------------------

good("I10-pin-leak", lambda: finished(shared_state()), "finished-shared")
good("I10-pin-leak", lambda: finished(migrated_state()), "finished-migrated")
good("I10-pin-leak", lambda: finished(private_state()), "finished-private")
good("I10-pin-leak", lambda: finished(deleted_slot_state()), "finished-deleted-slot")


@bad("I10-pin-leak")
def bad_folio_reference_leaked() -> State:
    s = finished(shared_state())
    folio = s.vm.mm.pmds[0x40004]
    s.vm.pages.get(folio)  # a fault's GUP reference never put
    return State(s.d, (f"anon folio pfn {h(folio.head)} has refcount 2 but 1 mappings",))


@bad("I10-pin-leak")
def bad_gmem_reference_leaked() -> State:
    s = finished(private_state())
    folio = s.vm.gmem_files[0].folios[2]
    s.vm.pages.get(folio)
    return State(s.d, (f"gmem folio pfn {h(folio.head)} has refcount 2 but 1 mappings",))


# -- I3-present-leaf-pfn-change (handle_changed_spte's BUG) -----------------------------------

def _wrprot_in_place() -> State:
    """A present leaf changed in place without a pfn change (write-protect) is fine."""
    s = shared_state()
    lf = leaf_at(s.vm, 9)
    it = TdpIter(lf.sp, lf.idx, lf.level, lf.gfn, lf.spte)

    def go() -> None:
        assert tdp_mmu_set_spte_atomic(s.vm, it, lf.spte & ~S.PT_WRITABLE_MASK)
    s.trigger = go
    return s


good(PFN_CHANGE, migrated_state, check=lambda s: None)  # the driver checked every step
good(PFN_CHANGE, _wrprot_in_place, "wrprot_in_place", check=trigger)


@bad(PFN_CHANGE)
def bad_cmpxchg_to_other_pfn() -> State:
    s = shared_state()
    a, b = leaf_at(s.vm, 5), leaf_at(s.vm, 9)
    it = TdpIter(a.sp, a.idx, a.level, a.gfn, a.spte)
    new = with_pfn(a.spte, S.spte_to_pfn(b.spte))
    return State(s.d, ("gfn 0x4 L2", "without passing through non-present"),
                 trigger=lambda: tdp_mmu_set_spte_atomic(s.vm, it, new))


# -- deadlock (the scheduler) ------------------------------------------------------------------

def _contended_memslots() -> State:
    """Two memslot updates contend for slots_lock and a fault races them: all complete."""
    s = shared_state()
    memslot(s.d, "vmm0", SLOT1)
    memslot(s.d, "vmm1", SlotSpec(2, 32, 16, 32))
    s.d.start("access", "vcpu0", gfn=1, write=False, private=False)

    def go() -> None:
        for pick in [1, 2, 0, 1, 1, 2, 0, 2, 1] * 40:
            if s.vm.sched.quiescent():
                break
            s.d.run(pick)
        s.d.finish()
        assert [r for _, op, r in s.d.results if op == "memslot"] == [0, 0]
    s.trigger = go
    return s


good(DEADLOCK, _contended_memslots, "contended_memslots", check=trigger)
good(DEADLOCK, srcu_reader_state, "srcu_reader", check=lambda s: s.d.finish())


@bad(DEADLOCK)
def bad_slots_lock_never_released() -> State:
    s = shared_state()
    s.vm.slots_lock.acquire(s.vm.sched.actor("vmm1"))  # held by an actor with nothing to do
    memslot(s.d, "vmm0", SLOT1)
    return State(s.d, ("vmm0 in memslot @ SLOTS_LOCK", "slots_lock", "holders: vmm1"),
                 trigger=lambda: [s.d.run(0) for _ in range(3)])


@bad(DEADLOCK)
def bad_lost_wakeup_planted() -> State:
    """Not a hand corruption: the planted bug forgets rcuwait_wake_up() at the notifier end."""
    d = Driver(VmConfig(bug="end_forgets_wakeup"), (SLOT0,))
    d.start("dontneed", "mm0", hva=4, npages=4)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)
    memslot(d, "vmm0", SLOT1)
    run_while_runnable(d, "vmm0")
    run_op(d, "mm0")
    return State(d, ("vmm0 in memslot @ SWAP_WAIT_MN_ACTIVE", "no wake-up yet"),
                 trigger=lambda: d.run(0))


# -- I12-fault-progress (the vCPU loop) ---------------------------------------------------------

def _retries_during_invalidation() -> State:
    """A fault on gfn 5 retries while DONTNEED's window is open (not idle), then succeeds."""
    d = Driver(VmConfig(max_fault_retries=2), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    d.start("dontneed", "mm0", hva=4, npages=4)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)
    d.start("access", "vcpu1", gfn=6, write=True, private=False)

    def go() -> None:
        for _ in range(60):
            d.run_actor("vcpu1")
        run_op(d, "mm0")
        result = run_op(d, "vcpu1")
        assert result.outcome == "ok" and result.retries > d.config.max_fault_retries, result
    return State(d, trigger=go)


good(FAULT_PROGRESS, _retries_during_invalidation, "retries_during_invalidation",
     check=trigger)


@bad(FAULT_PROGRESS)
def bad_slot_left_invalid() -> State:
    """The active slot is marked KVM_MEMSLOT_INVALID with no memslot update in flight: every
    fault returns RETRY ("invalid-slot") while nothing is pending."""
    d = Driver(VmConfig(max_fault_retries=3), (SLOT0,))
    d.vm.memslots[0].slots[0].flags |= KVM_MEMSLOT_INVALID
    d.start("access", "vcpu0", gfn=5, write=False, private=False)
    return State(d, ("vcpu0: fault on gfn 0x5 retried 4 times", "last reason invalid-slot"),
                 trigger=lambda: run_op(d, "vcpu0"))


# -- x86 MMU invariants (invariants/x86.py) -------------------------------------------------------

CHECKS.update({
    "I15-mmio-generation": (vm_check(x86.check_mmio_generation), x86.MmioGenerationStale),
    "I19-obsolete-root": (vm_check(x86.check_obsolete_roots), x86.ObsoleteRootUsed),
    "I20-pt-page-freed-early": (vm_check(x86.check_pt_freed_early), x86.PageTableFreedEarly),
    "I21-writable-trio": (leaves_check(x86.check_writable_trio), x86.WritableTrio),
    "I21-access-track-bits": (leaves_check(x86.check_access_track_bits), x86.AccessTrackBits),
    "I22-flush-before-release": (vm_check(x86.check_flush_before_release), x86.FlushNotDone),
    "D1-huge-in-logged-slot": (leaves_check(x86.check_huge_in_logged_slot), x86.HugeInLoggedSlot),
    "D5-harvest-lost-write": (vm_check(x86.check_harvest_lost_write), x86.HarvestLostWrite),
})


def run_to_end(d: Driver, actor: str) -> Any:
    """Run ``actor`` alone until its operation returns (blocked steps are errors)."""
    return run_op(d, actor)


def mmio_state() -> State:
    """SLOT0 [0, 16); vcpu0 reads gfn 0x20 (no slot): an MMIO SPTE is installed, the access
    emulates, and vcpu0's MMIO-info cache remembers gfn 0x20."""
    d = Driver(VmConfig(), (SLOT0,))
    d.start("access", "vcpu0", gfn=0x20, write=False, private=False)
    result = run_op(d, "vcpu0")
    assert isinstance(result, AccessResult) and result.outcome == "mmio", result
    d.start("access", "vcpu0", gfn=0x20, write=False, private=False)  # the RSVD path: cached
    assert run_op(d, "vcpu0").outcome == "mmio"
    vcpu = d.vm.vcpus[0]
    assert vcpu.mmio_gfn == 0x20 and vcpu.mmio_gen == d.vm.memslots[0].generation
    return State(d)


def mmio_then_slot_state() -> State:
    """mmio_state + a slot created over gfn 0x20: the MMIO SPTE and the cache are stale (the
    generation moved), and the next access maps memory."""
    s = mmio_state()
    memslot(s.d, "vmm0", SlotSpec(2, 0x20, 4, 0x20))
    assert run_op(s.d, "vmm0") == 0
    leaf = s.vm.vcpus[0].walk_leaf(0x20)
    assert S.is_mmio_spte(s.vm.arch.masks, leaf[0])
    s.info["mmio"] = leaf
    return s


def _zap_all_fast_op(vm: Vm, actor_name: str) -> Any:
    from kvmfuzz.sched.traps import mutex_lock
    from kvmfuzz.x86.mmu import kvm_mmu_zap_all_fast
    actor = vm.sched.actor(actor_name)

    def op() -> Any:
        yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
        yield from kvm_mmu_zap_all_fast(vm, actor)
        vm.slots_lock.release(actor)
    return op()


def zapped_root_state() -> State:
    """vcpu0 maps gfn 0x15 (slot 1), then slot 1 is deleted (SLOT_ZAP_ALL: zap_all_fast): the old
    root is invalid and empty, vcpu0 still holds it with a FREE_OBSOLETE_ROOTS request pending."""
    d = Driver(VmConfig(), (SLOT0, SLOT1))
    access(d, "vcpu0", 0x15, write=True)
    root = d.vm.vcpus[0].root
    memslot(d, "vmm0", SLOT1, delete=True)
    assert run_op(d, "vmm0") == 0
    assert root is not None and root.role_invalid and not root.freed
    assert d.vm.vcpus[0].root is root and root.id in d.vm.arch.ghost.must_be_obsolete
    return State(d, info={"root": root})


def fast_pf_reader_state() -> State:
    """A/D bits off: vcpu0 maps gfn 5 (2M leaf at 4), aging makes it access-tracked (no flush:
    vcpu0's TLB still has it), vcpu1's read faults and its fast page fault stops between reading
    the SPTE and the cmpxchg (an RCU reader). vmm1 then runs kvm_mmu_zap_all_fast(): the root is
    invalidated and zapped, its tables removed -- and, because vcpu1's RCU section predates the
    removal, not yet freed."""
    d = Driver(VmConfig(ad_bits=False), (SLOT0,))
    access(d, "vcpu0", 5)
    d.start("age", "mm0", hva=4, npages=4)
    run_op(d, "mm0")
    assert S.is_access_track_spte(d.vm.arch.masks, leaf_at(d.vm, 5).spte)
    d.start("access", "vcpu1", gfn=5, write=False, private=False)
    run_until(d, "vcpu1", Point.FAST_PF_CMPXCHG)
    vm = d.vm
    vm.sched.start(vm.sched.actor("vmm1"), "zap_all_fast", _zap_all_fast_op(vm, "vmm1"))
    while vm.sched.actor("vmm1").busy:
        d.run_actor("vmm1")
    pending = [sp for sp in vm.arch.rcu.callbacks if not sp.root]
    assert pending and not any(sp.freed for sp in pending)
    return State(d, info={"pending": pending})


def aged_state() -> State:
    """A/D bits off: vcpu0 writes gfn 5, vcpu1 reads gfn 9 (2M leaves), then clear_young over
    gfn [4, 8): the leaf at gfn 4 is access-tracked (saved R/X, RWX and A clear)."""
    d = Driver(VmConfig(ad_bits=False), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    access(d, "vcpu1", 9)
    d.start("clear_young", "mm0", hva=4, npages=4)
    run_op(d, "mm0")
    assert S.is_access_track_spte(d.vm.arch.masks, leaf_at(d.vm, 5).spte)
    assert not S.is_access_track_spte(d.vm.arch.masks, leaf_at(d.vm, 9).spte)
    return State(d)


def fast_pf_restored_state() -> State:
    """aged_state + vcpu0 writes gfn 6: the fast page fault restores the tracked leaf (and W)."""
    s = aged_state()
    access(s.d, "vcpu0", 6, write=True)
    lf = leaf_at(s.vm, 6)
    assert not S.is_access_track_spte(s.vm.arch.masks, lf.spte) and S.is_writable_pte(lf.spte)
    return s


def logging_enabled_state() -> State:
    """shared_state (two 2M leaves) + KVM_MEM_LOG_DIRTY_PAGES enabled on slot 0: eager split,
    write-protect (W only), flush."""
    s = shared_state()
    spec = SlotSpec(0, 0, 16, 0, flags=KVM_MEM_LOG_DIRTY_PAGES)
    memslot(s.d, "vmm0", spec)
    assert run_op(s.d, "vmm0") == 0
    assert all(lf.level == 1 and not S.is_writable_pte(lf.spte) for lf in present_leaves(s.vm))
    return s


def logging_written_state() -> State:
    """logging_enabled_state + vcpu0 writes gfn 5 (the fast page fault sets W, marks the bit)."""
    s = logging_enabled_state()
    access(s.d, "vcpu0", 5, write=True)
    slot = s.vm.memslots[0].slots[0]
    from kvmfuzz.virt.dirty import dirty_bit
    assert dirty_bit(slot, 5) and 5 in s.vm.arch.ghost.written[slot.serial]
    return s


# I15
good("I15-mmio-generation", mmio_state)
good("I15-mmio-generation", mmio_then_slot_state)


@bad("I15-mmio-generation")
def bad_mmio_spte_current_generation() -> State:
    s = mmio_then_slot_state()
    _spte, _level, sp, idx = s.info["mmio"]
    assert sp is not None
    gen = s.vm.memslots[0].generation
    sp.spt[idx] = S.make_mmio_spte(s.vm.arch.masks, 0x20, S.ACC_ALL, gen)  # stamped "now"
    return State(s.d, ("gfn 0x20", "passes check_mmio_spte()"))


@bad("I15-mmio-generation")
def bad_mmio_cache_current_generation() -> State:
    s = mmio_then_slot_state()
    s.vm.vcpus[0].mmio_gen = s.vm.memslots[0].generation
    return State(s.d, ("vcpu0's MMIO-info cache holds gfn 0x20",))


# I19
good("I19-obsolete-root", zapped_root_state)
good("I19-obsolete-root", dead_root_tlb_state)


@bad("I19-obsolete-root")
def bad_root_still_valid_after_zap_all_fast() -> State:
    s = zapped_root_state()
    s.info["root"].role_invalid = False
    return State(s.d, (f"root#{s.info['root'].id}", "is still valid after it returned"))


@bad("I19-obsolete-root")
def bad_mapping_in_zapped_root() -> State:
    from kvmfuzz.x86.tdp_mmu import tdp_mmu_alloc_sp
    s = zapped_root_state()
    root = s.info["root"]
    geo = s.vm.arch.geo
    child = tdp_mmu_alloc_sp(s.vm, root.level - 1, geo.pages(root.level), root.as_id, root)
    child.parent, child.published = (root, 1), True  # as if a fault had linked a table
    root.spt[1] = S.make_nonleaf_spte(s.vm.arch.masks, child.pfn, False)
    return State(s.d, (f"root#{root.id}", "still maps entry 1"))


@bad("I19-obsolete-root")
def bad_install_in_invalid_root() -> State:
    """zapped_root_state, but vcpu0's reload request is lost and is_page_fault_stale() ignores
    the obsolete root (the planted hook): vcpu0's next fault maps gfn 3 into the invalid root."""
    s = zapped_root_state()
    s.vm.vcpus[0].requests.clear()
    s.vm.config = attrs.evolve(s.vm.config, bug="stale_check_ignores_obsolete_root")
    s.d.check = False
    access(s.d, "vcpu0", 3)
    return State(s.d, ("installed", "for gfn 0x0", f"root#{s.info['root'].id}"))


# I20
good("I20-pt-page-freed-early", fast_pf_reader_state)
good("I20-pt-page-freed-early", lambda: finished(fast_pf_reader_state()), "fast_pf_reader_finished")


@bad("I20-pt-page-freed-early")
def bad_table_freed_under_rcu_reader() -> State:
    from kvmfuzz.x86.tdp_mmu import tdp_mmu_free_sp
    s = fast_pf_reader_state()
    sp = s.info["pending"][0]
    s.vm.arch.rcu.callbacks.remove(sp)
    tdp_mmu_free_sp(s.vm, sp)  # the grace period not over: vcpu1 may still cmpxchg into it
    return State(s.d, (sp.describe(), "vcpu1 (entered at"))


@bad("I20-pt-page-freed-early")
def bad_root_freed_while_loaded() -> State:
    s = shared_state()
    root = s.vm.vcpus[0].root
    assert root is not None
    root.freed = True
    return State(s.d, (f"root#{root.id}", "freed"))


# I21-writable-trio
good("I21-writable-trio", shared_state)
good("I21-writable-trio", logging_enabled_state)
good("I21-writable-trio", logging_written_state)


@bad("I21-writable-trio", step_title="I2-host-consistency")
def bad_writable_not_mmu_writable() -> State:
    s = shared_state()
    lf = leaf_at(s.vm, 5)
    set_spte(lf, lf.spte & ~s.vm.arch.masks.mmu_writable_mask)
    return State(s.d, ("gfn 0x4 L2", "Writable SPTE is not MMU-writable"))


@bad("I21-writable-trio")
def bad_mmu_writable_over_readonly_host() -> State:
    s = logging_enabled_state()
    lf = leaf_at(s.vm, 5)
    assert S.is_mmu_writable_spte(s.vm.arch.masks, lf.spte) and not S.is_writable_pte(lf.spte)
    s.vm.mm.prot[0x40005] = False  # mprotect behind KVM's back (no notifier)
    return State(s.d, ("gfn 0x5 L1", "hva 0x40005 read-only"))


# I21-access-track-bits
good("I21-access-track-bits", aged_state)
good("I21-access-track-bits", fast_pf_restored_state)
good("I21-access-track-bits", shared_state)


@bad("I21-access-track-bits")
def bad_tracked_but_accessed() -> State:
    s = aged_state()
    lf = leaf_at(s.vm, 5)
    set_spte(lf, lf.spte | s.vm.arch.masks.accessed_mask)
    return State(s.d, ("gfn 0x4 L2", "access-tracked but Accessed"))


@bad("I21-access-track-bits")
def bad_saved_bits_on_present_leaf() -> State:
    s = aged_state()
    lf = leaf_at(s.vm, 9)
    set_spte(lf, lf.spte | S.SHADOW_ACC_TRACK_SAVED_MASK)
    return State(s.d, ("gfn 0x8 L2", "carries saved bits"))


# I22
good("I22-flush-before-release", mn_window_state)
good("I22-flush-before-release", dontneed_done_state)
good("I22-flush-before-release", logging_written_state)


@bad("I22-flush-before-release", step_title="I1-no-mapping-in-closed-range")
def bad_zap_without_flush_planted() -> State:
    """Not a hand corruption: kvm_flush_remote_tlbs() is a no-op (planted hook)."""
    d = Driver(VmConfig(bug="flush_remote_tlbs_noop"), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    d.check = False
    d.start("dontneed", "mm0", hva=4, npages=4)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)
    return State(d, ("vcpu0 TLB still maps gfn 0x5", "zapped by mm0", "dropped mmu_lock"))


# D1
good("D1-huge-in-logged-slot", logging_enabled_state)
good("D1-huge-in-logged-slot", dirty_log_state)


@bad("D1-huge-in-logged-slot")
def bad_enable_keeps_writable_huge_planted() -> State:
    """Not a hand corruption: no eager split, and the enable skips write-protection."""
    d = Driver(VmConfig(eager_split=False, bug="dirty_log_enable_skips_wrprot"), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    d.check = False
    memslot(d, "vmm0", SlotSpec(0, 0, 16, 0, flags=KVM_MEM_LOG_DIRTY_PAGES))
    assert run_op(d, "vmm0") == 0
    return State(d, ("gfn 0x4 L2", "writable huge leaf"))


@bad("D1-huge-in-logged-slot")
def bad_huge_after_eager_split() -> State:
    s = logging_enabled_state()
    lf = leaf_at(s.vm, 9)  # 4K after the split: make its parent a (read-only) huge leaf again
    parent = lf.sp.parent
    assert parent is not None
    psp, pidx = parent
    huge = S.make_huge_spte(s.vm.arch.masks, s.vm.arch.geo, lf.spte, 2)
    psp.spt[pidx] = huge
    psp.src[pidx] = lf.source.offset(-(lf.gfn - 8)) if lf.source else None  # type: ignore[assignment]
    return State(s.d, ("gfn 0x8 L2", "after the enable (with eager split) returned"))


# D5
good("D5-harvest-lost-write", logging_written_state)
good("D5-harvest-lost-write", dirty_log_harvested_state)


@bad("D5-harvest-lost-write", step_title="I7-dirty-writable-unlogged")
def bad_written_bit_cleared() -> State:
    s = logging_written_state()
    bitmap = s.vm.memslots[0].slots[0].dirty_bitmap
    assert bitmap is not None
    bitmap[0] &= ~(1 << 5)  # the bit lost without a harvest
    return State(s.d, ("the guest wrote gfn 0x5", "dirty bit is clear"))


@bad("D5-harvest-lost-write", step_title="I7-dirty-writable-unlogged")
def bad_harvest_reports_written_page_clean_planted() -> State:
    """Not a hand corruption: GET harvests without write-protecting (planted hook), the guest
    writes gfn 3 again through the still-writable SPTE, and the next GET reports it clean."""
    d = Driver(VmConfig(bug="get_dirty_log_skips_protect"),
               (SlotSpec(0, 0, 16, 0, flags=KVM_MEM_LOG_DIRTY_PAGES),))
    access(d, "vcpu0", 3, write=True)
    d.check = False  # I7 fires at once: the harvested page stays writable
    d.start("get_dirty_log", "vmm0", slot=0)
    assert run_op(d, "vmm0")[0] & (1 << 3)
    access(d, "vcpu0", 3, write=True)
    d.start("get_dirty_log", "vmm0", slot=0)
    assert not run_op(d, "vmm0")[0] & (1 << 3)
    return State(d, ("KVM_GET_DIRTY_LOG", "reported gfn 0x3 clean"))


# -- the tests ----------------------------------------------------------------------------------

def _params(cases: list[BadCase] | list[GoodCase]) -> list[Any]:
    return [pytest.param(c, id=f"{c.title}:{c.variant}", marks=c.marks) for c in cases]


@pytest.mark.parametrize("case", _params(BAD))
def test_bad_state_fires(case: BadCase) -> None:
    s = case.build()
    with pytest.raises(case.exc) as exc:
        case.check(s)
    assert type(exc.value) is case.exc
    assert exc.value.title == case.title
    message = str(exc.value)
    assert message.startswith(f"[{case.title}] ")
    for name in s.names:
        assert name in message, f"{name!r} not in {message!r}"


@pytest.mark.parametrize("case", _params([c for c in BAD if c.aggregate != "none"]))
def test_bad_state_fires_aggregated(case: BadCase) -> None:
    s = case.build()  # fresh: some checks consume what they check (swap count, last access)
    aggregated = invariants.check_step if case.aggregate == "step" else invariants.check_quiescent
    with pytest.raises(ProtocolViolation) as exc:
        aggregated(s.vm)
    assert exc.value.title == (case.step_title or case.title)


@pytest.mark.parametrize("case", _params(GOOD))
def test_good_state_passes(case: GoodCase) -> None:
    s = case.build()
    case.check(s)
    invariants.check_step(s.vm)
    if s.vm.sched.quiescent():
        invariants.check_quiescent(s.vm)


@pytest.mark.parametrize("title", ALL_TITLES)
def test_every_title_is_covered(title: str) -> None:
    """A new invariant (a title in STEP_INVARIANTS / QUIESCENT_INVARIANTS) needs both here."""
    assert title in CHECKS, f"{title}: add its check and exception class to CHECKS"
    assert any(c.title == title and not c.marks for c in BAD), f"{title}: no bad state"
    assert any(c.title == title and not c.marks for c in GOOD), f"{title}: no good state"


def test_tables_are_consistent() -> None:
    assert len(set(ALL_TITLES)) == len(ALL_TITLES)
    for title, (_, exc) in CHECKS.items():
        assert title in ALL_TITLES, f"{title} is not a known invariant"
        if exc is NoProgress:  # class title "no-progress"; every raiser passes title=...
            continue
        assert exc.title == title, f"{exc.__name__}.title is {exc.title!r}, not {title!r}"
    assert len({exc for _, exc in CHECKS.values()}) == len(CHECKS), "a class shared by two titles"
    ids = [(c.title, c.variant) for c in BAD] + [(c.title, c.variant) for c in GOOD]
    assert len(set(ids)) == len(ids)


def test_good_states_hold_every_invariant_at_every_step() -> None:
    """The builders above run with the driver checking every step; a whole-VM teardown of the
    richest of them must also end quiescent and clean."""
    for build in (mn_window_state, srcu_reader_state, attr_window_state, punch_hole_state,
                  dirty_log_harvested_state, deleted_slot_state, dead_root_tlb_state):
        s = build()
        s.d.check = True
        s.d.finish()
        invariants.check_step(s.vm)
        invariants.check_quiescent(s.vm)


def test_model_dontneed_keeps_pages_outside_its_range() -> None:
    """DONTNEED of hva [5, 10) while a fault populates the THP at hva [8, 12) must leave hvas
    10 and 11 mapped (the kernel's zap_pmd_range splits a partly covered PMD when it gets to
    it, under a notifier over the whole PMD), and every invariant must hold."""
    d = Driver(VmConfig(), (SLOT0,))
    d.start("host_write", "mm1", hva=5)  # a THP at hva [4, 8); nothing at [8, 12) yet
    run_op(d, "mm1")
    d.start("dontneed", "mm0", hva=5, npages=5)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)  # outer bracket: range_start returned
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)  # inside __split_huge_pmd(hva 4)
    d.check = False  # the fault below also trips the I1 false positive documented above
    access(d, "vcpu0", 0xB)  # GUP creates the THP at hva [8, 12); KVM maps it at 2M
    assert 0x40008 in d.vm.mm.pmds
    run_op(d, "mm0")
    assert d.vm.mm.lookup(0x4000A) is not None, "hva 0xa unmapped by DONTNEED of [5, 10)"
    invariants.check_step(d.vm)


def _split_pending_huge_translation() -> Driver:
    """mprotect of one page of a THP stopped after its notifier start (the host PMD not yet
    split); a fault on a neighbour page outside the range maps the whole frame with a huge
    leaf, and a vCPU then reaches the protected page through it (found by a campaign; the
    kernel allows it: the split's own notifier zaps the leaf and flushes before any PTE
    changes)."""
    d = Driver(VmConfig(nr_vcpus=2, thp=True), (SlotSpec(0, 16, 48, 16),))
    d.start("access", "vcpu0", gfn=0x21, write=True, private=False, exec=False)
    run_until(d, "vcpu0", Point.FAULT_PFN_RESOLVED)
    d.start("mprotect", "mm0", hva=0x21, npages=1, writable=True)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)
    d.start("access", "vcpu1", gfn=0x20, write=True, private=False, exec=False)
    run_while_runnable(d, "vcpu1")
    run_while_runnable(d, "vcpu0")
    d.finish()
    return d


def test_i1_exempts_translations_through_a_huge_leaf_awaiting_its_split() -> None:
    d = _split_pending_huge_translation()
    assert d.failure is None
    events = d.drain_events()
    assert "spte.install.L2" in events and "spte.zap.L2" in events  # mapped huge, then split
    assert [r.outcome for name, _, r in d.results if name == "vcpu0"] == ["ok"]


def test_i1_without_the_huge_split_exemption_fires_on_that_schedule(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapping, "_tlb_huge_still_pmd_mapped", lambda *a: False)
    with pytest.raises(mapping.ClosedRangeMapped, match="vcpu0 TLB gfn 0x21"):
        _split_pending_huge_translation()


def test_the_shared_walk_keeps_every_entry_a_check_can_object_to() -> None:
    """check_step walks the paging structure once (TableWalk) and hands it to the checks: its
    entries are those of the full walk that are not SHADOW_NONPRESENT_VALUE, which no check
    objects to (not present, not FROZEN, not MMIO), classified as present non-leaf (links),
    present leaf and other; and its tables every table reached."""
    from kvmfuzz.invariants.walk import TableWalk

    def entries(sp: Any) -> list[tuple[Any, int, int, int]]:
        """The reference walk: every (table, index, gfn, spte) reachable from ``sp``, pre-order,
        following a present non-leaf only into the live table of the next level."""
        out = []
        gfn = sp.gfn
        for idx, spte in enumerate(sp.spt):
            out.append((sp, idx, gfn, spte))
            gfn += vm.arch.geo.pages(sp.level)
            if S.is_shadow_present_pte(spte) and not S.is_last_spte(spte, sp.level):
                child = vm.arch.sp_by_pfn.get(S.spte_to_pfn(spte))
                if child is not None and child.level == sp.level - 1:
                    out += entries(child)
        return out

    for build in (shared_state, dead_root_tlb_state, dirty_log_harvested_state):
        vm = build().vm
        walk = TableWalk(vm)
        assert vm.arch.roots
        for root in vm.arch.roots:
            full = entries(root)
            kept = [e for e in full if e[3] != S.SHADOW_NONPRESENT_VALUE]
            assert walk.links(root) == [e for e in kept if S.is_shadow_present_pte(e[3])
                                        and not S.is_last_spte(e[3], e[0].level)]
            assert walk.leaf_entries(root) == [e for e in kept if S.is_shadow_present_pte(e[3])
                                               and S.is_last_spte(e[3], e[0].level)]
            assert walk.other(root) == [e for e in kept if not S.is_shadow_present_pte(e[3])]
            assert walk.tables(root) == list(dict.fromkeys(sp for sp, *_ in full))
            assert len(kept) < len(full) and walk.links(root)
        assert walk.leaves == present_leaves(vm) and walk.leaves
    nonpresent = S.SHADOW_NONPRESENT_VALUE
    for masks in (S.ept_masks(has_ad_bits=True), S.ept_masks(has_ad_bits=False), S.legacy_masks()):
        assert not S.is_mmio_spte(masks, nonpresent) and not S.is_shadow_present_pte(nonpresent)
    assert not S.is_frozen_spte(nonpresent)
