"""Hand-written schedules through the protocol model (``kvmfuzz.driver.Driver``).

Each test drives the actors step by step (``run_actor``) to a chosen interleaving, then lets
teardown (``finish``) run the rest round robin; invariants are checked after every step by the
driver. Assertions are on AccessResults (``d.results``), coverage events and VM state.
"""

from __future__ import annotations

from typing import Any

import pytest
from kvmfuzz.invariants.walk import present_leaves

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import HVA_BASE, Driver, SlotSpec
from kvmfuzz.sched.scheduler import Scheduler, TraceStep
from kvmfuzz.virt.dirty import dirty_bit
from kvmfuzz.virt.kvm import KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.fault import PageFault
from kvmfuzz.x86.vcpu import AccessResult

SLOT0 = SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=0)  # huge-aligned (L2 = 4 pages)


# -- helpers --------------------------------------------------------------------------------

def run_until(d: Driver, actor: str, point: str, limit: int = 50) -> list[TraceStep]:
    """Step ``actor`` alone until it stops at ``point``."""
    out = []
    for _ in range(limit):
        t = d.run_actor(actor)
        out.append(t)
        if t.reached == point:
            return out
        assert t.reached != "DONE", f"{actor} finished before {point}: {out}"
    raise AssertionError(f"{actor} did not reach {point} in {limit} steps: {out}")


def run_done(d: Driver, actor: str, limit: int = 200) -> list[TraceStep]:
    return run_until(d, actor, "DONE", limit)


def fault_of(d: Driver, vcpu: int = 0) -> PageFault:
    fault = d.vm.vcpus[vcpu].fault
    assert fault is not None, "the vCPU is not handling a fault"
    return fault


def run_to_fault_point(d: Driver, actor: str, point: str, vcpu: int = 0,
                       limit: int = 50) -> PageFault:
    """Step the vCPU until it is inside the fault handler, stopped at ``point``."""
    for _ in range(limit):
        t = d.run_actor(actor)
        assert t.reached != "DONE", f"{actor} completed its access without faulting"
        if t.reached == point and d.vm.vcpus[vcpu].fault is not None:
            return fault_of(d, vcpu)
    raise AssertionError(f"{actor} did not reach {point} inside a fault")


def access(d: Driver, gfn: int, write: bool = False, private: bool = False,
           vcpu: str = "vcpu0") -> AccessResult:
    """One complete guest access, run alone; returns its AccessResult."""
    d.start("access", vcpu, gfn=gfn, write=write, private=private)
    run_done(d, vcpu)
    return last_result(d, vcpu, "access")


def do(d: Driver, op: str, actor: str, **args: Any) -> Any:
    """One complete operation, run alone; returns its result."""
    d.start(op, actor, **args)
    run_done(d, actor)
    return last_result(d, actor, op)


def last_result(d: Driver, actor: str, op: str) -> Any:
    name, got_op, result = d.results[-1]
    assert (name, got_op) == (actor, op)
    return result


def leaves_for(d: Driver, gfn: int) -> list[Any]:
    geo = d.vm.arch.geo
    return [lf for lf in present_leaves(d.vm) if lf.gfn <= gfn < lf.gfn + geo.pages(lf.level)]


def delete(slot: int) -> dict[str, Any]:
    return dict(slot=slot, as_id=0, flags=0, gfn=0, npages=0, hva=0, gmem_offset=-1)


# -- a fault racing DONTNEED ----------------------------------------------------------------

