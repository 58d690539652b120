"""guest_memfd: private memory, bindings and hole punching (virt/kvm/guest_memfd.c; §2.12).

``kvm_gmem_get_pfn`` (folio at ``gfn - base_gfn + pgoff``, allocated zeroed on first use, a
reference for the fault), ``kvm_gmem_bind`` / ``kvm_gmem_unbind`` (under the inode's
``filemap_invalidate_lock``), and ``fallocate(PUNCH_HOLE)``: ``filemap_invalidate_lock``, then
for every file of the inode ``__kvm_gmem_invalidate_begin`` (begin on the first bound slot,
range_add + unmap per slot, flush), truncate (folios freed), ``__kvm_gmem_invalidate_end``.

Simplifications: one VM per inode (one ``gmem_file``); no mmap/INIT_SHARED flags, no
hwpoison, no release-on-close (the file lives as long as the VM).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from kvmfuzz.host.pages import Folio
from kvmfuzz.points import Point
from kvmfuzz.sched.locks import Mutex
from kvmfuzz.sched.traps import Op, mutex_lock, preempt, write_lock
from kvmfuzz.units import GfnRange
from kvmfuzz.virt.kvm import Memslot, Vm
from kvmfuzz.virt.notifier import (
    KvmGfnRange,
    kvm_mmu_invalidate_begin,
    kvm_mmu_invalidate_end,
    kvm_mmu_unmap_gfn_range,
)

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.x86.fault import PageFault


@attrs.define(eq=False)
class GmemFile:
    """A guest_memfd file and its inode (one VM per inode in this model)."""

    id: int
    npages: int
    folios: dict[int, Folio] = attrs.field(factory=dict)  # the inode's page cache
    bindings: dict[int, Memslot] = attrs.field(factory=dict)  # index -> slot
    invalidate_lock: Mutex = attrs.field(factory=lambda: Mutex("filemap_invalidate_lock"))

    def slots_in(self, start: int, end: int) -> list[Memslot]:
        """xa_for_each_range(&f->bindings, start, end - 1): each bound slot once."""
        out: list[Memslot] = []
        for index in sorted(i for i in self.bindings if start <= i < end):
            if self.bindings[index] not in out:
                out.append(self.bindings[index])
        return out


def kvm_gmem_bind(vm: Vm, actor: Actor, slot: Memslot, fd: int, offset: int) -> Op[int]:
    """kvm_gmem_bind(): bind [offset, offset + npages) of file ``fd`` to ``slot``."""
    if not 0 <= fd < len(vm.gmem_files):
        return -errno.EBADF
    f = vm.gmem_files[fd]
    if offset < 0 or offset + slot.npages > f.npages:
        return -errno.EINVAL
    yield from mutex_lock(f.invalidate_lock, actor, Point.GMEM_INVALIDATE_LOCK)
    try:
        if any(offset <= i < offset + slot.npages for i in f.bindings):
            return -errno.EINVAL  # r is still -EINVAL at the xa_find() check
        for i in range(offset, offset + slot.npages):
            f.bindings[i] = slot
        slot.gmem_file, slot.gmem_pgoff = f, offset
        return 0
    finally:
        f.invalidate_lock.release(actor)


def kvm_gmem_unbind(vm: Vm, actor: Actor, slot: Memslot) -> Op[None]:
    """kvm_gmem_unbind(): erase the bindings, clear slot->gmem.file."""
    f = slot.gmem_file
    # unreachable(true): kvm_free_memslot() calls it only for a KVM_MEM_GUEST_MEMFD slot, which
    #   kvm_gmem_bind() bound at creation, and frees a slot once
    if f is None:
        return
    yield from mutex_lock(f.invalidate_lock, actor, Point.GMEM_INVALIDATE_LOCK)
    for i in range(slot.gmem_pgoff, slot.gmem_pgoff + slot.npages):
        # unreachable(false): kvm_gmem_bind() refuses overlapping bindings and guest_memfd slots are never
        #   moved: every index of the slot is bound to it until this unbind
        if f.bindings.get(i) is slot:
            del f.bindings[i]
    slot.gmem_file = None
    f.invalidate_lock.release(actor)


def kvm_gmem_get_pfn(vm: Vm, slot: Memslot, gfn: int) -> tuple[int, Folio | None]:
    """kvm_gmem_get_pfn(): (pfn, folio with a reference) or (negative errno, None)."""
    f = slot.gmem_file
    # unreachable(true): the faulting vCPU holds kvm->srcu and the slot is unbound only by kvm_free_memslot(),
    #   after the DELETE's synchronize_srcu() waited for it (an INVALID slot retries first)
    if f is None:
        return -errno.EFAULT, None
    index = gfn - slot.base_gfn + slot.gmem_pgoff
    # unreachable(true): the faulting vCPU holds kvm->srcu and the slot is unbound only by kvm_free_memslot(),
    #   after the DELETE's synchronize_srcu() waited for it (an INVALID slot retries first)
    if f.bindings.get(index) is not slot:
        return -errno.EIO, None
    folio = f.folios.get(index)
    if folio is None:
        folio = vm.pages.alloc(1, "gmem")  # the page cache's reference
        f.folios[index] = folio
    vm.pages.get(folio)
    return folio.head, folio


def kvm_mmu_faultin_pfn_private(vm: Vm, actor: Actor, fault: PageFault) -> Op[int]:
    """kvm_mmu_faultin_pfn_private(): the pfn comes from guest_memfd, order 0."""
    from kvmfuzz.x86.fault import RET_PF_CONTINUE
    from kvmfuzz.x86.tdp_mmu import Source
    slot = fault.slot
    assert slot is not None
    if not slot.has_gmem:
        fault.why = "private-no-gmem"
        return -errno.EFAULT
    yield from preempt(Point.FAULT_GMEM_GET_PFN)
    pfn, folio = kvm_gmem_get_pfn(vm, slot, fault.gfn)
    # unreachable(true): kvm_gmem_get_pfn() fails only for an unbound slot: the faulting vCPU holds kvm->srcu
    #   and the slot is unbound only by kvm_free_memslot(), after the DELETE's synchronize_srcu() waited for
    #   it (an INVALID slot retries first)
    if folio is None:
        fault.why = "private-gmem-error"
        return -errno.EFAULT
    fault.pfn, fault.refcounted_page = pfn, folio
    fault.map_writable = not slot.readonly
    fault.max_level = 1  # kvm_max_level_for_order(0)
    assert slot.gmem_file is not None
    fault.source = Source("gmem", slot.serial, slot.id,
                          fault.gfn - slot.base_gfn + slot.gmem_pgoff, True, slot.gmem_file.id)
    fault.stage = "pfn-resolved"
    yield from preempt(Point.FAULT_PFN_RESOLVED)
    return RET_PF_CONTINUE


def kvm_gmem_punch_hole(vm: Vm, actor: Actor, fd: int, start: int, end: int) -> Op[int]:
    """kvm_gmem_punch_hole(): invalidate begin + unmap, truncate, invalidate end."""
    if not 0 <= fd < len(vm.gmem_files) or not 0 <= start < end:
        return -errno.EINVAL
    f = vm.gmem_files[fd]
    yield from mutex_lock(f.invalidate_lock, actor, Point.GMEM_INVALIDATE_LOCK)
    window = vm.ghost.open("gmem", actor)
    window.target, window.gmem = GfnRange(start, end), f.id
    # __kvm_gmem_invalidate_begin()
    found = flush = False
    seen: list[int] = []
    for slot in f.slots_in(start, end):
        pgoff = slot.gmem_pgoff
        rng = KvmGfnRange(slot.base_gfn + max(pgoff, start) - pgoff,
                          slot.base_gfn + min(pgoff + slot.npages, end) - pgoff, slot)
        seen.append(slot.serial)
        if not found:
            found = True
            yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
            kvm_mmu_invalidate_begin(vm, actor, window)
        flush |= yield from kvm_mmu_unmap_gfn_range(vm, actor, rng, window)
    window.slots_seen_start = tuple(seen)
    if flush:
        from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs
        kvm_flush_remote_tlbs(vm, actor)
    if found:
        vm.mmu_lock.write_unlock(actor)
    window.phase = "returned"

    def truncate() -> None:  # truncate_inode_pages_range()
        for index in sorted(i for i in f.folios if start <= i < end):
            vm.pages.put(f.folios.pop(index))

    def invalidate_end() -> Op[None]:  # __kvm_gmem_invalidate_end()
        window.phase = "ending"
        if any(start <= i < end for i in f.bindings):
            yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
            kvm_mmu_invalidate_end(vm, actor, window)
            vm.mmu_lock.write_unlock(actor)
        window.slots_seen_end = tuple(s.serial for s in f.slots_in(start, end))

    if vm.bug("gmem_end_before_truncate"):
        # planted: the invalidation ends before the folios are freed; a fault that snapshots
        # mmu_invalidate_seq after the end maps a folio that is then truncated under it
        yield from invalidate_end()
        yield from preempt(Point.GMEM_TRUNCATE)
        truncate()
    else:
        yield from preempt(Point.GMEM_TRUNCATE)
        truncate()
        yield from invalidate_end()
    vm.ghost.close(window)
    f.invalidate_lock.release(actor)
    vm.ghost.event("gmem.punch." + ("slot" if found else "noslot"))
    return 0
