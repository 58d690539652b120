"""The lockless fast page fault (kvmfuzz/x86/fast_pf.py; reference §2.4)."""

from __future__ import annotations

import pytest
from x86_helpers import SLOT0, access, do, points, run_until, set_logging, spte_of

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import Driver
from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.points import Point
from kvmfuzz.virt.dirty import dirty_bit
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.fast_pf import page_fault_can_be_fast
from kvmfuzz.x86.fault import PageFault


def logging_wrprot(eager_split: bool = True) -> Driver:
    """vcpu0 writes gfn 5 (a 2M leaf), then slot 0 starts dirty logging: W cleared, MMU-W kept."""
    d = Driver(VmConfig(eager_split=eager_split), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    assert set_logging(d, "vmm0", SLOT0, True) == 0
    spte = spte_of(d, 5)
    m = d.vm.arch.masks
    assert not S.is_writable_pte(spte) and S.is_mmu_writable_spte(m, spte)
    return d


@pytest.mark.parametrize(("rsvd", "private", "present", "write", "ad", "fast"), [
    (True, False, True, True, True, False),     # MMIO: never
    (False, True, True, True, True, False),     # private/shared mismatch: never
    (False, False, False, True, True, False),   # not present with A/D bits: slow path
    (False, False, False, False, False, True),  # not present without A/D: maybe tracked
    (False, False, True, False, True, False),   # present read: nothing to fix
    (False, False, True, True, True, True),     # present write: maybe write-protected
])
def test_page_fault_can_be_fast(rsvd: bool, private: bool, present: bool, write: bool,
                                ad: bool, fast: bool) -> None:
    d = Driver(VmConfig(ad_bits=ad, private_mem=True), ())
    fault = PageFault(5, write, False, present, rsvd, private)
    assert page_fault_can_be_fast(d.vm, fault) is fast


def test_write_after_logging_enable_is_fixed_locklessly() -> None:
    d = logging_wrprot()
    before = len(d.steps)
    assert access(d, "vcpu0", 5, write=True).outcome == "ok"
    reached = [s.reached for s in d.steps[before:] if s.do == "run"]
    assert "FAST_PF_CMPXCHG" in reached and "FAST_PF_MARK_DIRTY" in reached
    assert "FAULT_TOPUP_CACHES" not in reached  # no slow path
    spte = spte_of(d, 5)
    assert S.is_writable_pte(spte) and not S.is_large_pte(spte)
    assert dirty_bit(d.vm.memslots[0].slots[0], 5)


def test_fast_pf_refuses_huge_leaf_in_logged_slot() -> None:
    d = logging_wrprot(eager_split=False)
    spte, level, _, _ = d.vm.vcpus[0].walk_leaf(5)
    assert level == 2 and not S.is_writable_pte(spte)
    before = len(d.steps)
    access(d, "vcpu0", 5, write=True)
    reached = [s.reached for s in d.steps[before:] if s.do == "run"]
    assert "FAULT_TOPUP_CACHES" in reached and "FAST_PF_CMPXCHG" not in reached
    spte, level, _, _ = d.vm.vcpus[0].walk_leaf(5)
    assert level == 1 and S.is_writable_pte(spte)  # the slow path split it and mapped 4K


def test_fast_pf_restores_access_tracked_spte() -> None:
    d = Driver(VmConfig(ad_bits=False), (SLOT0,))
    access(d, "vcpu0", 5)
    do(d, "clear_young", "mm0", hva=4, npages=4)
    m = d.vm.arch.masks
    tracked = spte_of(d, 5)
    assert S.is_access_track_spte(m, tracked)
    access(d, "vcpu1", 5)  # vcpu0's TLB still has gfn 5 (aging does not flush)
    restored = spte_of(d, 5)
    assert restored == S.restore_acc_track_spte(m, tracked) | m.accessed_mask
    assert not S.is_writable_pte(restored)  # a read does not restore W
    access(d, "vcpu1", 6, write=True)  # a present write fault: W back (MMU-writable)
    assert S.is_writable_pte(spte_of(d, 6))
    assert "FAST_PF_CMPXCHG" in points(d, "vcpu1")


def test_lost_cmpxchg_rereads_and_finds_the_fault_fixed() -> None:
    d = logging_wrprot()
    d.start("access", "vcpu1", gfn=5, write=True, private=False)
    run_until(d, "vcpu1", Point.FAST_PF_CMPXCHG)
    access(d, "vcpu0", 5, write=True)  # vcpu0 fixes it first
    events: list[str] = []
    while d.vm.sched.actor("vcpu1").busy:
        d.run_actor("vcpu1")
        events += d.drain_events()
    assert "fast_pf.cmpxchg_lost" in events
    assert d.results[-1][2].outcome == "ok"


def test_gives_up_after_four_lost_cmpxchgs() -> None:
    d = logging_wrprot()
    d.start("access", "vcpu1", gfn=5, write=True, private=False)
    _, _, sp, idx = d.vm.vcpus[0].walk_leaf(5)
    assert sp is not None
    events: list[str] = []
    for _ in range(5):
        run_until(d, "vcpu1", Point.FAST_PF_CMPXCHG)
        sp.spt[idx] ^= d.vm.arch.masks.accessed_mask  # the CPU's A/D assist, again and again
        events += d.drain_events()
    while d.vm.sched.actor("vcpu1").busy:
        d.run_actor("vcpu1")
        events += d.drain_events()
    assert events.count("fast_pf.cmpxchg_lost") == 5 and "fast_pf.gave_up" in events
    assert "FAULT_TOPUP_CACHES" in points(d, "vcpu1")  # the slow path fixed it
    assert S.is_writable_pte(spte_of(d, 5, vcpu=1))


def fast_pf_racing_dontneed(bug: str | None) -> Driver:
    """A/D bits off: gfn 5 tracked; vcpu1's fast page fault reads it; mm0's DONTNEED of the frame
    zaps it and stops before changing the host page tables; vcpu1 then does its cmpxchg."""
    d = Driver(VmConfig(ad_bits=False, bug=bug), (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    do(d, "clear_young", "mm0", hva=4, npages=4)
    d.start("access", "vcpu1", gfn=5, write=True, private=False)
    run_until(d, "vcpu1", Point.FAST_PF_CMPXCHG)
    d.start("dontneed", "mm0", hva=4, npages=4)
    run_until(d, "mm0", Point.HOST_PTE_CHANGE)
    assert not S.is_shadow_present_pte(spte_of(d, 5))
    return d


def test_fast_pf_losing_to_a_zap_takes_the_slow_path() -> None:
    d = fast_pf_racing_dontneed(None)
    d.run_actor("vcpu1")  # the cmpxchg fails, the re-read finds nothing: slow path
    assert not S.is_shadow_present_pte(spte_of(d, 5))
    d.finish()
    assert [r.outcome for a, op, r in d.results if a == "vcpu1"] == ["ok"]
    assert S.is_writable_pte(spte_of(d, 5, vcpu=1))  # mapped again, to the new page


def test_planted_fast_pf_without_cmpxchg_resurrects_a_zapped_spte() -> None:
    d = fast_pf_racing_dontneed("fast_pf_without_cmpxchg")
    with pytest.raises(ProtocolViolation) as info:
        d.run_actor("vcpu1")
    assert info.value.title == "I1-no-mapping-in-closed-range"


def test_harvest_between_cmpxchg_and_mark_is_reported_next_time() -> None:
    """The legitimate window: a GET between the fast PF's cmpxchg and its mark misses the page,
    the next GET reports it (no invariant fires in between)."""
    d = logging_wrprot()
    slot = d.vm.memslots[0].slots[0]
    d.start("access", "vcpu0", gfn=5, write=True, private=False)
    run_until(d, "vcpu0", Point.FAST_PF_MARK_DIRTY)
    assert S.is_writable_pte(spte_of(d, 5)) and not dirty_bit(slot, 5)
    access(d, "vcpu1", 5, write=True)  # writes through the new W SPTE
    first = do(d, "get_dirty_log", "vmm0", slot=0)
    assert not first[0] & (1 << 5)
    while d.vm.sched.actor("vcpu0").busy:
        d.run_actor("vcpu0")
    assert dirty_bit(slot, 5)
    second = do(d, "get_dirty_log", "vmm0", slot=0)
    assert second[0] & (1 << 5)