@pytest.mark.parametrize("whole_dontneed", [False, True], ids=["in-progress", "seq-changed"])
def test_fault_racing_dontneed_retries_then_reads_the_new_zero_page(whole_dontneed: bool) -> None:
    d = Driver(VmConfig(), (SLOT0,))
    assert do(d, "host_write", "mm1", hva=1) is True
    old = d.vm.mm.lookup(HVA_BASE + 1)
    assert old is not None and d.vm.pages.read(old.pfn) != 0
    d.drain_events()

    d.start("access", "vcpu0", gfn=1, write=False, private=False)
    # the fault resolved the old pfn and passed both unsafe pre-checks; mmu_lock not yet taken
    fault = run_to_fault_point(d, "vcpu0", "FAULT_BEFORE_MMU_LOCK")
    assert fault.pfn in (old.pfn, old.pfn & ~3) and fault.mmu_seq == 0
    assert fault.refcounted_page is old.folio and fault.why == ""
    assert not d.vm.mmu_lock.held_by(d.vm.sched.actor("vcpu0"))

    d.start("dontneed", "mm0", hva=0, npages=4)
    if whole_dontneed:
        run_done(d, "mm0")
        assert d.vm.mmu_invalidate_in_progress == 0 and d.vm.mmu_invalidate_seq == 1
    else:
        run_until(d, "mm0", "HOST_PTE_CHANGE")
        assert d.vm.mmu_invalidate_in_progress == 1
        assert (d.vm.mmu_invalidate_range_start, d.vm.mmu_invalidate_range_end) == (0, 4)
    # the stale pfn is still referenced by the fault: not freed under it
    assert not old.folio.freed

    t = d.run_actor("vcpu0")  # takes mmu_lock (R), is_page_fault_stale() -> RETRY
    assert t.reached == "VCPU_REENTER"
    assert fault.why == ("seq-changed" if whole_dontneed else "in-progress")
    events = d.drain_events()
    assert f"fault.retry.{fault.why}" in events and "fault.ret.RETRY" in events
    assert not any(e.startswith("spte.install") for e in events)
    # the fault dropped its reference; the page goes once DONTNEED has changed the PTEs
    assert old.folio.freed is whole_dontneed

    d.finish()
    result = last_result(d, "vcpu0", "access")
    assert result.outcome == "ok" and result.value == 0 and result.retries >= 1
    new = d.vm.mm.lookup(HVA_BASE + 1)
    assert new is not None and new.folio is not old.folio
    (leaf,) = leaves_for(d, 1)
    assert S.spte_to_pfn(leaf.spte) == new.folio.head


def start_racing_dontneed(d: Driver, whole_dontneed: bool) -> None:
    """DONTNEED of hva 0..3 (gfns 0..3), run to its end or to HOST_PTE_CHANGE (begun, the
    range added, the host PTEs not yet changed)."""
    d.start("dontneed", "mm0", hva=0, npages=4)
    if whole_dontneed:
        run_done(d, "mm0")
        assert d.vm.mmu_invalidate_in_progress == 0 and d.vm.mmu_invalidate_seq == 1
    else:
        run_until(d, "mm0", "HOST_PTE_CHANGE")
        assert d.vm.mmu_invalidate_in_progress == 1
        assert (d.vm.mmu_invalidate_range_start, d.vm.mmu_invalidate_range_end) == (0, 4)


@pytest.mark.parametrize("whole_dontneed", [False, True], ids=["in-progress", "seq-changed"])
@pytest.mark.parametrize(("stop", "why", "event"), [
    ("FAULT_SEQ_SNAPSHOT", "unsafe-precheck-1", "fault.retry.precheck1"),
    ("FAULT_PFN_RESOLVED", "unsafe-precheck-2", "fault.retry.precheck2"),
])
def test_dontneed_before_a_lockless_precheck_is_caught_there(stop: str, why: str, event: str,
                                                             whole_dontneed: bool) -> None:
    """The same race, with DONTNEED landing before one of the unsafe pre-checks: that pre-check
    retries the fault before it takes mmu_lock, and the retry reads the new zero page."""
    d = Driver(VmConfig(), (SLOT0,))
    assert do(d, "host_write", "mm1", hva=1) is True
    old = d.vm.mm.lookup(HVA_BASE + 1)
    assert old is not None and d.vm.pages.read(old.pfn) != 0
    d.drain_events()

    d.start("access", "vcpu0", gfn=1, write=False, private=False)
    fault = run_to_fault_point(d, "vcpu0", stop)
    assert fault.mmu_seq == 0
    holds_old = stop == "FAULT_PFN_RESOLVED"
    assert (fault.refcounted_page is old.folio) is holds_old

    start_racing_dontneed(d, whole_dontneed)
    # freed once DONTNEED changed the PTEs, unless the fault still holds a reference
    assert old.folio.freed is (whole_dontneed and not holds_old)
    vcpu0 = d.vm.sched.actor("vcpu0")
    t = d.run_actor("vcpu0")
    assert t.reached == "VCPU_REENTER"
    assert fault.why == why
    assert not d.vm.mmu_lock.held_by(vcpu0)
    events = d.drain_events()
    assert event in events and "fault.ret.RETRY" in events
    assert not any(e.startswith("fault.retry.in-progress") or e.startswith("fault.retry.seq")
                   for e in events)  # the locked check never ran
    assert not any(e.startswith("spte.install") for e in events)
    assert fault.refcounted_page is None
    assert old.folio.freed is whole_dontneed

    d.finish()
    result = last_result(d, "vcpu0", "access")
    assert result.outcome == "ok" and result.value == 0 and result.retries >= 1
    new = d.vm.mm.lookup(HVA_BASE + 1)
    assert new is not None and new.folio is not old.folio
    (leaf,) = leaves_for(d, 1)
    assert S.spte_to_pfn(leaf.spte) == new.folio.head


