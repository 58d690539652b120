"""Lockless aging, kvm_zap_gfn_range, and huge-page recovery racing invalidations
(kvmfuzz/x86/aging.py, mmu.py, huge.py; reference §2.6 aging, §2.13, §2.15)."""

from __future__ import annotations

import pytest
from x86_helpers import SLOT0, access, do, level_of, run_until, set_logging, spte_of

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.points import Point
from kvmfuzz.x86 import spte as S


def test_clear_young_and_test_young_with_ad_bits() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    access(d, "vcpu0", 5)
    m = d.vm.arch.masks
    assert S.is_accessed_spte(m, spte_of(d, 5))
    assert do(d, "test_young", "mm0", hva=4, npages=4) is True
    assert S.is_accessed_spte(m, spte_of(d, 5))  # test_young changes nothing
    assert do(d, "clear_young", "mm0", hva=4, npages=4) is True
    assert not S.is_accessed_spte(m, spte_of(d, 5))
    assert do(d, "test_young", "mm0", hva=4, npages=4) is False
    assert d.vm.vcpus[0].tlb.entries  # no flush (x86 elides it)


def test_aging_racing_a_zap_does_not_resurrect() -> None:
    """A/D bits off: aging reads an accessed leaf, a DONTNEED zaps it, aging's cmpxchg fails."""
    d = Driver(VmConfig(ad_bits=False), (SLOT0,))
    access(d, "vcpu0", 5)
    d.start("clear_young", "mm1", hva=4, npages=4)
    run_until(d, "mm1", Point.AGE_SPTE)
    do(d, "dontneed", "mm0", hva=4, npages=4)
    events: list[str] = []
    while d.vm.sched.actor("mm1").busy:
        d.run_actor("mm1")
        events += d.drain_events()
    assert "spte.age.lost" in events
    assert not S.is_shadow_present_pte(spte_of(d, 5))


def test_zap_gfn_range_opens_a_window_and_flushes_huge_translations() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    assert d.vm.vcpus[0].tlb.lookup(d.vm.vcpus[0].root.id, 6) is None  # type: ignore[union-attr]
    access(d, "vcpu0", 6)
    seq = d.vm.mmu_invalidate_seq
    do(d, "zap_gfn_range", "vmm1", start=4, end=5)  # part of the 2M frame [4, 8)
    assert d.vm.mmu_invalidate_seq == seq + 1 and d.vm.mmu_invalidate_in_progress == 0
    assert not S.is_shadow_present_pte(spte_of(d, 5))
    assert not d.vm.vcpus[0].tlb.entries  # the range flush dropped the whole huge translation


def test_zap_gfn_range_yields_and_faults_retry_in_its_window() -> None:
    """vcpu1 holds mmu_lock (R) mid-walk; zap_gfn_range and a notifier wait for it (W). Once
    vcpu1 is done, the zap runs and, the notifier still waiting, yields inside its window: a
    fault taken there must retry (mmu_invalidate_in_progress covers its gfn)."""
    d = Driver(VmConfig(nr_vcpus=2), (SlotSpec(0, 0, 32, 0),))
    for gfn in (1, 5, 13):
        access(d, "vcpu0", gfn)
    d.start("access", "vcpu1", gfn=0x14, write=False, private=False)
    run_until(d, "vcpu1", Point.TDP_MAP_STEP_DOWN)  # links a table: holds mmu_lock for read
    d.start("zap_gfn_range", "vmm0", start=0, end=16)
    d.start("dontneed", "mm0", hva=0x1c, npages=1)
    for actor in ("vmm0", "mm0", "mm0"):
        if d.vm.sched.is_runnable(d.vm.sched.actor(actor)):
            d.run_actor(actor)
    assert not any(d.vm.sched.is_runnable(d.vm.sched.actor(a)) for a in ("vmm0", "mm0"))
    while d.vm.sched.actor("vcpu1").busy:
        d.run_actor("vcpu1")
    run_until(d, "vmm0", Point.TDP_MMU_YIELD)  # zapped some leaves, yields to mm0
    assert d.vm.mmu_invalidate_in_progress == 1
    events: list[str] = []
    d.start("access", "vcpu0", gfn=9, write=False, private=False)
    while d.vm.sched.actor("vcpu0").pending is None or \
            d.vm.sched.actor("vcpu0").pending.point is not Point.VCPU_REENTER:  # type: ignore[union-attr]
        d.run_actor("vcpu0")
        events += d.drain_events()
    assert "fault.ret.RETRY" in events  # (the unsafe pre-check already sees the window)
    d.finish()
    assert d.vm.mmu_invalidate_in_progress == 0


def recovery_racing_dontneed(bug: str | None) -> Driver:
    """Slot 0 logs dirty pages with gfn [4, 8) split to 4K leaves (THP host); logging is turned
    off and recovery stops just before building the 2M leaf, holding mmu_lock for read;
    mm0's DONTNEED of the frame starts and waits for mmu_lock."""
    d = Driver(VmConfig(bug=bug), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    set_logging(d, "vmm0", SLOT0, True)
    assert level_of(d, 5) == 1
    d.start("memslot", "vmm0", slot=0, as_id=0, flags=0, gfn=0, npages=16, hva=0, gmem_offset=-1)
    run_until(d, "vmm0", Point.TDP_RECOVER_HUGE)
    d.start("dontneed", "mm0", hva=4, npages=4)
    while d.vm.sched.is_runnable(d.vm.sched.actor("mm0")):
        d.run_actor("mm0")
    assert d.vm.sched.contended(d.vm.mmu_lock)
    return d


def test_recovery_yields_to_an_invalidation_and_rechecks() -> None:
    d = recovery_racing_dontneed(None)
    d.run_actor("vmm0")  # -EAGAIN before building: yield
    d.run_actor("mm0")  # zaps the 4K leaves, returns from invalidate_range_start
    d.finish()
    assert not S.is_shadow_present_pte(spte_of(d, 5))  # nothing recovered from stale leaves


def test_planted_recovery_ignores_invalidation_is_caught() -> None:
    d = recovery_racing_dontneed("recovery_ignores_invalidation")
    d.run_actor("vmm0")  # builds the huge SPTE, then drops mmu_lock
    d.run_actor("mm0")  # zaps the 4K leaves
    with pytest.raises(ProtocolViolation) as info:
        d.run_actor("vmm0")  # installs what it built before the zap
    assert info.value.title == "I1-no-mapping-in-closed-range"


def test_recovery_without_contention_recovers() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    set_logging(d, "vmm0", SLOT0, True)
    access(d, "vcpu1", 6, write=True)
    assert set_logging(d, "vmm0", SLOT0, False) == 0
    spte, level, _, _ = d.vm.vcpus[1].walk_leaf(6)
    # permissions come from the first present child (gfn 4, write-protected by the enable)
    assert level == 2 and S.is_mmu_writable_spte(d.vm.arch.masks, spte)
    assert not d.vm.vcpus[1].tlb.entries  # recovery flushed the slot
