"""``KVM_SET_MEMORY_ATTRIBUTES`` (virt/kvm/kvm_main.c ``kvm_vm_set_mem_attributes``; reference §2.11).

Under ``slots_lock``: nothing to do if the range already has the attributes; otherwise the PRE
walk (``kvm_handle_gfn_range``: on the first intersecting slot take ``mmu_lock`` for write and
``kvm_mmu_invalidate_begin``; per slot ``kvm_pre_set_memory_attributes`` = range_add + the arch
pre-hook that adds head/tail huge frames and zaps), the xarray stores (no ``mmu_lock``: faults
can see a mix), and the POST walk (``kvm_mmu_invalidate_end`` first, then the arch post-hook
that recomputes MIXED). Without an intersecting slot there is no begin/end at all.

Simplification: ``xa_reserve`` cannot fail (no -ENOMEM path).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, mutex_lock, preempt, write_lock
from kvmfuzz.units import GfnRange
from kvmfuzz.virt.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, Vm, Window
from kvmfuzz.virt.notifier import (
    KvmGfnRange,
    kvm_mmu_invalidate_begin,
    kvm_mmu_invalidate_end,
    kvm_mmu_invalidate_range_add,
)

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor


def kvm_range_has_memory_attributes(vm: Vm, start: int, end: int, attrs_: int) -> bool:
    """kvm_range_has_memory_attributes(kvm, start, end, ~0, attrs)."""
    return all(vm.mem_attr_array.get(g, 0) == attrs_ for g in range(start, end))


def kvm_handle_gfn_range(vm: Vm, actor: Actor, start: int, end: int,
                         on_lock: Callable[[Vm, Actor, Window | None], None],
                         handler: Callable[[KvmGfnRange], Op[bool]], flush_on_ret: bool,
                         window: Window) -> Op[bool]:
    """kvm_handle_gfn_range(): like the hva walker but by gfn, under slots_lock, no SRCU."""
    found = ret = False
    seen: list[int] = []
    for as_id in range(vm.config.nr_as):
        for slot in vm.memslots[as_id].gfn_overlaps(GfnRange(start, end)):
            rng = KvmGfnRange(max(start, slot.base_gfn), min(end, slot.base_gfn + slot.npages), slot)
            seen.append(slot.serial)
            if not found:
                found = True
                yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
                on_lock(vm, actor, window)
            ret |= yield from handler(rng)
    if window.phase in ("ending", "ended"):
        window.slots_seen_end = tuple(seen)
    else:
        window.slots_seen_start = tuple(seen)
    if flush_on_ret and ret:
        from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs
        kvm_flush_remote_tlbs(vm, actor)
    if found:
        vm.mmu_lock.write_unlock(actor)
    return found


def kvm_vm_set_mem_attributes(vm: Vm, actor: Actor, start: int, end: int,
                              attrs_: int) -> Op[int]:
    """kvm_vm_ioctl_set_mem_attributes() -> kvm_vm_set_mem_attributes()."""
    from kvmfuzz.x86.mmu import kvm_arch_post_set_memory_attributes, kvm_arch_pre_set_memory_attributes
    if not vm.config.private_mem or attrs_ & ~KVM_MEMORY_ATTRIBUTE_PRIVATE or not start < end:
        return -errno.EINVAL
    yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
    try:
        if kvm_range_has_memory_attributes(vm, start, end, attrs_):
            vm.ghost.event("attr.noop")
            return 0
        window = vm.ghost.open("attr", actor)
        window.target = GfnRange(start, end)

        def pre(rng: KvmGfnRange) -> Op[bool]:
            kvm_mmu_invalidate_range_add(vm, window, rng.start, rng.end)
            return (yield from kvm_arch_pre_set_memory_attributes(vm, actor, rng, window))

        def post(rng: KvmGfnRange) -> Op[bool]:
            kvm_arch_post_set_memory_attributes(vm, actor, rng, attrs_)
            return False
            yield  # pragma: no cover

        found = yield from kvm_handle_gfn_range(vm, actor, start, end, kvm_mmu_invalidate_begin,
                                                pre, True, window)
        window.phase = "returned"
        for gfn in range(start, end):
            yield from preempt(Point.ATTR_STORE)
            if attrs_:
                vm.mem_attr_array[gfn] = attrs_
            else:
                vm.mem_attr_array.pop(gfn, None)
        window.phase = "ending"
        yield from kvm_handle_gfn_range(vm, actor, start, end, kvm_mmu_invalidate_end, post,
                                        False, window)
        vm.ghost.close(window)
        kind = "to_private" if attrs_ else "to_shared"
        vm.ghost.event(f"attr.{kind}.{'slot' if found else 'noslot'}")
        return 0
    finally:
        vm.slots_lock.release(actor)