def test_fault_between_count_and_begin_maps_the_old_page_then_the_walk_zaps_it() -> None:
    """MN_START_COUNTED: mn_active_invalidate_count is raised but nothing has begun, so a fault
    there passes every check and maps the old page; the notifier's slot walk then zaps it
    before the host PTEs change, and the next access faults in the new zero page."""
    d = Driver(VmConfig(), (SLOT0,))
    assert do(d, "host_write", "mm1", hva=1) is True
    old = d.vm.mm.lookup(HVA_BASE + 1)
    assert old is not None
    token = d.vm.pages.read(old.pfn)
    d.drain_events()

    d.start("access", "vcpu0", gfn=1, write=False, private=False)
    run_to_fault_point(d, "vcpu0", "FAULT_PFN_RESOLVED")
    d.start("dontneed", "mm0", hva=0, npages=4)
    run_until(d, "mm0", "MN_START_COUNTED")
    vm = d.vm
    assert vm.mn_active_invalidate_count == 1
    assert vm.mmu_invalidate_in_progress == 0 and vm.mmu_invalidate_seq == 0
    assert vm.mmu_lock.writer is None and not vm.mmu_lock.readers
    assert not vm.srcu.in_read_section(vm.sched.actor("mm0"))  # the slot walk has not started

    run_done(d, "vcpu0")
    assert last_result(d, "vcpu0", "access") == AccessResult("ok", token, 0)
    (leaf,) = leaves_for(d, 1)
    assert S.spte_to_pfn(leaf.spte) in (old.pfn, old.folio.head)
    events = d.drain_events()
    assert not any(e.startswith("fault.retry") for e in events)

    run_until(d, "mm0", "HOST_PTE_CHANGE")
    assert vm.mmu_invalidate_in_progress == 1
    assert not leaves_for(d, 1)  # zapped under mmu_lock before the PTEs change
    assert "mn.start.slot" in d.drain_events()
    run_done(d, "mm0")
    assert old.folio.freed
    assert access(d, 1).value == 0
    d.finish()


def test_notifier_trace_has_the_count_windows() -> None:
    """A notifier bracket stops after raising mn_active_invalidate_count (MN_START_COUNTED,
    before the slot walk) and after invalidate_end (MN_END_BEFORE_COUNT, before lowering it)."""
    d = Driver(VmConfig(), (SLOT0,))
    assert access(d, 1).outcome == "ok"
    vm = d.vm
    mm0 = vm.sched.actor("mm0")
    d.start("dontneed", "mm0", hva=0, npages=4)
    seen: dict[str, tuple[int, int, int]] = {}
    while True:
        t = d.run_actor("mm0")
        if t.reached in ("MN_START_COUNTED", "HOST_PTE_CHANGE", "MN_END_BEFORE_COUNT"):
            assert t.reached not in seen
            seen[t.reached] = (vm.mn_active_invalidate_count, vm.mmu_invalidate_in_progress,
                               vm.mmu_invalidate_seq)
            assert not vm.mmu_lock.held_by(mm0) and not vm.srcu.in_read_section(mm0)
            assert mm0.held == []
        if t.reached == "DONE":
            break
    reached = [x.reached for x in vm.sched.trace if x.actor == "mm0"]
    assert [p for p in reached if p in seen] == [
        "MN_START_COUNTED", "HOST_PTE_CHANGE", "MN_END_BEFORE_COUNT"]
    assert seen == {
        "MN_START_COUNTED": (1, 0, 0),  # counted, nothing begun
        "HOST_PTE_CHANGE": (1, 1, 0),  # begun
        "MN_END_BEFORE_COUNT": (1, 0, 1),  # ended (seq++), still counted
    }
    assert vm.mn_active_invalidate_count == 0
    assert not leaves_for(d, 1)
    d.finish()


