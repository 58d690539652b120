"""Dirty logging: ``mark_page_dirty_in_slot`` and ``KVM_GET_DIRTY_LOG`` (virt/kvm/kvm_main.c,
arch/x86/kvm/mmu/mmu.c; reference §2.10).

GET without manual protect: under ``slots_lock``, then ``mmu_lock`` for write, each nonzero
64-bit word is xchg'ed to 0 and its gfns write-protected (``kvm_arch_mmu_enable_log_dirty_pt_masked``
-> TDP ``clear_dirty_pt_masked``: W cleared, as without PML); after the unlock, a TLB flush of
the slot if any word was nonzero. With manual protect, GET only copies the bitmap and
``KVM_CLEAR_DIRTY_LOG`` does the clearing and protection.

Left out: the dirty ring, PML (so W, not D, is what logging clears).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, mutex_lock, preempt, write_lock
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import for_each_tdp_pte, tdp_mmu_set_spte_atomic
from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs_range

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Memslot, Vm


def mark_page_dirty_in_slot(vm: Vm, slot: Memslot, gfn: int) -> None:
    """mark_page_dirty_in_slot(): set the gfn's bit if the slot is logging."""
    if slot.dirty_bitmap is None or not slot.logging:
        return
    rel = gfn - slot.base_gfn
    slot.dirty_bitmap[rel // 64] |= 1 << (rel % 64)


def dirty_bit(slot: Memslot, gfn: int) -> bool:
    if slot.dirty_bitmap is None:
        return False
    rel = gfn - slot.base_gfn
    return bool(slot.dirty_bitmap[rel // 64] >> (rel % 64) & 1)


def kvm_arch_mmu_enable_log_dirty_pt_masked(vm: Vm, actor: Actor, slot: Memslot,
                                            gfn_offset: int, mask: int) -> None:
    """kvm_arch_mmu_enable_log_dirty_pt_masked() -> kvm_tdp_mmu_clear_dirty_pt_masked()."""
    vm.mmu_lock.assert_held_write(actor)
    if vm.bug("get_dirty_log_skips_protect"):
        return
    for root in [r for r in vm.arch.roots if not r.role_invalid and r.as_id == slot.as_id]:
        for bit in range(64):
            if not mask >> bit & 1:
                continue
            gfn = slot.base_gfn + gfn_offset + bit
            for it in for_each_tdp_pte(vm, root, gfn, gfn + 1, 1):
                if (it.level == 1 and S.is_shadow_present_pte(it.old_spte)
                        and S.is_writable_pte(it.old_spte)):
                    tdp_mmu_set_spte_atomic(vm, it, it.old_spte & ~S.PT_WRITABLE_MASK)


def kvm_get_dirty_log_protect(vm: Vm, actor: Actor, as_id: int, slot_id: int) -> Op[list[int] | int]:
    """KVM_GET_DIRTY_LOG -> kvm_get_dirty_log_protect(): harvest, re-protect, flush."""
    yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
    try:
        slot = vm.memslots[as_id].slots.get(slot_id)
        if slot is None or slot.dirty_bitmap is None:
            return -errno.ENOENT
        bitmap = slot.dirty_bitmap
        if vm.config.manual_protect:
            return list(bitmap)
        yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
        flush = False
        harvested = [0] * len(bitmap)
        for i, word in enumerate(bitmap):
            if not word:
                continue
            flush = True
            mask, bitmap[i] = word, 0  # xchg
            harvested[i] = mask
            kvm_arch_mmu_enable_log_dirty_pt_masked(vm, actor, slot, i * 64, mask)
        vm.mmu_lock.write_unlock(actor)
        vm.ghost.get_in_flight.add(slot.serial)
        yield from preempt(Point.DIRTY_LOG_BEFORE_FLUSH)
        if flush:
            kvm_flush_remote_tlbs_range(vm, actor, slot.base_gfn, slot.npages)
        vm.ghost.get_in_flight.discard(slot.serial)
        vm.ghost.event("dirty_log.get" + (".nonempty" if flush else ".empty"))
        return harvested
    finally:
        vm.slots_lock.release(actor)
