"""Huge-page recovery after dirty logging is disabled (arch/x86/kvm/mmu/tdp_mmu.c, 6.13+).

``kvm_mmu_recover_huge_pages`` -> ``recover_huge_pages_range``: under mmu_lock for read, each
present non-leaf SPTE at 2M..1G whose frame starts inside the slot and may now be mapped huge
(``kvm_mmu_max_mapping_level``: lpage_info, MIXED, host level) is replaced in place by a huge
leaf built from its first present leaf descendant (``tdp_mmu_make_huge_spte``), with cmpxchg;
the slot's TLB entries are flushed at the end. The kernel takes no look at the invalidation
state here: its safety argument is that a still-present child proves the host mapping has
not changed (reference §2.15).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, read_lock
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import (
    TdpIter,
    for_each_tdp_pte,
    spte_to_child_sp,
    tdp_mmu_iter_cond_resched,
    tdp_mmu_set_spte_atomic,
)
from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs_range

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Memslot, Vm
    from kvmfuzz.x86.tdp_mmu import Source


def tdp_mmu_make_huge_spte(vm: Vm, parent: TdpIter) -> tuple[int, Source | None] | None:
    """tdp_mmu_make_huge_spte(): a huge SPTE from the first present leaf below ``parent``."""
    child = spte_to_child_sp(vm, parent.old_spte)
    end = parent.gfn + vm.arch.geo.pages(parent.level)
    for it in for_each_tdp_pte(vm, child, parent.gfn, end, 1):
        if S.is_shadow_present_pte(it.old_spte) and S.is_last_spte(it.old_spte, it.level):
            huge = S.make_huge_spte(vm.arch.masks, vm.arch.geo, it.old_spte, parent.level)
            src = it.sp.src.get(it.idx)
            return huge, (src.offset(parent.gfn - it.gfn) if src is not None else None)
    return None


def kvm_mmu_recover_huge_pages(vm: Vm, actor: Actor, slot: Memslot) -> Op[None]:
    """kvm_mmu_recover_huge_pages() -> kvm_tdp_mmu_recover_huge_pages() (mmu_lock R)."""
    from kvmfuzz.x86.mmu import __kvm_mmu_max_mapping_level
    if slot.logging:
        from kvmfuzz.virt.notifier import warn
        warn(vm, "huge-page recovery on a dirty-logged slot")
        return
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    start, end = slot.base_gfn, slot.base_gfn + slot.npages
    flush = False
    for root in [r for r in vm.arch.roots if not r.role_invalid and r.as_id == slot.as_id]:
        for it in for_each_tdp_pte(vm, root, start, end, 2):
            while True:
                if (it.level > vm.arch.geo.max_huge_level or not S.is_shadow_present_pte(it.old_spte)
                        or S.is_last_spte(it.old_spte, it.level)
                        or not start <= it.gfn < end):
                    break
                level = __kvm_mmu_max_mapping_level(vm, slot, it.gfn, vm.arch.geo.max_huge_level,
                                                    False)
                if level < it.level:
                    break
                made = tdp_mmu_make_huge_spte(vm, it)
                if made is None:
                    break
                huge, src = made
                sp, idx = it.sp, it.idx
                if tdp_mmu_set_spte_atomic(vm, it, huge):
                    if src is not None:
                        sp.src[idx] = src
                    flush = True
                    vm.ghost.event(f"spte.recover.L{it.level}")
                    break
        yielded = yield from tdp_mmu_iter_cond_resched(vm, actor, flush, True)
        if yielded:
            flush = False
    if flush:
        kvm_flush_remote_tlbs_range(vm, actor, slot.base_gfn, slot.npages)
    vm.mmu_lock.read_unlock(actor)