def test_swap_sleeps_while_a_notifier_is_between_end_and_uncount() -> None:
    """At MN_END_BEFORE_COUNT the invalidation has ended but is still counted: a memslot swap
    must still wait, and the count's drop to 0 is what wakes it."""
    d = Driver(VmConfig(), (SLOT0,))
    d.start("dontneed", "mm0", hva=0, npages=4)
    run_until(d, "mm0", "MN_END_BEFORE_COUNT")
    assert d.vm.mmu_invalidate_in_progress == 0 and d.vm.mn_active_invalidate_count == 1
    d.start("memslot", "vmm0", **delete(0))
    run_until(d, "vmm0", "SWAP_WAIT_MN_ACTIVE")
    vmm0 = d.vm.sched.actor("vmm0")
    assert vmm0.sleeping and [a.name for a in d.runnable()] == ["mm0"]
    assert d.vm.memslots[0].search(1) is not None  # nothing published yet
    run_done(d, "mm0")
    assert d.vm.mn_active_invalidate_count == 0 and not vmm0.sleeping
    run_done(d, "vmm0")
    assert last_result(d, "vmm0", "memslot") == 0
    assert "swap.waited" in d.drain_events()
    assert d.vm.memslots[0].search(1) is None
    d.finish()


# -- the no-memslot notifier optimisation ---------------------------------------------------

def test_notifier_without_memslot_takes_no_mmu_lock() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    assert access(d, 1).outcome == "ok"
    d.drain_events()
    d.start("dontneed", "mm0", hva=100, npages=4)  # no slot maps hva 100..103
    run_until(d, "mm0", "HOST_PTE_CHANGE")
    vm = d.vm
    assert vm.mmu_lock.writer is None and not vm.mmu_lock.readers
    assert vm.mmu_invalidate_in_progress == 0
    assert vm.mn_active_invalidate_count == 1  # counted even without a slot
    assert vm.mmu_invalidate_seq == 0
    run_done(d, "mm0")
    assert vm.mmu_invalidate_in_progress == 0 and vm.mmu_invalidate_seq == 0
    assert vm.mn_active_invalidate_count == 0
    assert "MMU_LOCK_WRITE" not in [t.reached for t in vm.sched.trace if t.actor == "mm0"]
    events = d.drain_events()
    assert "mn.start.noslot" in events and "mn.start.slot" not in events
    assert leaves_for(d, 1)  # the slot's mapping was not touched
    d.finish()


@pytest.mark.parametrize(("hva", "blocks"), [(100, False), (0, True)], ids=["noslot", "slot"])
def test_notifier_needs_mmu_lock_only_for_a_slot(hva: int, blocks: bool) -> None:
    """An uncontended mmu_lock leaves no trace, so make it contended: vcpu0 holds it for read
    in the middle of a fault. A notifier over no slot runs to its end regardless; one over a
    slot blocks at MMU_LOCK_WRITE until the fault drops the lock."""
    d = Driver(VmConfig(), (SLOT0,))
    vm = d.vm
    vcpu0 = vm.sched.actor("vcpu0")
    d.start("access", "vcpu0", gfn=9, write=False, private=False)
    run_to_fault_point(d, "vcpu0", "TDP_MAP_STEP_DOWN")
    assert vm.mmu_lock.readers == [vcpu0]
    d.start("dontneed", "mm0", hva=hva, npages=4)
    mm0 = vm.sched.actor("mm0")
    for _ in range(50):
        t = d.run_actor("mm0")
        if t.reached in ("DONE", "MMU_LOCK_WRITE"):
            break
    assert t.reached == ("MMU_LOCK_WRITE" if blocks else "DONE")
    if blocks:
        assert not Scheduler.is_runnable(mm0) and vm.sched.contended(vm.mmu_lock)
        assert vm.mn_active_invalidate_count == 1 and vm.mmu_invalidate_in_progress == 0
        run_done(d, "vcpu0")  # drops mmu_lock
        assert Scheduler.is_runnable(mm0)
        run_done(d, "mm0")
        assert "mn.start.slot" in d.drain_events()
    else:
        assert vm.mmu_lock.readers == [vcpu0]  # never waited for it
        assert vm.mmu_invalidate_seq == 0 and vm.mn_active_invalidate_count == 0
        assert "mn.start.noslot" in d.drain_events()
    d.finish()


