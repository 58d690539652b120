"""Memslot updates: ``KVM_SET_USER_MEMORY_REGION2`` (virt/kvm/kvm_main.c, reference §2.7-2.8).

``kvm_set_memory_region`` → ``__kvm_set_memory_region`` (validate, classify CREATE / DELETE /
MOVE / FLAGS_ONLY) → ``kvm_set_memslot``: DELETE and MOVE first publish a copy of the slot
marked ``KVM_MEMSLOT_INVALID`` and zap (``kvm_invalidate_memslot``); then the change is made
in the inactive set, published by ``kvm_swap_active_memslots`` (which waits for
``mn_active_invalidate_count == 0`` on ``mn_memslots_update_rcuwait``, publishes under
``mn_invalidate_lock``, drops ``slots_arch_lock`` and waits for SRCU readers), and propagated
to the set that just became inactive. All under ``slots_lock``.

Simplifications: no memory quota / ``nr_memslot_pages`` accounting; errors are returned as
negative errno ints; allocation failures are not modelled (so the U4 failure path, which
re-activates the old slot, is never taken).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, mutex_lock, rcuwait_schedule, synchronize_srcu
from kvmfuzz.virt.kvm import (
    KVM_MEM_GUEST_MEMFD,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    KVM_MEMSLOT_INVALID,
    KVM_USER_MEM_SLOTS,
    Memslot,
    Vm,
)
from kvmfuzz.virt.notifier import warn

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor

KVM_MR_CREATE, KVM_MR_DELETE, KVM_MR_MOVE, KVM_MR_FLAGS_ONLY = "CREATE", "DELETE", "MOVE", "FLAGS_ONLY"


@attrs.frozen
class UserspaceMemoryRegion:
    """``struct kvm_userspace_memory_region2`` in pages (gfn / npages / hva page)."""

    slot: int
    as_id: int
    flags: int
    base_gfn: int
    npages: int
    userspace_addr: int
    guest_memfd: int = -1  # index into vm.gmem_files
    guest_memfd_offset: int = 0  # in pages


def kvm_set_memory_region(vm: Vm, actor: Actor, mem: UserspaceMemoryRegion) -> Op[int]:
    """kvm_set_memory_region(): __kvm_set_memory_region() under slots_lock."""
    yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
    try:
        return (yield from __kvm_set_memory_region(vm, actor, mem))
    finally:
        vm.slots_lock.release(actor)


def _valid_flags(vm: Vm, mem: UserspaceMemoryRegion) -> int:
    """check_memory_region_flags()."""
    valid = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY
    if vm.config.private_mem:
        valid |= KVM_MEM_GUEST_MEMFD
    if mem.flags & KVM_MEM_GUEST_MEMFD:
        valid &= ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)
    return valid


def __kvm_set_memory_region(vm: Vm, actor: Actor, mem: UserspaceMemoryRegion) -> Op[int]:
    """__kvm_set_memory_region(): validate and classify, then kvm_set_memslot()."""
    vm.slots_lock.assert_held(actor)
    if mem.flags & ~_valid_flags(vm, mem):
        return -errno.EINVAL
    if not 0 <= mem.as_id < vm.config.nr_as or not 0 <= mem.slot < KVM_USER_MEM_SLOTS:
        return -errno.EINVAL
    if mem.npages < 0 or mem.base_gfn < 0 or mem.userspace_addr < 0:
        return -errno.EINVAL
    slots = vm.memslots[mem.as_id]  # __kvm_memslots(): stable, slots_lock is held
    old = slots.slots.get(mem.slot)
    if mem.npages == 0:
        if old is None or not old.npages:
            return -errno.EINVAL
        return (yield from kvm_set_memslot(vm, actor, old, None, KVM_MR_DELETE))
    if mem.base_gfn + mem.npages > vm.arch.geo.max_gfn:
        return -errno.EINVAL  # kvm_arch_prepare_memory_region: above kvm_mmu_max_gfn()
    if old is None:
        change = KVM_MR_CREATE
    else:
        if mem.flags & KVM_MEM_GUEST_MEMFD:
            return -errno.EINVAL  # private memslots are immutable: they can only be deleted
        if (mem.userspace_addr != old.userspace_addr or mem.npages != old.npages
                or (mem.flags ^ old.flags) & (KVM_MEM_READONLY | KVM_MEM_GUEST_MEMFD)):
            return -errno.EINVAL
        if mem.base_gfn != old.base_gfn:
            change = KVM_MR_MOVE
        elif mem.flags != old.flags:
            change = KVM_MR_FLAGS_ONLY
        else:
            return 0
    if change in (KVM_MR_CREATE, KVM_MR_MOVE):
        for other in slots.ordered():
            if other.id != mem.slot and other.gfns.overlaps(
                    type(other.gfns)(mem.base_gfn, mem.base_gfn + mem.npages)):
                return -errno.EEXIST
    serial = old.serial if change == KVM_MR_FLAGS_ONLY and old is not None else vm.next_slot_serial
    if serial == vm.next_slot_serial:
        vm.next_slot_serial += 1
    new = Memslot(id=mem.slot, as_id=mem.as_id, base_gfn=mem.base_gfn, npages=mem.npages,
                  userspace_addr=mem.userspace_addr, flags=mem.flags, serial=serial)
    if change == KVM_MR_FLAGS_ONLY and mem.flags & KVM_MEM_LOG_DIRTY_PAGES:
        vm.ghost.dirty_enable_in_flight.add(serial)
    if mem.flags & KVM_MEM_GUEST_MEMFD:
        from kvmfuzz.virt.guest_memfd import kvm_gmem_bind
        r = yield from kvm_gmem_bind(vm, actor, new, mem.guest_memfd, mem.guest_memfd_offset)
        if r:
            return r
    return (yield from kvm_set_memslot(vm, actor, old, new, change))


def kvm_replace_memslot(vm: Vm, old: Memslot | None, new: Memslot | None) -> None:
    """kvm_replace_memslot(): swap ``old`` for ``new`` in the inactive set."""
    as_id = (old or new).as_id  # type: ignore[union-attr]
    slots = vm.inactive_memslots(as_id)
    if old is not None:
        del slots.slots[old.id]
    if new is not None:
        slots.slots[new.id] = new
    slots.version += 1


def kvm_swap_active_memslots(vm: Vm, actor: Actor, as_id: int) -> Op[None]:
    """kvm_swap_active_memslots(): wait for notifiers, publish, drop the arch lock, sync SRCU."""
    slots = vm.inactive_memslots(as_id)
    gen = vm.memslots[as_id].generation
    if gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        warn(vm, "memslot generation already in progress")
    slots.generation = gen | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS

    # W2: wait, under mn_invalidate_lock, for mn_active_invalidate_count to drop to 0.
    yield from mutex_lock(vm.mn_invalidate_lock, actor, Point.MN_INVALIDATE_LOCK)
    wait = vm.mn_memslots_update_rcuwait
    wait.prepare(actor)
    waited = False
    while vm.mn_active_invalidate_count and not vm.bug("swap_ignores_mn_active_count"):
        waited = True
        wait.set_current_state_uninterruptible(actor)
        vm.mn_invalidate_lock.release(actor)
        yield from rcuwait_schedule(wait, actor, Point.SWAP_WAIT_MN_ACTIVE)
        yield from mutex_lock(vm.mn_invalidate_lock, actor, Point.MN_INVALIDATE_LOCK)
    wait.finish(actor)
    # W3: publish, still under mn_invalidate_lock.
    vm.ghost.last_swap_count = vm.mn_active_invalidate_count
    vm.memslots[as_id] = slots
    vm.ghost.swaps += 1
    if waited:
        vm.ghost.swap_waited += 1
        vm.ghost.event("swap.waited")
    vm.mn_invalidate_lock.release(actor)
    # W4: drop slots_arch_lock before waiting for readers (a vCPU may need it inside SRCU).
    vm.slots_arch_lock.release(actor)
    # W5: wait for every reader of the old set.
    if not vm.bug("swap_skips_synchronize_srcu"):
        before = vm.srcu.grace_periods_waited
        yield from synchronize_srcu(vm.srcu, actor, Point.SYNCHRONIZE_SRCU)
        if vm.srcu.grace_periods_waited != before:
            vm.ghost.event("srcu.waited")
    # W6-W8: the new generation.
    gen = (slots.generation & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) + vm.config.nr_as
    from kvmfuzz.x86.mmu import kvm_arch_memslots_updated
    yield from kvm_arch_memslots_updated(vm, actor, gen)
    slots.generation = gen


def kvm_activate_memslot(vm: Vm, actor: Actor, old: Memslot | None,
                         new: Memslot | None) -> Op[None]:
    """kvm_activate_memslot(): publish the inactive set, then propagate to the other."""
    as_id = (old or new).as_id  # type: ignore[union-attr]
    yield from kvm_swap_active_memslots(vm, actor, as_id)
    kvm_replace_memslot(vm, old, new)


def kvm_invalidate_memslot(vm: Vm, actor: Actor, old: Memslot, invalid_slot: Memslot) -> Op[None]:
    """kvm_invalidate_memslot(): publish an INVALID copy, zap, re-take slots_arch_lock."""
    from kvmfuzz.x86.mmu import kvm_arch_flush_shadow_memslot
    if vm.bug("delete_zaps_before_invalid_swap"):
        # planted: zap first, then publish the INVALID copy; a fault that still sees the valid
        # slot can map it again between the zap and the SWAP (whose SRCU wait it then delays)
        yield from kvm_arch_flush_shadow_memslot(vm, actor, old)
        kvm_replace_memslot(vm, old, invalid_slot)
        yield from kvm_swap_active_memslots(vm, actor, old.as_id)
    else:
        kvm_replace_memslot(vm, old, invalid_slot)
        yield from kvm_swap_active_memslots(vm, actor, old.as_id)
        yield from kvm_arch_flush_shadow_memslot(vm, actor, old)
    yield from mutex_lock(vm.slots_arch_lock, actor, Point.SLOTS_ARCH_LOCK)
    old.lpage_info = invalid_slot.lpage_info


def kvm_prepare_memory_region(vm: Vm, old: Memslot | None, new: Memslot | None,
                              change: str) -> int:
    """kvm_prepare_memory_region(): dirty bitmap, then kvm_arch_prepare_memory_region()."""
    if new is not None:
        if not new.flags & KVM_MEM_LOG_DIRTY_PAGES:
            new.dirty_bitmap = None
        elif old is not None and old.dirty_bitmap is not None:
            new.dirty_bitmap = old.dirty_bitmap
        else:
            words = (new.npages + 63) // 64
            fill = (1 << 64) - 1 if vm.config.manual_protect and vm.config.initially_set else 0
            new.dirty_bitmap = [fill] * words
            if fill and new.npages % 64:
                new.dirty_bitmap[-1] = (1 << (new.npages % 64)) - 1
    from kvmfuzz.x86.mmu import kvm_arch_prepare_memory_region
    return kvm_arch_prepare_memory_region(vm, old, new, change)


def kvm_free_memslot(vm: Vm, actor: Actor, slot: Memslot) -> Op[None]:
    """kvm_free_memslot(): unbind guest_memfd, free the bitmap and the struct."""
    if slot.has_gmem:
        from kvmfuzz.virt.guest_memfd import kvm_gmem_unbind
        yield from kvm_gmem_unbind(vm, actor, slot)
    slot.dirty_bitmap = None
    slot.freed = True


def kvm_commit_memory_region(vm: Vm, actor: Actor, old: Memslot | None, new: Memslot | None,
                             change: str) -> Op[None]:
    """kvm_commit_memory_region(): accounting, arch commit, free what the change left over."""
    old_flags = old.flags if old is not None else 0
    new_flags = new.flags if new is not None else 0
    if (old_flags ^ new_flags) & KVM_MEM_LOG_DIRTY_PAGES:
        vm.nr_memslots_dirty_logging += 1 if new_flags & KVM_MEM_LOG_DIRTY_PAGES else -1
    from kvmfuzz.x86.mmu import kvm_arch_commit_memory_region
    yield from kvm_arch_commit_memory_region(vm, actor, old, new, change)
    if change == KVM_MR_DELETE:
        assert old is not None
        yield from kvm_free_memslot(vm, actor, old)
    elif change in (KVM_MR_MOVE, KVM_MR_FLAGS_ONLY):
        assert old is not None and new is not None
        if old.dirty_bitmap is not None and new.dirty_bitmap is None:
            old.dirty_bitmap = None
        old.freed = True


def kvm_set_memslot(vm: Vm, actor: Actor, old: Memslot | None, new: Memslot | None,
                    change: str) -> Op[int]:
    """kvm_set_memslot()."""
    yield from mutex_lock(vm.slots_arch_lock, actor, Point.SLOTS_ARCH_LOCK)
    invalid_slot: Memslot | None = None
    if change in (KVM_MR_DELETE, KVM_MR_MOVE):
        assert old is not None
        invalid_slot = attrs.evolve(old, flags=old.flags | KVM_MEMSLOT_INVALID)
        vm.ghost.slot_state[old.serial] = "invalid"
        yield from kvm_invalidate_memslot(vm, actor, old, invalid_slot)
        vm.ghost.slot_state[old.serial] = "zapped"
    r = kvm_prepare_memory_region(vm, old, new, change)
    # unreachable(true): kvm_arch_prepare_memory_region() always returns 0 (allocation failures are not
    #   modelled: the U4 failure path, see the module docstring)
    if r:
        # unreachable: only under 'if r:' above, which the model never takes
        if invalid_slot is not None:
            yield from kvm_activate_memslot(vm, actor, invalid_slot, old)
            invalid_slot.freed = True
            vm.ghost.slot_state[old.serial] = "live"  # type: ignore[union-attr]
        else:
            vm.slots_arch_lock.release(actor)
        return r
    if change == KVM_MR_CREATE:
        kvm_replace_memslot(vm, None, new)
        yield from kvm_activate_memslot(vm, actor, None, new)
    elif change == KVM_MR_DELETE:
        kvm_replace_memslot(vm, old, None)
        yield from kvm_activate_memslot(vm, actor, invalid_slot, None)
    elif change == KVM_MR_MOVE:
        kvm_replace_memslot(vm, old, new)
        yield from kvm_activate_memslot(vm, actor, invalid_slot, new)
    else:
        kvm_replace_memslot(vm, old, new)
        yield from kvm_activate_memslot(vm, actor, old, new)
    if invalid_slot is not None:
        invalid_slot.freed = True  # kfree(invalid_slot): every reader left at the SWAP
    yield from kvm_commit_memory_region(vm, actor, old, new, change)
    if old is not None and change in (KVM_MR_DELETE, KVM_MR_MOVE):
        vm.ghost.slot_state[old.serial] = "dead"
    if new is not None:
        vm.ghost.slot_state[new.serial] = "live"
    vm.ghost.dirty_enable_in_flight.discard(new.serial if new is not None else -1)
    busy = "pending-inval" if vm.mn_active_invalidate_count else "quiet"
    vm.ghost.event(f"memslot.{change}.{busy}")
    return 0
