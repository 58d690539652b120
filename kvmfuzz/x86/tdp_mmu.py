"""The TDP MMU: paging-structure pages, the iterator, SPTE updates, map, zap, split
(arch/x86/kvm/mmu/tdp_mmu.c, tdp_iter.{c,h}; reference §2.3 F8, §2.15-2.16).

An SPTE pointer is ``(sp, index)``; ``sp.spt`` is the 512-entry (or ``2**level_bits``) table.
Updates go through ``tdp_mmu_set_spte_atomic`` (cmpxchg, under mmu_lock for read) or
``tdp_mmu_iter_set_spte`` (under mmu_lock for write), both followed by ``handle_changed_spte``
which BUG()s on a present-leaf pfn change and tears down removed page tables.

Ghost: every leaf SPTE records the ``Source`` it was built from (slot + hva, or guest_memfd
file + index), so invariants can compare it with the host's current pfn.

Simplifications: page-table pages are freed at once instead of after an RCU grace period
(no lockless walker in this model spans a preemption point); no NX-huge-page tracking; the
cond_resched test is "someone is waiting for mmu_lock" (rwlock_needbreak), need_resched()
is not modelled.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs

from kvmfuzz.errors import ModelError, ProtocolViolation
from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt, read_lock, write_lock
from kvmfuzz.x86 import spte as S

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm


class PresentLeafPfnChange(ProtocolViolation):
    """handle_changed_spte(): BUG() on present leaf -> present leaf with another pfn (I3)."""

    title = "I3-present-leaf-pfn-change"


@attrs.frozen
class Source:
    """Ghost: what a leaf SPTE maps, as recorded when it was installed."""

    kind: str  # "hva" or "gmem"
    slot_serial: int
    slot_id: int
    base: int  # hva page (kind hva) or gmem index (kind gmem) of the SPTE's first gfn
    private: bool
    gmem_file: int = -1

    def offset(self, n: int) -> Source:
        return attrs.evolve(self, base=self.base + n)

    def __str__(self) -> str:
        where = f"hva {self.base:#x}" if self.kind == "hva" else f"gmem{self.gmem_file}[{self.base:#x}]"
        return f"{'private' if self.private else 'shared'} {where} via slot#{self.slot_serial}"


@attrs.define(eq=False)
class KvmMmuPage:
    """``struct kvm_mmu_page`` of the TDP MMU (a root when ``root``)."""

    id: int
    pfn: int
    level: int
    gfn: int
    as_id: int
    spt: list[int]
    root: bool = False
    role_invalid: bool = False
    root_refcount: int = 0
    scheduled_root_to_zap: bool = False
    parent: tuple[KvmMmuPage, int] | None = None
    freed: bool = False
    src: dict[int, Source] = attrs.field(factory=dict)

    def describe(self) -> str:
        kind = "root" if self.root else "sp"
        inv = " invalid" if self.role_invalid else ""
        return f"{kind}#{self.id} L{self.level} gfn {self.gfn:#x}{inv}"


@attrs.define(eq=False)
class TdpIter:
    """``struct tdp_iter``: the SPTE at ``(sp, idx)``, its level, first gfn, and the value read."""

    sp: KvmMmuPage
    idx: int
    level: int
    gfn: int
    old_spte: int


def tdp_mmu_alloc_sp(vm: Vm, level: int, gfn: int, as_id: int) -> KvmMmuPage:
    """tdp_mmu_alloc_sp() + tdp_mmu_init_sp(): a zeroed (all non-present) table."""
    arch = vm.arch
    folio = vm.pages.alloc(1, "pt")
    sp = KvmMmuPage(arch.next_sp_id, folio.head, level, gfn, as_id,
                    [S.SHADOW_NONPRESENT_VALUE] * arch.geo.ptes_per_table)
    arch.next_sp_id += 1
    arch.sp_by_pfn[sp.pfn] = sp
    return sp


def tdp_mmu_free_sp(vm: Vm, sp: KvmMmuPage) -> None:
    """tdp_mmu_free_sp(): free the table page (at once; see the module header)."""
    sp.freed = True
    vm.arch.sp_by_pfn.pop(sp.pfn, None)
    vm.pages.put(vm.pages.folio(sp.pfn))


def spte_to_child_sp(vm: Vm, spte: int) -> KvmMmuPage:
    """spte_to_child_sp(): the table a non-leaf SPTE points to."""
    sp = vm.arch.sp_by_pfn.get(S.spte_to_pfn(spte))
    if sp is None:
        raise ModelError(f"non-leaf SPTE {spte:#x} points to no page table")
    return sp


def for_each_tdp_pte(vm: Vm, root: KvmMmuPage, start: int, end: int,
                     min_level: int = 1) -> Iterator[TdpIter]:
    """for_each_tdp_pte_min_level(): pre-order over the SPTEs overlapping [start, end).

    Steps down through ``it.old_spte`` as the caller left it (after a set, the new value), as
    tdp_iter_next() does.
    """
    geo = vm.arch.geo

    def walk(sp: KvmMmuPage) -> Iterator[TdpIter]:
        span = geo.pages(sp.level)
        first = max(0, (start - sp.gfn) // span)
        for idx in range(first, geo.ptes_per_table):
            gfn = sp.gfn + idx * span
            if gfn >= end:
                return
            it = TdpIter(sp, idx, sp.level, gfn, sp.spt[idx])
            yield it
            if (sp.level > min_level and S.is_shadow_present_pte(it.old_spte)
                    and not S.is_last_spte(it.old_spte, sp.level)):
                yield from walk(spte_to_child_sp(vm, it.old_spte))

    yield from walk(root)


def handle_removed_pt(vm: Vm, sp: KvmMmuPage, shared: bool) -> None:
    """handle_removed_pt(): freeze every child, recurse, free the table."""
    sp.parent = None
    geo = vm.arch.geo
    for idx in range(geo.ptes_per_table):
        old = sp.spt[idx]
        sp.spt[idx] = S.FROZEN_SPTE
        handle_changed_spte(vm, sp, idx, sp.gfn + idx * geo.pages(sp.level), old,
                            S.FROZEN_SPTE, sp.level, shared)
    tdp_mmu_free_sp(vm, sp)


def handle_changed_spte(vm: Vm, sp: KvmMmuPage, idx: int, gfn: int, old: int, new: int,
                        level: int, shared: bool) -> None:
    """handle_changed_spte(): BUG on pfn change of a present leaf; tear down removed tables."""
    was_present = S.is_shadow_present_pte(old)
    is_present = S.is_shadow_present_pte(new)
    was_leaf = was_present and S.is_last_spte(old, level)
    is_leaf = is_present and S.is_last_spte(new, level)
    if was_leaf and is_leaf and S.spte_to_pfn(old) != S.spte_to_pfn(new):
        m = vm.arch.masks
        raise PresentLeafPfnChange(
            f"gfn {gfn:#x} L{level} in {sp.describe()}: {S.format_spte(m, old, level)} -> "
            f"{S.format_spte(m, new, level)} without passing through non-present")
    if not is_leaf:
        sp.src.pop(idx, None)
    if was_present and not was_leaf and (is_leaf or not is_present):
        handle_removed_pt(vm, spte_to_child_sp(vm, old), shared)


def tdp_mmu_set_spte_atomic(vm: Vm, it: TdpIter, new: int) -> bool:
    """tdp_mmu_set_spte_atomic(): cmpxchg; on failure refresh ``it.old_spte``, return False."""
    current = it.sp.spt[it.idx]
    if current != it.old_spte:
        it.old_spte = current
        vm.ghost.event("spte.cmpxchg_lost")
        return False
    if S.is_frozen_spte(it.old_spte):
        raise ModelError("cmpxchg of a FROZEN SPTE")
    it.sp.spt[it.idx] = new
    handle_changed_spte(vm, it.sp, it.idx, it.gfn, it.old_spte, new, it.level, True)
    it.old_spte = new
    return True


def tdp_mmu_iter_set_spte(vm: Vm, actor: Actor, it: TdpIter, new: int) -> None:
    """tdp_mmu_iter_set_spte() under mmu_lock for write (xchg when the SPTE is volatile)."""
    vm.mmu_lock.assert_held_write(actor)
    old = it.sp.spt[it.idx]  # the xchg returns the current value (fast PF / A-D may have set bits)
    if S.is_frozen_spte(old) or S.is_frozen_spte(new):
        raise ModelError(f"plain set of a FROZEN SPTE at gfn {it.gfn:#x}")
    it.sp.spt[it.idx] = new
    handle_changed_spte(vm, it.sp, it.idx, it.gfn, old, new, it.level, False)
    it.old_spte = new


def tdp_mmu_iter_cond_resched(vm: Vm, actor: Actor, flush: bool, shared: bool) -> Op[bool]:
    """tdp_mmu_iter_cond_resched(): if mmu_lock is contended, flush, drop it, re-take it."""
    if not vm.sched.contended(vm.mmu_lock):
        return False
    if flush and not vm.bug("zap_yield_without_flush"):
        from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs
        kvm_flush_remote_tlbs(vm, actor)
    if shared:
        vm.mmu_lock.read_unlock(actor)
        yield from preempt(Point.TDP_MMU_YIELD)
        yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    else:
        vm.mmu_lock.write_unlock(actor)
        yield from preempt(Point.TDP_MMU_YIELD)
        yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
    vm.ghost.event("tdp.yield")
    return True


def tdp_mmu_zap_leafs(vm: Vm, actor: Actor, root: KvmMmuPage, start: int, end: int,
                      can_yield: bool, flush: bool) -> Op[bool]:
    """tdp_mmu_zap_leafs(): zap every present leaf overlapping [start, end) (mmu_lock W)."""
    vm.mmu_lock.assert_held_write(actor)
    gfn, progress = start, False
    while True:
        restart = False
        for it in for_each_tdp_pte(vm, root, gfn, end, 1):
            if can_yield and progress:
                yielded = yield from tdp_mmu_iter_cond_resched(vm, actor, flush, False)
                if yielded:
                    flush, progress, gfn, restart = False, False, it.gfn, True
                    break
            if not S.is_shadow_present_pte(it.old_spte) or not S.is_last_spte(it.old_spte, it.level):
                continue
            tdp_mmu_iter_set_spte(vm, actor, it, S.SHADOW_NONPRESENT_VALUE)
            vm.ghost.event(f"spte.zap.L{it.level}")
            progress = True
            if not root.role_invalid:
                flush = True
        if not restart:
            return flush


def tdp_mmu_zap_root(vm: Vm, actor: Actor, root: KvmMmuPage, shared: bool) -> Op[None]:
    """tdp_mmu_zap_root(): zap everything below ``root`` (an invalid root: no flush needed)."""
    top = vm.arch.geo.pages(root.level)
    idx = 0
    while idx < vm.arch.geo.ptes_per_table:
        it = TdpIter(root, idx, root.level, root.gfn + idx * top, root.spt[idx])
        if S.is_shadow_present_pte(it.old_spte):
            if shared:
                if not tdp_mmu_set_spte_atomic(vm, it, S.SHADOW_NONPRESENT_VALUE):
                    continue  # lost a race: retry this entry
            else:
                tdp_mmu_iter_set_spte(vm, actor, it, S.SHADOW_NONPRESENT_VALUE)
            yield from tdp_mmu_iter_cond_resched(vm, actor, False, shared)
        idx += 1


def tdp_mmu_link_sp(vm: Vm, it: TdpIter, sp: KvmMmuPage) -> bool:
    """tdp_mmu_link_sp(): cmpxchg the parent SPTE to point at ``sp`` (shared)."""
    new = S.make_nonleaf_spte(vm.arch.masks, sp.pfn, not vm.config.ad_bits)
    if not tdp_mmu_set_spte_atomic(vm, it, new):
        return False
    sp.parent = (it.sp, it.idx)
    return True


def tdp_mmu_split_huge_page(vm: Vm, it: TdpIter, sp: KvmMmuPage) -> bool:
    """tdp_mmu_split_huge_page(): fill ``sp`` with the huge SPTE's pieces, then link it.

    No TLB flush: the translations are unchanged (reference §2.15 eager split, §3.9).
    """
    geo, m = vm.arch.geo, vm.arch.masks
    huge = it.old_spte
    src = it.sp.src.get(it.idx)
    for i in range(geo.ptes_per_table):
        sp.spt[i] = S.make_small_spte(m, geo, huge, it.level, i)
        if src is not None:
            sp.src[i] = src.offset(i * geo.pages(it.level - 1))
    ok = tdp_mmu_link_sp(vm, it, sp)
    if ok:
        vm.ghost.event(f"spte.split.L{it.level}")
    return ok


def kvm_tdp_mmu_unmap_gfn_range(vm: Vm, actor: Actor, as_id: int, start: int, end: int,
                                can_yield: bool, flush: bool) -> Op[bool]:
    """kvm_tdp_mmu_unmap_gfn_range(): zap leaves in *all* roots of the AS, valid or not."""
    for root in list(vm.arch.roots):
        if root.as_id != as_id or root.freed:
            continue
        flush = yield from tdp_mmu_zap_leafs(vm, actor, root, start, end, can_yield, flush)
    return flush