# -- memslot updates ------------------------------------------------------------------------

def test_delete_swap_waits_for_the_running_invalidation() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    d.start("dontneed", "mm0", hva=0, npages=4)
    run_until(d, "mm0", "HOST_PTE_CHANGE")  # range_start returned, range_end not run
    assert d.vm.mn_active_invalidate_count == 1
    d.start("memslot", "vmm0", **delete(0))
    run_until(d, "vmm0", "SWAP_WAIT_MN_ACTIVE")
    vmm0 = d.vm.sched.actor("vmm0")
    assert vmm0.sleeping and d.vm.mn_memslots_update_rcuwait.task is vmm0
    assert [a.name for a in d.runnable()] == ["mm0"]
    assert d.vm.memslots[0].search(1) is not None  # nothing published yet
    assert d.vm.sched.actor("vmm0").held == ["slots_lock", "slots_arch_lock"]

    t = d.run_actor("mm0")  # invalidate_range_end(): takes mmu_lock, end
    while t.reached != "DONE":
        assert "vmm0" not in [a.name for a in d.runnable()]
        t = d.run_actor("mm0")
    assert d.vm.mn_active_invalidate_count == 0 and not vmm0.sleeping
    assert [a.name for a in d.runnable()] == ["vmm0"]
    run_done(d, "vmm0")
    assert last_result(d, "vmm0", "memslot") == 0
    events = d.drain_events()
    assert "swap.waited" in events and "memslot.DELETE.quiet" in events
    assert d.vm.ghost.swap_waited == 1
    assert d.vm.memslots[0].search(1) is None
    d.finish()


def test_a_swap_without_pending_invalidation_does_not_wait() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    do(d, "memslot", "vmm0", **delete(0))
    assert "swap.waited" not in d.drain_events()
    assert "SWAP_WAIT_MN_ACTIVE" not in [t.reached for t in d.vm.sched.trace]


def generations(d: Driver, actor: str) -> list[tuple[str, int]]:
    """The active set's generation before ``actor`` runs ("START") and after each of its
    steps, with the point reached, until it is done."""
    gens = [("START", d.vm.memslots[0].generation)]
    while True:
        t = d.run_actor(actor)
        gens.append((t.reached, d.vm.memslots[0].generation))
        if t.reached == "DONE":
            return gens


def test_generation_advances_by_one_per_swap_and_flags_the_update() -> None:
    d = Driver(VmConfig(nr_as=1))
    assert d.vm.memslots[0].generation == 0
    d.start("memslot", "vmm0", slot=0, as_id=0, flags=0, gfn=0, npages=16, hva=0, gmem_offset=-1)
    steps = generations(d, "vmm0")
    gens = [g for _, g in steps]
    flag = KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
    assert gens[-1] == 1
    # published with the in-progress bit, before synchronize_srcu
    assert [g for p, g in steps if p == "SYNCHRONIZE_SRCU"] == [flag | 0]
    assert [g for g in dict.fromkeys(gens)] == [0, flag, 1]
    # DELETE: two swaps (INVALID copy, then the removal): 1 -> 2 -> 3. Between the swaps
    # (generation 2, no flag) the uncontended locks give no stop: the second swap's flagged
    # generation, 2 | flag, shows the first one advanced by exactly one.
    d.start("memslot", "vmm0", **delete(0))
    steps = generations(d, "vmm0")
    gens = [g for _, g in steps]
    assert [g for p, g in steps if p == "SYNCHRONIZE_SRCU"] == [flag | 1, flag | 2]
    assert [g for g in dict.fromkeys(gens)] == [1, flag | 1, flag | 2, 3]
    assert d.vm.ghost.swaps == 3


