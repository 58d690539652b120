"""Huge-page recovery after dirty logging is disabled (arch/x86/kvm/mmu/tdp_mmu.c, 6.13+).

``kvm_mmu_recover_huge_pages`` -> ``kvm_tdp_mmu_recover_huge_pages`` -> ``recover_huge_pages_range``
for every valid root of the slot's address space, under mmu_lock for read and RCU: each present
non-leaf SPTE at 2M..1G whose frame starts inside the slot and may now be mapped huge
(``kvm_mmu_max_mapping_level``: lpage_info, MIXED, ``host_pfn_mapping_level``) is replaced in
place, with cmpxchg, by a huge leaf built from its first present leaf descendant
(``tdp_mmu_make_huge_spte``); the slot's TLB entries are flushed before the lock is dropped.

Why this needs no mmu_invalidate_seq check (reference §2.15; host_pfn_mapping_level's rule "hold
mmu_lock AND ensure there is no in-progress invalidation for the hva, e.g. because KVM already
has a valid mapping of it"): the present leaf it builds from, the host level it reads and the
cmpxchg all happen in one mmu_lock section, and an invalidation must zap that leaf under the
write lock before the host may change the mapping. ``tdp_mmu_make_huge_spte`` therefore gives
up with -EAGAIN, *before* building anything, when it has to yield: the walk re-evaluates the
frame after re-taking the lock.

``TDP_RECOVER_HUGE`` is the one place the model offers need_resched(): the walker is preempted
while it holds mmu_lock for read, just before building a huge SPTE, so another CPU can start
waiting for mmu_lock (which the kernel's rwlock_needbreak() then sees).

Planted ``recovery_ignores_invalidation``: the variant builds the huge SPTE, drops mmu_lock (as
a yield that does not restart would), and installs what it built after re-taking the lock -- so
an invalidation that zapped the children (and let the host change or free the pages) while the
lock was dropped is ignored: a leaf zap leaves the parent non-leaf SPTE unchanged, so the cmpxchg
succeeds. It breaks the ordering "the present child that vouches for the host mapping is seen in
the same mmu_lock section as the cmpxchg". Only an interleaving exposes it: without an
invalidation of that frame in the window, what it installs is still correct.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt, read_lock
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import (
    KvmMmuPage,
    TdpIter,
    TdpWalk,
    for_each_tdp_pte,
    kvm_tdp_mmu_get_root,
    kvm_tdp_mmu_put_root,
    spte_to_child_sp,
    tdp_mmu_roots,
    tdp_mmu_set_spte_atomic,
    tdp_mmu_yield_lock,
)
from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs_range

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Memslot, Vm
    from kvmfuzz.x86.tdp_mmu import Source

EAGAIN = -11
ENOENT = -2


def tdp_mmu_make_huge_spte(vm: Vm, walk: TdpWalk,
                           parent: TdpIter) -> tuple[int, int, Source | None]:
    """tdp_mmu_make_huge_spte(): (0, huge SPTE, ghost source) from the first present leaf below
    ``parent``; (-EAGAIN, ...) if the walker must yield first; (-ENOENT, ...) if there is none."""
    child = spte_to_child_sp(vm, parent.old_spte)
    end = parent.gfn + vm.arch.geo.pages(parent.level)
    for it in for_each_tdp_pte(vm, child, parent.gfn, end, 1):
        if not S.is_shadow_present_pte(it.old_spte) or not S.is_last_spte(it.old_spte, it.level):
            continue
        if walk.need_resched() and not vm.bug("recovery_ignores_invalidation"):
            return EAGAIN, 0, None
        huge = S.make_huge_spte(vm.arch.masks, vm.arch.geo, it.old_spte, parent.level)
        src = it.sp.src.get(it.idx)
        return 0, huge, (src.offset(parent.gfn - it.gfn) if src is not None else None)
    return ENOENT, 0, None


def _install(vm: Vm, it: TdpIter, huge: int, src: Source | None) -> bool:
    sp, idx = it.sp, it.idx
    # unreachable(true): the parent was read before TDP_RECOVER_HUGE; a change meanwhile (a fault's huge
    #   install under mmu_lock R, writers are excluded) froze the old child table, so tdp_mmu_make_huge_spte()
    #   returned -ENOENT before this cmpxchg
    if not tdp_mmu_set_spte_atomic(vm, it, huge):
        return False
    # unreachable(false): ghost: every present leaf records its Source (a fault always resolves one; split and
    #   huge-page recovery copy it)
    if src is not None:
        sp.src[idx] = src
    vm.ghost.event(f"spte.recover.L{it.level}")
    return True


def recover_huge_pages_range(vm: Vm, actor: Actor, root: KvmMmuPage, slot: Memslot) -> Op[None]:
    """recover_huge_pages_range(): one root (mmu_lock held for read)."""
    from kvmfuzz.x86.mmu import __kvm_mmu_max_mapping_level
    start, end = slot.base_gfn, slot.base_gfn + slot.npages
    geo, rcu = vm.arch.geo, vm.arch.rcu
    flush = False
    rcu.read_lock(actor)
    walk = TdpWalk(vm, root, start, end, 2)
    for it in walk:
        while True:  # retry:
            if (yield from walk.cond_resched(actor, flush, True)):
                flush = False
                break
            if it.level > geo.max_huge_level or not S.is_shadow_present_pte(it.old_spte):
                break
            if S.is_last_spte(it.old_spte, it.level) or not start <= it.gfn < end:
                break
            level = __kvm_mmu_max_mapping_level(vm, slot, it.gfn, geo.max_huge_level, False)
            if level < it.level:
                break
            vm.arch.ghost.recovering[actor.name] = (root.as_id, it.gfn, it.level)
            yield from preempt(Point.TDP_RECOVER_HUGE)  # need_resched(): others may queue
            r, huge, src = tdp_mmu_make_huge_spte(vm, walk, it)
            if r == EAGAIN:
                continue  # goto retry: cond_resched() yields and the walk restarts
            if r:
                break
            if vm.bug("recovery_ignores_invalidation"):
                # planted: drop mmu_lock with the huge SPTE already built, install it anyway
                yield from tdp_mmu_yield_lock(vm, actor, flush, True)
                flush = False
                # unreachable: inside the planted recovery_ignores_invalidation branch
                if _install(vm, it, huge, src):
                    flush = True
                walk.restart()
                break
            # unreachable(false): _install() cannot fail: see its cmpxchg (the parent cannot change between
            #   TDP_RECOVER_HUGE and here without freezing the child table)
            if _install(vm, it, huge, src):
                flush = True
                break
            # the parent changed under us: it.old_spte was refreshed, retry
    if flush:
        kvm_flush_remote_tlbs_range(vm, actor, slot.base_gfn, slot.npages)
    vm.arch.ghost.recovering.pop(actor.name, None)
    rcu.read_unlock(vm, actor)


def kvm_mmu_recover_huge_pages(vm: Vm, actor: Actor, slot: Memslot) -> Op[None]:
    """kvm_mmu_recover_huge_pages() -> kvm_tdp_mmu_recover_huge_pages() (mmu_lock R)."""
    if slot.logging:
        from kvmfuzz.virt.notifier import warn
        warn(vm, "huge-page recovery on a dirty-logged slot")
        return
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    for root in tdp_mmu_roots(vm, slot.as_id, True):
        # unreachable(true): at most one valid root exists (every vCPU uses address space 0 and
        #   kvm_tdp_mmu_alloc_root() reuses the valid root), and its reference is taken in the atomic step
        #   that listed it, while it still holds the MMU's reference
        if not kvm_tdp_mmu_get_root(root):
            continue
        yield from recover_huge_pages_range(vm, actor, root, slot)
        kvm_tdp_mmu_put_root(vm, root)
    vm.mmu_lock.read_unlock(actor)
