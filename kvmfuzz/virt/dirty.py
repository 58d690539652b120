"""Dirty logging: ``mark_page_dirty_in_slot``, ``KVM_GET_DIRTY_LOG`` and ``KVM_CLEAR_DIRTY_LOG``
(virt/kvm/kvm_main.c, arch/x86/kvm/mmu/mmu.c, tdp_mmu.c; reference §2.10).

GET without manual protect: under ``slots_lock``, then ``mmu_lock`` for write, each nonzero 64-bit
word is xchg'ed to 0 and its gfns re-protected (``kvm_arch_mmu_enable_log_dirty_pt_masked``);
after the unlock, one TLB flush of the slot if any word was nonzero. With manual protect
(``KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2``) GET only copies the bitmap and ``KVM_CLEAR_DIRTY_LOG``
clears the requested bits (``fetch_andnot``) and re-protects exactly the bits it cleared, then
flushes. Re-protection without PML clears W only, on 4K leaves
(``kvm_tdp_mmu_clear_dirty_pt_masked`` with wrprot); with INITIALLY_SET it first eagerly splits
the masked range (which may drop mmu_lock to allocate) and write-protects the huge leaves over
it (W and MMU-writable, ``kvm_mmu_slot_gfn_write_protect``).

Geometry note: the kernel write-protects the huge pages over the first and the last gfn of a
64-gfn word, which with 512-entry tables are all the huge pages a word can touch; with the
model's small fan-out a word spans many huge frames, so every 2M frame between the first and
the last set bit is write-protected (the same set under the kernel's geometry).

Ghost (D5): at the return of GET and CLEAR, pages reported/treated as clean must not have been
written since the previous harvest (``X86Ghost.written``), except during a fast page fault's
cmpxchg-to-mark window; harvested and cleared pages start a new "written since" period.

Left out: the dirty ring, PML (so W, not D, is what logging clears), the second half of the
bitmap (the copy buffer), ``kvm_arch_sync_dirty_log``.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, mutex_lock, preempt, write_lock
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import (
    for_each_tdp_pte,
    kvm_tdp_mmu_try_split_huge_pages,
    tdp_mmu_clear_spte_bits_atomic,
    tdp_mmu_iter_set_spte,
    tdp_mmu_roots,
)
from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs_range

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Memslot, Vm

BITS_PER_LONG = 64
_ALL_ONES = (1 << BITS_PER_LONG) - 1


def mark_page_dirty_in_slot(vm: Vm, slot: Memslot, gfn: int) -> None:
    """mark_page_dirty_in_slot(): set the gfn's bit if the slot is logging."""
    # unreachable(true): callers check slot.logging first (tdp_mmu_map_handle_target_level, fast PF
    #   _mark_dirty); a logging slot has its bitmap until it is freed, after the synchronize_srcu() that waits
    #   for the faulting vCPU
    if slot.dirty_bitmap is None or not slot.logging:
        return
    rel = gfn - slot.base_gfn
    slot.dirty_bitmap[rel // BITS_PER_LONG] |= 1 << (rel % BITS_PER_LONG)


def dirty_bit(slot: Memslot, gfn: int) -> bool:
    # unreachable(true): every caller (the D5 harvest check, the invariants) passes an active slot that logs
    #   dirty pages, and kvm_prepare_memory_region() gives such a slot its bitmap
    if slot.dirty_bitmap is None:
        return False
    rel = gfn - slot.base_gfn
    return bool(slot.dirty_bitmap[rel // BITS_PER_LONG] >> (rel % BITS_PER_LONG) & 1)


def _lowest(mask: int) -> int:
    return (mask & -mask).bit_length() - 1  # __ffs()


def write_protect_gfn(vm: Vm, actor: Actor, slot: Memslot, gfn: int, min_level: int) -> bool:
    """kvm_mmu_slot_gfn_write_protect() -> kvm_tdp_mmu_write_protect_gfn(): clear W and
    MMU-writable of the leaves at >= min_level mapping ``gfn`` (mmu_lock W)."""
    vm.mmu_lock.assert_held_write(actor)
    rcu = vm.arch.rcu
    spte_set = False
    for root in tdp_mmu_roots(vm, slot.as_id, True):
        rcu.read_lock(actor)
        for it in for_each_tdp_pte(vm, root, gfn, gfn + 1, min_level):
            if not S.is_shadow_present_pte(it.old_spte) or not S.is_last_spte(it.old_spte, it.level):
                continue
            new = it.old_spte & ~(S.PT_WRITABLE_MASK | vm.arch.masks.mmu_writable_mask)
            if new == it.old_spte:
                break
            tdp_mmu_iter_set_spte(vm, actor, it, new)
            vm.ghost.event("spte.wrprot_huge")
            spte_set = True
        rcu.read_unlock(vm, actor)
    return spte_set


def kvm_tdp_mmu_clear_dirty_pt_masked(vm: Vm, actor: Actor, slot: Memslot, gfn: int,
                                      mask: int) -> None:
    """kvm_tdp_mmu_clear_dirty_pt_masked(wrprot=true) -> clear_dirty_pt_masked(): clear W of the
    4K leaves of the masked gfns (atomically: fast PF and the CPU race with it)."""
    vm.mmu_lock.assert_held_write(actor)
    rcu = vm.arch.rcu
    for root in tdp_mmu_roots(vm, slot.as_id, True):
        left = mask
        rcu.read_lock(actor)
        for it in for_each_tdp_pte(vm, root, gfn + _lowest(mask), gfn + BITS_PER_LONG, 1):
            if not left:
                break
            if (not S.is_shadow_present_pte(it.old_spte) or not S.is_last_spte(it.old_spte, it.level)
                    or it.level > S.PG_LEVEL_4K or not left >> (it.gfn - gfn) & 1):
                continue
            left &= ~(1 << (it.gfn - gfn))
            if not it.old_spte & S.PT_WRITABLE_MASK:
                continue
            tdp_mmu_clear_spte_bits_atomic(it, S.PT_WRITABLE_MASK)
            vm.ghost.event("spte.wrprot")
        rcu.read_unlock(vm, actor)


def kvm_arch_mmu_enable_log_dirty_pt_masked(vm: Vm, actor: Actor, slot: Memslot,
                                            gfn_offset: int, mask: int) -> Op[None]:
    """kvm_arch_mmu_enable_log_dirty_pt_masked(): (INITIALLY_SET) split and write-protect the
    huge pages over the masked range, then clear W of the masked 4K leaves."""
    vm.mmu_lock.assert_held_write(actor)
    if vm.bug("get_dirty_log_skips_protect"):
        return
    base = slot.base_gfn + gfn_offset
    if vm.config.manual_protect and vm.config.initially_set:
        start, end = base + _lowest(mask), base + mask.bit_length() - 1
        if vm.config.eager_split:
            yield from kvm_tdp_mmu_try_split_huge_pages(vm, actor, slot.as_id, start, end + 1, 1,
                                                        False)
        geo = vm.arch.geo
        vm.arch.flush_at_return = True  # the ioctl flushes after unlocking, before returning
        for frame in range(geo.align_down(start, 2), end + 1, geo.pages(2)):
            write_protect_gfn(vm, actor, slot, max(frame, start), 2)
        vm.arch.flush_at_return = False
    kvm_tdp_mmu_clear_dirty_pt_masked(vm, actor, slot, base, mask)


def _check_harvest(vm: Vm, slot: Memslot, clean: list[int], what: str) -> None:
    """Ghost (D5): ``clean`` gfns were reported clean; were they written since the last harvest?"""
    written = vm.arch.ghost.written.get(slot.serial)
    if not written:
        return
    for gfn in clean:
        # unreachable(true): a D5 violation (a page written since the last harvest reported clean): only a
        #   protocol bug records one
        if (gfn in written and not dirty_bit(slot, gfn)
                and (slot.serial, gfn) not in vm.arch.ghost.pending_marks):
            vm.arch.ghost.lost_writes.append(
                f"{what} of {slot.describe()} reported gfn {gfn:#x} clean, but the guest wrote it "
                "after the previous harvest and its dirty bit is still clear")


def _harvested(vm: Vm, slot: Memslot, words: list[int]) -> None:
    """Ghost (D5): the pages in ``words`` were harvested; a new "written since" period starts."""
    written = vm.arch.ghost.written.get(slot.serial)
    if not written:
        return
    for gfn in sorted(written):
        rel = gfn - slot.base_gfn
        if 0 <= rel < slot.npages and words[rel // BITS_PER_LONG] >> (rel % BITS_PER_LONG) & 1:
            written.discard(gfn)


def kvm_get_dirty_log_protect(vm: Vm, actor: Actor, as_id: int, slot_id: int) -> Op[list[int] | int]:
    """KVM_GET_DIRTY_LOG -> kvm_get_dirty_log_protect(): harvest, re-protect, flush."""
    yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
    try:
        slot = vm.memslots[as_id].slots.get(slot_id)
        if slot is None or slot.dirty_bitmap is None:
            return -errno.ENOENT
        bitmap = slot.dirty_bitmap
        if vm.config.manual_protect:
            harvested = list(bitmap)
            clean = [slot.base_gfn + i for i in range(slot.npages)
                     if not harvested[i // BITS_PER_LONG] >> (i % BITS_PER_LONG) & 1]
            _check_harvest(vm, slot, clean, "KVM_GET_DIRTY_LOG")
            vm.ghost.event("dirty_log.get.manual")
            return harvested
        yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
        vm.ghost.get_in_flight.add(slot.serial)
        flush = False
        harvested = [0] * len(bitmap)
        for i, word in enumerate(bitmap):
            if not word:
                continue
            flush = True
            mask, bitmap[i] = word, 0  # xchg
            harvested[i] = mask
            yield from kvm_arch_mmu_enable_log_dirty_pt_masked(vm, actor, slot, i * BITS_PER_LONG,
                                                               mask)
        vm.mmu_lock.write_unlock(actor)
        yield from preempt(Point.DIRTY_LOG_BEFORE_FLUSH)
        if flush:
            kvm_flush_remote_tlbs_range(vm, actor, slot.base_gfn, slot.npages)
        vm.ghost.get_in_flight.discard(slot.serial)
        clean = [slot.base_gfn + i for i in range(slot.npages)
                 if not harvested[i // BITS_PER_LONG] >> (i % BITS_PER_LONG) & 1]
        _check_harvest(vm, slot, clean, "KVM_GET_DIRTY_LOG")
        _harvested(vm, slot, harvested)
        vm.ghost.event("dirty_log.get" + (".nonempty" if flush else ".empty"))
        return harvested
    finally:
        vm.slots_lock.release(actor)


def kvm_clear_dirty_log_protect(vm: Vm, actor: Actor, as_id: int, slot_id: int, first: int,
                                num: int, user: list[int]) -> Op[int]:
    """KVM_CLEAR_DIRTY_LOG -> kvm_clear_dirty_log_protect(): clear the requested bits that are
    set, re-protect exactly those, flush the slot if any was cleared."""
    if not vm.config.manual_protect:
        return -errno.EINVAL
    if first < 0 or num < 0 or first & (BITS_PER_LONG - 1):
        return -errno.EINVAL
    yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
    try:
        slot = vm.memslots[as_id].slots.get(slot_id)
        if slot is None or slot.dirty_bitmap is None:
            return -errno.ENOENT
        if (first > slot.npages or num > slot.npages - first
                or (num < slot.npages - first and num & (BITS_PER_LONG - 1))):
            return -errno.EINVAL
        bitmap = slot.dirty_bitmap
        words = (num + BITS_PER_LONG - 1) // BITS_PER_LONG
        user = (list(user) + [0] * words)[:words]  # copy_from_user() of the caller's bitmap
        yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
        vm.ghost.get_in_flight.add(slot.serial)
        flush = False
        cleared = [0] * len(bitmap)
        for n in range(words):
            i = first // BITS_PER_LONG + n
            mask = user[n] & _ALL_ONES
            if not mask:
                continue
            mask &= bitmap[i]  # atomic_long_fetch_andnot(): the bits really cleared
            bitmap[i] &= ~mask & _ALL_ONES
            if mask:
                flush = True
                cleared[i] = mask
                yield from kvm_arch_mmu_enable_log_dirty_pt_masked(vm, actor, slot,
                                                                   i * BITS_PER_LONG, mask)
        vm.mmu_lock.write_unlock(actor)
        yield from preempt(Point.CLEAR_DIRTY_LOG_BEFORE_FLUSH)
        if flush:
            kvm_flush_remote_tlbs_range(vm, actor, slot.base_gfn, slot.npages)
        vm.ghost.get_in_flight.discard(slot.serial)
        _harvested(vm, slot, cleared)
        vm.ghost.event("dirty_log.clear" + (".nonempty" if flush else ".empty"))
        return 0
    finally:
        vm.slots_lock.release(actor)


def kvm_enable_manual_dirty_log_protect(vm: Vm, actor: Actor, initially_set: bool) -> Op[int]:
    """KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, ENABLE | INITIALLY_SET?).

    The kernel stores the flags at any time, without a lock. Model restriction: the VMM enables
    it once, under slots_lock and before any slot logs dirty pages (as VMMs do, at VM creation).
    Otherwise it could race with a memslot update between kvm_prepare_memory_region() (which
    fills the bitmap if INITIALLY_SET) and kvm_mmu_slot_apply_flags() (which then skips the
    write-protection): a zero bitmap over writable SPTEs -- a userspace race, not a KVM bug.
    """
    yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
    try:
        if vm.config.manual_protect or any(s.logging for sets in vm.memslots for s in sets.ordered()):
            return -errno.EBUSY
        vm.config = attrs.evolve(vm.config, manual_protect=True, initially_set=initially_set)
        vm.ghost.event("dirty_log.manual_protect" + (".initially_set" if initially_set else ""))
        return 0
    finally:
        vm.slots_lock.release(actor)