def test_in_progress_bit_is_seen_between_publish_and_completion() -> None:
    d = Driver(VmConfig(nr_as=1), (SLOT0,))
    gen0 = d.vm.memslots[0].generation
    d.start("memslot", "vmm0", slot=1, as_id=0, flags=0, gfn=32, npages=4, hva=32,
            gmem_offset=-1)
    run_until(d, "vmm0", "SYNCHRONIZE_SRCU")
    active = d.vm.memslots[0]
    assert active.generation == gen0 | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
    assert active.search(33) is not None  # already published
    run_done(d, "vmm0")
    assert d.vm.memslots[0].generation == gen0 + 1


STALE_TLB = (
    "model problem: invariants I1/I2/I5/I7/I10 check every TLB entry, including those tagged "
    "with a root that kvm_mmu_zap_all_fast() invalidated while the vCPU has "
    "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS pending; the vCPU drops that root before it can use them "
    "(invariants/mapping.py:149 raises DeadSlotMapped here)")


@pytest.mark.parametrize("zap_all", [
    pytest.param(True, id="zap-all-quirk"),
    pytest.param(False, id="zap-memslot"),
])
def test_delete_leaves_no_spte_and_later_accesses_are_mmio(zap_all: bool) -> None:
    d = Driver(VmConfig(slot_zap_all=zap_all),
               (SLOT0, SlotSpec(slot=1, base_gfn=32, npages=4, hva_offset=32)))
    assert access(d, 1, write=True).outcome == "ok"
    assert access(d, 6).outcome == "ok"
    assert access(d, 33).outcome == "ok"
    assert leaves_for(d, 1) and leaves_for(d, 6)
    d.drain_events()
    assert do(d, "memslot", "vmm0", **delete(0)) == 0
    assert ("zap_all_fast" in d.drain_events()) is zap_all
    assert not [lf for lf in present_leaves(d.vm) if lf.gfn < 16]
    # without the quirk, only the deleted slot's SPTEs go
    assert bool(leaves_for(d, 33)) is not zap_all
    assert access(d, 1).outcome == "mmio"
    assert access(d, 6, write=True, vcpu="vcpu1").outcome == "mmio"
    assert "spte.install.mmio" in d.drain_events()
    assert not leaves_for(d, 1)  # an MMIO SPTE is not a present leaf
    assert access(d, 33).outcome == "ok"
    d.finish()


def test_delete_with_the_zap_all_quirk_unchecked() -> None:
    """The behaviour of the xfail above, with the invariant checks off."""
    d = Driver(VmConfig(slot_zap_all=True), (SLOT0,), check=False)
    assert access(d, 1, write=True).outcome == "ok"
    root = d.vm.vcpus[0].root
    assert root is not None
    d.drain_events()
    assert do(d, "memslot", "vmm0", **delete(0)) == 0
    assert "zap_all_fast" in d.drain_events()
    assert root.role_invalid
    assert "MMU_FREE_OBSOLETE_ROOTS" in d.vm.vcpus[0].requests
    assert not present_leaves(d.vm)
    assert access(d, 1).outcome == "mmio"
    assert d.vm.vcpus[0].root is not root
    assert "MMU_FREE_OBSOLETE_ROOTS" not in d.vm.vcpus[0].requests


def test_mmio_generation_wrap_then_dontneed() -> None:
    """A memslot CREATE that wraps the (1-bit) MMIO generation zaps all roots; a later DONTNEED
    of a range the idle vCPU had cached must not be a finding."""
    d = Driver(VmConfig(mmio_gen_bits=1, nr_as=1), (SLOT0,))
    assert access(d, 1).outcome == "ok"
    do(d, "memslot", "vmm0", slot=1, as_id=0, flags=0, gfn=32, npages=4, hva=32,
       gmem_offset=-1)
    assert "mmio_gen.wrap" in d.drain_events()
    d.start("dontneed", "mm0", hva=0, npages=4)
    d.finish()
    assert access(d, 1).value == 0


def test_readonly_slot_write_is_mmio_and_read_succeeds() -> None:
    d = Driver(VmConfig(), (SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=0, flags=2),))
    assert do(d, "host_write", "mm0", hva=5) is True
    token = d.vm.pages.read(d.vm.mm.lookup(HVA_BASE + 5).pfn)  # type: ignore[union-attr]
    write = access(d, 5, write=True)
    assert write.outcome == "mmio" and write.value is None
    assert "fault.emulate.ro_slot" in d.drain_events()
    read = access(d, 5)
    assert read == AccessResult("ok", token, 0)
    (leaf,) = leaves_for(d, 5)
    assert not S.is_writable_pte(leaf.spte)
    # a write after the read-only mapping exists still ends as MMIO, memory unchanged
    assert access(d, 5, write=True).outcome == "mmio"
    assert access(d, 5).value == token
    d.finish()


