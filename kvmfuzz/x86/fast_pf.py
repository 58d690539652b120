"""The lockless fast page fault (arch/x86/kvm/mmu/mmu.c ``fast_page_fault``; reference §2.4).

``page_fault_can_be_fast`` decides eligibility (never RSVD; never a private/shared mismatch in a
VM with private memory; a not-present fault only when KVM runs without A/D bits, i.e. the SPTE
may be access-tracked; a present fault only for writes). Then, inside an RCU read-side section
and without mmu_lock, it reads the last SPTE on the walk to the gfn
(``kvm_tdp_mmu_fast_pf_get_last_sptep``) and, if it is a present leaf that does not already
allow the access, builds the fixed SPTE: restore an access-tracked SPTE (saved R/X back, set A),
and for a write to an MMU-writable SPTE set W -- unless the leaf is huge and the slot is dirty
tracked (the slow path then maps 4K). ``fast_pf_fix_direct_spte`` installs it with cmpxchg and
only then marks the gfn dirty; a lost cmpxchg re-reads the SPTE, up to 4 retries.

Preemption points: after the SPTE was read and the new value decided, before the cmpxchg
(``FAST_PF_CMPXCHG``: zaps, aging, write-protection and other faults race here), and between a
cmpxchg that set W and ``mark_page_dirty_in_slot`` (``FAST_PF_MARK_DIRTY``: the legitimate window
in which a harvest can miss the page; ghost ``pending_marks``).

Planted ``fast_pf_without_cmpxchg``: the fixed SPTE is stored with a plain write, so a change made
since the read (a zap) is overwritten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import TdpIter, kvm_tdp_mmu_fast_pf_get_last_sptep

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm
    from kvmfuzz.x86.fault import PageFault
    from kvmfuzz.x86.vcpu import Vcpu

FAST_PF_MAX_RETRIES = 4  # "Fast #PF retrying more than 4 times."


def page_fault_can_be_fast(vm: Vm, fault: PageFault) -> bool:
    """page_fault_can_be_fast()."""
    if fault.rsvd:
        return False
    if vm.config.private_mem and fault.is_private != vm.kvm_mem_is_private(fault.gfn):
        return False
    if not fault.present:
        return not vm.arch.masks.ad_enabled  # !kvm_ad_enabled: maybe an access-tracked SPTE
    return fault.write


def fast_pf_fix_direct_spte(vm: Vm, fault: PageFault, it: TdpIter, old: int, new: int) -> bool:
    """fast_pf_fix_direct_spte(): cmpxchg the SPTE (no handle_changed_spte, no flush)."""
    sp, idx = it.sp, it.idx
    if vm.bug("fast_pf_without_cmpxchg"):
        sp.spt[idx] = new  # planted: a plain store, whatever happened since the read
    elif sp.spt[idx] != old:
        vm.ghost.event("fast_pf.cmpxchg_lost")
        return False
    else:
        sp.spt[idx] = new
    # unreachable(false): ghost: every present leaf records its Source (a fault always resolves one; split and
    #   huge-page recovery copy it), so fault.source is set
    if fault.source is not None:
        sp.src[idx] = fault.source  # ghost: unchanged by a successful cmpxchg
    return True


def fast_page_fault(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault) -> Op[int]:
    """fast_page_fault(): fix a write-protected or access-tracked leaf without mmu_lock."""
    from kvmfuzz.x86.fault import RET_PF_FIXED, RET_PF_INVALID, RET_PF_SPURIOUS
    if not page_fault_can_be_fast(vm, fault):
        return RET_PF_INVALID
    m = vm.arch.masks
    root = vcpu.root
    assert root is not None
    ret = RET_PF_INVALID
    rcu = vm.arch.rcu
    rcu.read_lock(actor)  # walk_shadow_page_lockless_begin()
    fault.stage = "fast"
    retry_count = 0
    while True:
        it = kvm_tdp_mmu_fast_pf_get_last_sptep(vm, root, fault.gfn)
        # unreachable(true): for_each_tdp_pte() always yields at least the root's entry for the gfn
        if it is None:
            break
        spte = it.old_spte
        if not S.is_shadow_present_pte(spte) or not S.is_last_spte(spte, it.level):
            break
        if S.is_access_allowed(m, spte, write=fault.write, exec=fault.exec):
            ret = RET_PF_SPURIOUS
            fault.why = "fast-spurious"
            break
        new = spte
        if not m.ad_enabled and S.is_access_track_spte(m, spte):
            new = S.restore_acc_track_spte(m, new) | m.accessed_mask
        if fault.write and S.is_mmu_writable_spte(m, spte):
            new |= S.PT_WRITABLE_MASK
            if it.level > S.PG_LEVEL_4K and fault.slot is not None and fault.slot.logging:
                fault.why = "fast-huge-logged"
                break  # the slow path maps 4K
        if new == spte or not S.is_access_allowed(m, new, write=fault.write, exec=fault.exec):
            break
        fault.source = it.sp.src.get(it.idx)  # ghost: the leaf's source, kept by the fix
        early_mark = (vm.bug("fast_pf_marks_dirty_before_cmpxchg") and S.is_writable_pte(new)
                      and not S.is_writable_pte(spte) and fault.slot is not None)
        # unreachable(true): early_mark is true only with the planted bug fast_pf_marks_dirty_before_cmpxchg
        if early_mark:
            from kvmfuzz.virt.dirty import mark_page_dirty_in_slot
            assert fault.slot is not None
            mark_page_dirty_in_slot(vm, fault.slot, fault.gfn)  # planted: before the cmpxchg
        yield from preempt(Point.FAST_PF_CMPXCHG)
        if fast_pf_fix_direct_spte(vm, fault, it, spte, new):
            ret = RET_PF_FIXED
            fault.why = "fast-fixed"
            vm.ghost.event("fast_pf.fixed" + (".tracked" if S.is_access_track_spte(m, spte) else
                                              ".wrprot"))
            if S.is_writable_pte(new) and not S.is_writable_pte(spte) and not early_mark:
                yield from _mark_dirty(vm, fault, it)
            break
        retry_count += 1
        if retry_count > FAST_PF_MAX_RETRIES:
            fault.why = "fast-retries-exhausted"
            vm.ghost.event("fast_pf.gave_up")
            break
    fault.source = None
    rcu.read_unlock(vm, actor)  # walk_shadow_page_lockless_end()
    return ret


def _mark_dirty(vm: Vm, fault: PageFault, it: TdpIter) -> Op[None]:
    """mark_page_dirty_in_slot(), after the cmpxchg (another CPU may write in between)."""
    from kvmfuzz.virt.dirty import mark_page_dirty_in_slot
    slot = fault.slot
    if slot is None or not slot.logging:
        return
    key = (slot.serial, fault.gfn)
    vm.arch.ghost.pending_marks.add(key)
    yield from preempt(Point.FAST_PF_MARK_DIRTY)
    mark_page_dirty_in_slot(vm, slot, fault.gfn)
    vm.arch.ghost.pending_marks.discard(key)