def test_mprotect_read_only_then_guest_write_is_efault() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    first = access(d, 2, write=True)
    assert first.outcome == "ok"
    d.drain_events()
    do(d, "mprotect", "mm0", hva=0, npages=16, writable=False)
    assert not leaves_for(d, 2)  # mprotect's notifier zapped the writable mapping
    result = access(d, 2, write=True)
    assert result.outcome == "efault" and result.value is None
    events = d.drain_events()
    assert "fault.exit.efault" in events
    read = access(d, 2)
    assert read.outcome == "ok" and read.value == first.value
    (leaf,) = leaves_for(d, 2)
    assert not S.is_writable_pte(leaf.spte)
    do(d, "mprotect", "mm0", hva=0, npages=16, writable=True)
    assert access(d, 2, write=True).outcome == "ok"
    d.finish()


# -- huge pages -----------------------------------------------------------------------------

@pytest.mark.parametrize("thp", [True, False], ids=["thp", "no-thp"])
def test_fault_level_follows_the_host_mapping(thp: bool) -> None:
    d = Driver(VmConfig(thp=thp), (SLOT0,))
    assert access(d, 5).outcome == "ok"
    events = d.drain_events()
    installs = [e for e in events if e.startswith("spte.install")]
    assert installs == (["spte.install.L2"] if thp else ["spte.install.L1"])
    (leaf,) = leaves_for(d, 5)
    assert leaf.level == (2 if thp else 1)
    assert leaf.gfn == (4 if thp else 5)
    if thp:
        # the neighbours in the same 2M frame need no fault
        assert access(d, 7).outcome == "ok"
        assert not any(e.startswith("spte.install") for e in d.drain_events())


def test_misaligned_slot_gets_no_huge_mapping() -> None:
    d = Driver(VmConfig(thp=True), (SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=1),))
    assert access(d, 5).outcome == "ok"
    assert "spte.install.L1" in d.drain_events()
    assert all(lf.level == 1 for lf in present_leaves(d.vm))


def test_dirty_logging_slot_maps_4k_only() -> None:
    d = Driver(VmConfig(thp=True), (SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=0,
                                             flags=1),))
    assert access(d, 5).outcome == "ok"
    assert "spte.install.L1" in d.drain_events()


# -- private memory -------------------------------------------------------------------------

GMEM_SLOT = SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=0, gmem_offset=0)


def test_shared_access_to_private_gfn_is_a_memory_fault() -> None:
    d = Driver(VmConfig(private_mem=True), (GMEM_SLOT,))
    assert do(d, "set_attributes", "vmm0", start=0, end=4, private=True) == 0
    assert "attr.to_private.slot" in d.drain_events()
    assert d.vm.kvm_mem_is_private(1) and not d.vm.kvm_mem_is_private(4)
    shared = access(d, 1, private=False)
    assert shared.outcome == "memory_fault" and shared.value is None
    assert "fault.exit.memory_fault" in d.drain_events()
    assert not leaves_for(d, 1)
    private = access(d, 1, private=True)
    assert private == AccessResult("ok", 0, 0)
    (leaf,) = leaves_for(d, 1)
    assert leaf.level == 1 and leaf.source is not None and leaf.source.kind == "gmem"
    # the shared gfn next door is unaffected
    assert access(d, 4, private=False).outcome == "ok"
    # a private access to a shared gfn is a memory fault too
    assert access(d, 8, private=True).outcome == "memory_fault"
    d.finish()


def test_private_access_without_guest_memfd_is_a_memory_fault() -> None:
    d = Driver(VmConfig(private_mem=True), (SLOT0,))
    do(d, "set_attributes", "vmm0", start=0, end=4, private=True)
    assert access(d, 1, private=True).outcome == "memory_fault"


def test_punch_hole_zaps_the_private_mapping() -> None:
    d = Driver(VmConfig(private_mem=True), (GMEM_SLOT,))
    do(d, "set_attributes", "vmm0", start=0, end=4, private=True)
    written = access(d, 2, write=True, private=True)
    assert written.outcome == "ok" and written.value
    assert access(d, 2, private=True).value == written.value
    f = d.vm.gmem_files[0]
    folio = f.folios[2]
    assert leaves_for(d, 2)
    d.drain_events()
    assert do(d, "punch_hole", "vmm0", start=0, end=4) == 0
    assert "gmem.punch.slot" in d.drain_events()
    assert not leaves_for(d, 2)
    assert 2 not in f.folios and folio.freed
    assert d.vm.mmu_invalidate_in_progress == 0 and d.vm.mmu_invalidate_seq == 2
    again = access(d, 2, private=True)
    assert again.outcome == "ok" and again.value == 0
    assert f.folios[2] is not folio
    d.finish()


def test_punch_hole_races_a_private_fault() -> None:
    d = Driver(VmConfig(private_mem=True), (GMEM_SLOT,))
    do(d, "set_attributes", "vmm0", start=0, end=4, private=True)
    access(d, 3, write=True, private=True)
    do(d, "punch_hole", "vmm0", start=0, end=4)
    d.start("access", "vcpu0", gfn=3, write=False, private=True)
    fault = run_to_fault_point(d, "vcpu0", "FAULT_PFN_RESOLVED")
    folio = fault.refcounted_page
    assert folio is not None
    d.start("punch_hole", "vmm0", start=0, end=4)
    run_until(d, "vmm0", "GMEM_TRUNCATE")
    d.run_actor("vcpu0")  # precheck 2 sees the invalidation in progress
    assert fault.why.startswith("unsafe-precheck") or fault.why == "in-progress"
    d.finish()
    assert last_result(d, "vcpu0", "access") == AccessResult("ok", 0, 1)
    assert folio.freed


# -- dirty logging --------------------------------------------------------------------------

def test_get_dirty_log_reports_the_written_gfn_and_write_protects_it() -> None:
    d = Driver(VmConfig(), (SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=0, flags=1),))
    slot = d.vm.memslots[0].slots[0]
    assert slot.dirty_bitmap == [0]
    assert access(d, 5, write=True).outcome == "ok"
    assert dirty_bit(slot, 5) and not dirty_bit(slot, 4)
    (leaf,) = leaves_for(d, 5)
    assert S.is_writable_pte(leaf.spte)
    d.drain_events()

    bitmap = do(d, "get_dirty_log", "vmm0", slot=0)
    assert bitmap == [1 << 5]
    assert "dirty_log.get.nonempty" in d.drain_events()
    assert not dirty_bit(slot, 5)
    (leaf,) = leaves_for(d, 5)
    assert not S.is_writable_pte(leaf.spte) and leaf.level == 1
    assert all(not S.is_writable_pte(lf.spte) for lf in present_leaves(d.vm) if lf.gfn < 16)

    # the next write faults again and is logged again
    assert access(d, 5, write=True).outcome == "ok"
    assert dirty_bit(slot, 5)
    assert do(d, "get_dirty_log", "vmm0", slot=0) == [1 << 5]
    assert do(d, "get_dirty_log", "vmm0", slot=0) == [0]
    assert "dirty_log.get.empty" in d.drain_events()
    d.finish()


def test_read_fault_that_maps_writable_marks_the_page_dirty() -> None:
    """make_spte(): a read fault on a writable host page installs a writable SPTE, and a
    writable SPTE in a logged slot is marked dirty (as the kernel does)."""
    d = Driver(VmConfig(), (SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=0, flags=1),))
    slot = d.vm.memslots[0].slots[0]
    assert access(d, 3).outcome == "ok"
    (leaf,) = leaves_for(d, 3)
    assert S.is_writable_pte(leaf.spte) and dirty_bit(slot, 3)
    assert do(d, "get_dirty_log", "vmm0", slot=0) == [1 << 3]
    # now write-protected: a read does not fault or dirty, a write faults and dirties
    assert access(d, 3).outcome == "ok" and not dirty_bit(slot, 3)
    assert access(d, 3, write=True).outcome == "ok" and dirty_bit(slot, 3)


def test_get_dirty_log_of_a_slot_without_logging_is_enoent() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    assert do(d, "get_dirty_log", "vmm0", slot=0) == -2
    assert do(d, "get_dirty_log", "vmm0", slot=5) == -2
