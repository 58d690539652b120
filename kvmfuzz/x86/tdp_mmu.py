"""The TDP MMU: paging-structure pages, the iterator, SPTE updates, roots, zap, split
(arch/x86/kvm/mmu/tdp_mmu.c, tdp_iter.{c,h}; reference §2.3 F8, §2.14-2.16).

An SPTE pointer is ``(sp, index)``; ``sp.spt`` is the 512-entry (or ``2**level_bits``) table.
Updates go through ``tdp_mmu_set_spte_atomic`` (cmpxchg, under mmu_lock for read) or
``tdp_mmu_iter_set_spte`` (under mmu_lock for write), both followed by ``handle_changed_spte``,
which BUG()s on a present-leaf pfn change and tears down removed page tables; removed tables
are freed through RCU (x86/rcu.py) so that lockless walkers never touch freed memory.
``tdp_mmu_clear_spte_bits_atomic`` and ``__tdp_mmu_set_spte_atomic`` are the lockless updates
(atomic AND / bare cmpxchg, no bookkeeping) of aging and dirty-log protection.

``TdpWalk`` is ``for_each_tdp_pte_min_level`` with the iterator's yield bookkeeping: a walk that
yields mmu_lock (``tdp_mmu_iter_cond_resched``) restarts from the root at the position it
stopped at without advancing (3a0f64de479c), and yields again only after forward progress.
Roots are visited with a reference held (``__for_each_tdp_mmu_root_yield_safe``) by every walk
that may drop mmu_lock.

Ghost: every leaf SPTE records the ``Source`` it was built from (slot + hva, or guest_memfd
file + index) so invariants can compare it with the host's current pfn; every table records the
root it hangs below, whether it was ever reachable, and when it was handed to RCU; MMIO SPTEs
record the full memslot generation they were stamped with. ``handle_changed_spte`` records the
TLB entries that a zap or an MMU-writable clear in a valid root obliges someone to flush
(invariant I22).

Simplifications: no NX-huge-page tracking (``nx_huge_page_disallowed``, the recovery worker); no
TDX mirror/external roots; the cond_resched test is "someone waits for mmu_lock"
(rwlock_needbreak) -- need_resched() is modelled only where the walk offers an explicit
preemption point while holding the lock (huge-page recovery); page allocation never fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs

from kvmfuzz.errors import ModelError, ProtocolViolation
from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt, read_lock, write_lock
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.ghost import FlushDue

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
    """``struct kvm_mmu_page`` of the TDP MMU (a root when ``root``), plus ghost fields."""

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
    tdp_root: KvmMmuPage | None = None  # ghost: the root this table hangs below (None: itself)
    published: bool = False  # ghost: linked into a paging structure / put on the root list
    removed_at: int | None = None  # ghost: RCU clock of its call_rcu()
    mmio_gen: dict[int, tuple[int, bool]] = attrs.field(factory=dict)  # ghost: idx -> (gen, in update)

    @property
    def root_sp(self) -> KvmMmuPage:
        return self.tdp_root if self.tdp_root is not None else self

    def describe(self) -> str:
        kind = "root" if self.root else "sp"
        inv = " invalid" if self.role_invalid else ""
        freed = " (freed)" if self.freed else ""
        return f"{kind}#{self.id} L{self.level} gfn {self.gfn:#x}{inv}{freed}"


@attrs.define(eq=False)
class TdpIter:
    """``struct tdp_iter``: the SPTE at ``(sp, idx)``, its level, first gfn, and the value read."""

    sp: KvmMmuPage
    idx: int
    level: int
    gfn: int
    old_spte: int
    stepped_side: bool = False  # reached by try_step_side() (which moves next_last_level_gfn)


# -- page-table pages and roots ----------------------------------------------------------------

def tdp_mmu_alloc_sp(vm: Vm, level: int, gfn: int, as_id: int,
                     root: KvmMmuPage | None = None) -> KvmMmuPage:
    """tdp_mmu_alloc_sp() + tdp_mmu_init_sp(): a zeroed (all non-present) table."""
    arch = vm.arch
    folio = vm.pages.alloc(1, "pt")
    sp = KvmMmuPage(arch.next_sp_id, folio.head, level, gfn, as_id,
                    [S.SHADOW_NONPRESENT_VALUE] * arch.geo.ptes_per_table, tdp_root=root)
    arch.next_sp_id += 1
    arch.sp_by_pfn[sp.pfn] = sp
    return sp


def tdp_mmu_init_child_sp(sp: KvmMmuPage, it: TdpIter) -> None:
    """tdp_mmu_init_child_sp(): the child of ``it`` is one level down, at ``it.gfn``."""
    sp.level, sp.gfn, sp.as_id = it.level - 1, it.gfn, it.sp.as_id
    sp.tdp_root = it.sp.root_sp


def tdp_mmu_free_sp(vm: Vm, sp: KvmMmuPage) -> None:
    """tdp_mmu_free_sp(): free the table page (directly only if it was never published)."""
    if sp.freed:
        raise ModelError(f"double free of {sp.describe()}")
    sp.freed = True
    vm.arch.sp_by_pfn.pop(sp.pfn, None)
    vm.pages.put(vm.pages.folio(sp.pfn))
    vm.arch.rcu.note_freed(sp)


def spte_to_child_sp(vm: Vm, spte: int) -> KvmMmuPage:
    """spte_to_child_sp(): the table a non-leaf SPTE points to."""
    sp = vm.arch.sp_by_pfn.get(S.spte_to_pfn(spte))
    if sp is None:
        raise ModelError(f"non-leaf SPTE {spte:#x} points to no page table (use after free?)")
    return sp


def kvm_tdp_mmu_get_root(root: KvmMmuPage) -> bool:
    """kvm_tdp_mmu_get_root(): refcount_inc_not_zero()."""
    if root.root_refcount <= 0 or root.freed:
        return False
    root.root_refcount += 1
    return True


def kvm_tdp_mmu_put_root(vm: Vm, root: KvmMmuPage) -> None:
    """kvm_tdp_mmu_put_root(): the last reference takes the root off the list and frees it via
    RCU; KVM_BUG_ON if that last reference was put on a valid root."""
    if root.root_refcount <= 0:
        raise ModelError(f"put of {root.describe()} with refcount {root.root_refcount}")
    root.root_refcount -= 1
    if root.root_refcount:
        return
    if not root.role_invalid:
        vm.kvm_bug(f"last reference of valid {root.describe()} put")
    vm.arch.roots.remove(root)
    vm.arch.rcu.call_rcu(vm, root)
    vm.ghost.event("root.freed")


def tdp_mmu_roots(vm: Vm, as_id: int, only_valid: bool) -> list[KvmMmuPage]:
    """The roots ``__for_each_tdp_mmu_root_yield_safe`` may visit (snapshot of the RCU list);
    the caller takes a reference with ``kvm_tdp_mmu_get_root`` before using each one."""
    return [r for r in vm.arch.roots
            if (as_id < 0 or r.as_id == as_id) and not (only_valid and r.role_invalid)]


# -- the iterator --------------------------------------------------------------------------------

def for_each_tdp_pte(vm: Vm, root: KvmMmuPage, start: int, end: int,
                     min_level: int = 1) -> Iterator[TdpIter]:
    """for_each_tdp_pte_min_level(): pre-order over the SPTEs overlapping [start, end).

    Each SPTE is read when the iterator reaches it; the walk steps down through ``it.old_spte``
    as the caller left it (after a set, the new value; possibly stale), as tdp_iter_next() does.
    """
    geo = vm.arch.geo

    def walk(sp: KvmMmuPage) -> Iterator[TdpIter]:
        span = geo.pages(sp.level)
        first = max(0, (start - sp.gfn) // span)
        for idx in range(first, geo.ptes_per_table):
            gfn = sp.gfn + idx * span
            if gfn >= end:
                return
            it = TdpIter(sp, idx, sp.level, gfn, sp.spt[idx], idx > first)
            yield it
            if (sp.level > min_level and S.is_shadow_present_pte(it.old_spte)
                    and not S.is_last_spte(it.old_spte, sp.level)):
                yield from walk(spte_to_child_sp(vm, it.old_spte))

    yield from walk(root)


class TdpWalk:
    """``for_each_tdp_pte_min_level`` plus tdp_iter's yield bookkeeping.

    ``cond_resched`` is ``tdp_mmu_iter_cond_resched``: it yields only after forward progress
    (``next_last_level_gfn != yielded_gfn``) and when mmu_lock is contended; after a yield (or
    ``restart``) the walk restarts from the root at the current position, not advancing.
    """

    def __init__(self, vm: Vm, root: KvmMmuPage, start: int, end: int, min_level: int = 1):
        self.vm, self.root, self.start, self.end, self.min_level = vm, root, start, end, min_level
        self.next_gfn = start  # next_last_level_gfn
        self.yielded_gfn = start  # tdp_iter_start() / tdp_iter_restart()
        self._restart = False

    def __iter__(self) -> Iterator[TdpIter]:
        while True:
            self._restart = False
            for it in for_each_tdp_pte(self.vm, self.root, self.next_gfn, self.end, self.min_level):
                if it.stepped_side:
                    self.next_gfn = it.gfn
                yield it
                if self._restart:
                    break
            else:
                return

    def restart(self) -> None:
        """iter.yielded = true: the next step restarts the walk from the root."""
        self.yielded_gfn = self.next_gfn
        self._restart = True

    def need_resched(self) -> bool:
        """tdp_mmu_iter_need_resched(): progress since the last yield, and mmu_lock contended."""
        if self.next_gfn == self.yielded_gfn:
            return False
        return self.vm.sched.contended(self.vm.mmu_lock)

    def cond_resched(self, actor: Actor, flush: bool, shared: bool) -> Op[bool]:
        """tdp_mmu_iter_cond_resched(): flush, drop RCU and mmu_lock, re-take them, restart."""
        if not self.need_resched():
            return False
        yield from tdp_mmu_yield_lock(self.vm, actor, flush, shared)
        self.restart()
        return True


def tdp_mmu_yield_lock(vm: Vm, actor: Actor, flush: bool, shared: bool,
                       point: Point = Point.TDP_MMU_YIELD) -> Op[None]:
    """The yielding half of tdp_mmu_iter_cond_resched(): a pending flush first, then
    rcu_read_unlock + unlock, cond_resched(), lock + rcu_read_lock."""
    if flush and not vm.bug("zap_yield_without_flush"):
        from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs
        kvm_flush_remote_tlbs(vm, actor)
    vm.arch.rcu.read_unlock(vm, actor)
    if shared:
        vm.mmu_lock.read_unlock(actor)
        yield from preempt(point)
        yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    else:
        vm.mmu_lock.write_unlock(actor)
        yield from preempt(point)
        yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
    vm.arch.rcu.read_lock(actor)
    vm.ghost.event("tdp.yield")


# -- SPTE updates --------------------------------------------------------------------------------

def handle_removed_pt(vm: Vm, sp: KvmMmuPage, shared: bool) -> None:
    """handle_removed_pt(): freeze the children, recurse into them, free the table after RCU."""
    sp.parent = None
    geo = vm.arch.geo
    for idx in range(geo.ptes_per_table):
        old = sp.spt[idx]
        # unreachable(true): no path under exclusive mmu_lock removes a page table: tdp_mmu_iter_set_spte()
        #   only changes leaves or links over a huge leaf; tables are removed under mmu_lock (R)
        if not shared and not S.is_shadow_present_pte(old):
            continue  # exclusive mmu_lock: nothing can make it present; MMIO SPTEs may stay
        if S.is_frozen_spte(old):
            raise ModelError(f"child {idx} of removed {sp.describe()} frozen by someone else")
        sp.spt[idx] = S.FROZEN_SPTE
        handle_changed_spte(vm, sp, idx, sp.gfn + idx * geo.pages(sp.level), old,
                            S.FROZEN_SPTE, sp.level, shared)
    vm.arch.rcu.call_rcu(vm, sp)


def _note_flush_due(vm: Vm, sp: KvmMmuPage, gfn: int, level: int, what: str) -> None:
    """Ghost (I22): TLB entries a zap / MMU-writable clear in a valid root left behind."""
    root = sp.root_sp
    actor = vm.sched.last
    if root.role_invalid or actor is None:
        return
    end = gfn + vm.arch.geo.pages(level)
    entries = tuple((v.id, e) for v in vm.vcpus for e in v.tlb.entries.values()
                    if e.root_id == root.id and gfn <= e.gfn < end)
    if entries:
        ghost = vm.arch.ghost
        ghost.flush_due.append(FlushDue(actor.name, actor.ops_done, vm.arch.flush_at_return,
                                        root.id, gfn, level, what, entries))


def handle_changed_spte(vm: Vm, sp: KvmMmuPage, idx: int, gfn: int, old: int, new: int,
                        level: int, shared: bool) -> None:
    """handle_changed_spte(): BUG on pfn change of a present leaf; tear down removed tables."""
    was_present = S.is_shadow_present_pte(old)
    is_present = S.is_shadow_present_pte(new)
    was_leaf = was_present and S.is_last_spte(old, level)
    is_leaf = is_present and S.is_last_spte(new, level)
    m = vm.arch.masks
    if was_leaf and is_leaf and S.spte_to_pfn(old) != S.spte_to_pfn(new):
        raise PresentLeafPfnChange(
            f"gfn {gfn:#x} L{level} in {sp.describe()}: {S.format_spte(m, old, level)} -> "
            f"{S.format_spte(m, new, level)} without passing through non-present")
    if was_leaf and not is_present:
        _note_flush_due(vm, sp, gfn, level, "zapped")
    elif was_leaf and is_leaf and S.leaf_spte_change_needs_tlb_flush(m, old, new):
        _note_flush_due(vm, sp, gfn, level, "lost MMU-writable")
    if not is_leaf:
        sp.src.pop(idx, None)
    if was_present and not was_leaf and (is_leaf or not is_present):
        handle_removed_pt(vm, spte_to_child_sp(vm, old), shared)


def tdp_mmu_set_spte_atomic(vm: Vm, it: TdpIter, new: int) -> bool:
    """tdp_mmu_set_spte_atomic(): cmpxchg; on failure refresh ``it.old_spte``, return False."""
    current = it.sp.spt[it.idx]
    # unreachable(true): every caller reads the SPTE and cmpxchgs it in one atomic step, except huge-page
    #   recovery, whose tdp_mmu_make_huge_spte() returns -ENOENT when the parent changed during
    #   TDP_RECOVER_HUGE
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


def __tdp_mmu_set_spte_atomic(vm: Vm, it: TdpIter, new: int) -> bool:
    """__tdp_mmu_set_spte_atomic(): the bare cmpxchg (no handle_changed_spte), for lockless
    aging; on failure ``it.old_spte`` is refreshed."""
    current = it.sp.spt[it.idx]
    if current != it.old_spte:
        it.old_spte = current
        return False
    it.sp.spt[it.idx] = new
    it.old_spte = new
    return True


def tdp_mmu_clear_spte_bits_atomic(it: TdpIter, mask: int) -> int:
    """tdp_mmu_clear_spte_bits_atomic(): atomic64_fetch_and(~mask) on whatever the SPTE holds
    now; returns (and stores in ``it.old_spte``) the value before."""
    old = it.sp.spt[it.idx]
    it.sp.spt[it.idx] = old & ~mask
    it.old_spte = old
    return old


def tdp_mmu_iter_set_spte(vm: Vm, actor: Actor, it: TdpIter, new: int) -> None:
    """tdp_mmu_iter_set_spte() under mmu_lock for write (xchg when the SPTE is volatile)."""
    vm.mmu_lock.assert_held_write(actor)
    old = it.sp.spt[it.idx]  # the xchg returns the current value (fast PF / A-D may have set bits)
    if S.is_frozen_spte(old) or S.is_frozen_spte(new):
        raise ModelError(f"plain set of a FROZEN SPTE at gfn {it.gfn:#x}")
    it.sp.spt[it.idx] = new
    handle_changed_spte(vm, it.sp, it.idx, it.gfn, old, new, it.level, False)
    it.old_spte = new


# -- zapping ------------------------------------------------------------------------------------

def tdp_mmu_zap_leafs(vm: Vm, actor: Actor, root: KvmMmuPage, start: int, end: int,
                      can_yield: bool, flush: bool) -> Op[bool]:
    """tdp_mmu_zap_leafs(): zap every present leaf overlapping [start, end) (mmu_lock W)."""
    vm.mmu_lock.assert_held_write(actor)
    end = min(end, vm.arch.geo.max_gfn)
    rcu = vm.arch.rcu
    rcu.read_lock(actor)
    walk = TdpWalk(vm, root, start, end, 1)
    for it in walk:
        if can_yield and (yield from walk.cond_resched(actor, flush, False)):
            # (planted zap_yield_without_flush: the flush is still pending, done at the end,
            # as before a835429cda91)
            flush = flush and vm.bug("zap_yield_without_flush")
            continue
        if not S.is_shadow_present_pte(it.old_spte) or not S.is_last_spte(it.old_spte, it.level):
            continue
        tdp_mmu_iter_set_spte(vm, actor, it, S.SHADOW_NONPRESENT_VALUE)
        vm.ghost.event(f"spte.zap.L{it.level}")
        if not root.role_invalid:  # zapping in an invalid root needs no flush
            flush = True
    rcu.read_unlock(vm, actor)
    return flush


def __tdp_mmu_zap_root(vm: Vm, actor: Actor, root: KvmMmuPage, shared: bool,
                       zap_level: int) -> Op[None]:
    """__tdp_mmu_zap_root(): zap every present SPTE at ``zap_level`` and below it."""
    walk = TdpWalk(vm, root, 0, vm.arch.geo.max_gfn, zap_level)
    for it in walk:
        while True:  # retry:
            if (yield from walk.cond_resched(actor, False, shared)):
                break
            if not S.is_shadow_present_pte(it.old_spte) or it.level > zap_level:
                break
            # unreachable(true): tdp_mmu_zap_root() is only called by kvm_tdp_mmu_zap_invalidated_roots(),
            #   with shared=True
            if not shared:
                tdp_mmu_iter_set_spte(vm, actor, it, S.SHADOW_NONPRESENT_VALUE)
                break
            # unreachable(false): the walk reads the SPTE and cmpxchgs it in one atomic step (cond_resched()
            #   restarts the walk when it yields), so the cmpxchg cannot fail
            if tdp_mmu_set_spte_atomic(vm, it, S.SHADOW_NONPRESENT_VALUE):
                break


def tdp_mmu_zap_root(vm: Vm, actor: Actor, root: KvmMmuPage, shared: bool) -> Op[None]:
    """tdp_mmu_zap_root(): zap an (invalid) root in passes of decreasing granularity, 4K leaves
    first, then the top level; no TLB flush (no vCPU can use an invalid root)."""
    if not root.root_refcount:
        from kvmfuzz.virt.notifier import warn
        warn(vm, f"zapping {root.describe()} with no reference")
    vm.mmu_lock.assert_held(actor)
    rcu = vm.arch.rcu
    rcu.read_lock(actor)
    yield from __tdp_mmu_zap_root(vm, actor, root, shared, 1)
    yield from __tdp_mmu_zap_root(vm, actor, root, shared, root.level)
    rcu.read_unlock(vm, actor)


def kvm_tdp_mmu_unmap_gfn_range(vm: Vm, actor: Actor, as_id: int, start: int, end: int,
                                can_yield: bool, flush: bool) -> Op[bool]:
    """kvm_tdp_mmu_unmap_gfn_range(): zap leaves in *all* roots of the AS, valid or not."""
    for root in tdp_mmu_roots(vm, as_id, False):
        if not kvm_tdp_mmu_get_root(root):
            continue
        flush = yield from tdp_mmu_zap_leafs(vm, actor, root, start, end, can_yield, flush)
        kvm_tdp_mmu_put_root(vm, root)
    return flush


def kvm_tdp_mmu_zap_leafs(vm: Vm, actor: Actor, start: int, end: int, flush: bool) -> Op[bool]:
    """kvm_tdp_mmu_zap_leafs(): zap leaves in the range in every *valid* root of every AS."""
    vm.mmu_lock.assert_held_write(actor)
    for root in tdp_mmu_roots(vm, -1, True):
        # unreachable(true): at most one valid root exists (every vCPU uses address space 0 and
        #   kvm_tdp_mmu_alloc_root() reuses the valid root), and its reference is taken in the atomic step
        #   that listed it, while it still holds the MMU's reference
        if not kvm_tdp_mmu_get_root(root):
            continue
        flush = yield from tdp_mmu_zap_leafs(vm, actor, root, start, end, True, flush)
        kvm_tdp_mmu_put_root(vm, root)
    return flush


# -- linking and splitting --------------------------------------------------------------------------

def tdp_mmu_link_sp(vm: Vm, it: TdpIter, sp: KvmMmuPage, shared: bool = True,
                    actor: Actor | None = None) -> bool:
    """tdp_mmu_link_sp(): point the parent SPTE at ``sp`` (cmpxchg when shared)."""
    new = S.make_nonleaf_spte(vm.arch.masks, sp.pfn, not vm.config.ad_bits)
    if shared:
        # unreachable(true): every caller (fault walk, split) reads the SPTE and links in one atomic step, so
        #   the cmpxchg cannot fail
        if not tdp_mmu_set_spte_atomic(vm, it, new):
            return False
    else:
        assert actor is not None
        tdp_mmu_iter_set_spte(vm, actor, it, new)
    sp.parent = (it.sp, it.idx)
    sp.published = True
    return True


def tdp_mmu_split_huge_page(vm: Vm, it: TdpIter, sp: KvmMmuPage, shared: bool = True,
                            actor: Actor | None = None) -> bool:
    """tdp_mmu_split_huge_page(): fill ``sp`` with the huge SPTE's pieces, then link it.

    No TLB flush: the translations are unchanged (reference §2.15 eager split, §3.9).
    """
    geo, m = vm.arch.geo, vm.arch.masks
    huge = it.old_spte
    src = it.sp.src.get(it.idx)
    sp.src.clear()
    for i in range(geo.ptes_per_table):
        sp.spt[i] = S.make_small_spte(m, geo, huge, it.level, i)
        # unreachable(false): ghost: every present leaf records its Source (a fault always resolves one; split
        #   and huge-page recovery copy it)
        if src is not None:
            sp.src[i] = src.offset(i * geo.pages(it.level - 1))
    ok = tdp_mmu_link_sp(vm, it, sp, shared, actor)
    # unreachable(false): the link cannot fail: every caller reads the huge SPTE and splits it in one atomic
    #   step
    if ok:
        vm.ghost.event(f"spte.split.L{it.level}")
    return ok


def tdp_mmu_split_huge_pages_root(vm: Vm, actor: Actor, root: KvmMmuPage, start: int, end: int,
                                  target_level: int, shared: bool) -> Op[None]:
    """tdp_mmu_split_huge_pages_root(): split every huge leaf above ``target_level`` one level
    down (pre-order, so a 1G leaf becomes 2M leaves that are split in turn). The table is
    allocated with mmu_lock dropped; the walk then restarts from the root."""
    rcu = vm.arch.rcu
    sp: KvmMmuPage | None = None
    rcu.read_lock(actor)
    walk = TdpWalk(vm, root, start, end, target_level + 1)
    for it in walk:
        while True:  # retry:
            if (yield from walk.cond_resched(actor, False, shared)):
                break
            if not S.is_shadow_present_pte(it.old_spte) or not S.is_large_pte(it.old_spte):
                break
            if sp is None:
                rcu.read_unlock(vm, actor)
                if shared:
                    vm.mmu_lock.read_unlock(actor)
                else:
                    vm.mmu_lock.write_unlock(actor)
                yield from preempt(Point.TDP_SPLIT_ALLOC)  # GFP_KERNEL_ACCOUNT allocation
                if shared:
                    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
                else:
                    yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
                sp = tdp_mmu_alloc_sp(vm, 0, 0, root.as_id, root)
                rcu.read_lock(actor)
                walk.restart()
                break
            tdp_mmu_init_child_sp(sp, it)
            # unreachable(false): the split cannot fail: the huge SPTE was read in this atomic step (after a
            #   yield the walk restarts and re-reads it)
            if tdp_mmu_split_huge_page(vm, it, sp, shared, actor):
                sp = None
                break
            # lost a race: it.old_spte was refreshed, try again
    rcu.read_unlock(vm, actor)
    if sp is not None:
        tdp_mmu_free_sp(vm, sp)  # never linked: no RCU needed


def kvm_tdp_mmu_try_split_huge_pages(vm: Vm, actor: Actor, as_id: int, start: int, end: int,
                                     target_level: int, shared: bool) -> Op[None]:
    """kvm_tdp_mmu_try_split_huge_pages(): split in every valid root of the slot's AS."""
    vm.mmu_lock.assert_held(actor)
    for root in tdp_mmu_roots(vm, as_id, True):
        # unreachable(true): at most one valid root exists (every vCPU uses address space 0 and
        #   kvm_tdp_mmu_alloc_root() reuses the valid root), and its reference is taken in the atomic step
        #   that listed it, while it still holds the MMU's reference
        if not kvm_tdp_mmu_get_root(root):
            continue
        yield from tdp_mmu_split_huge_pages_root(vm, actor, root, start, end, target_level, shared)
        kvm_tdp_mmu_put_root(vm, root)


# -- lockless lookups -----------------------------------------------------------------------------

def kvm_tdp_mmu_fast_pf_get_last_sptep(vm: Vm, root: KvmMmuPage, gfn: int) -> TdpIter | None:
    """kvm_tdp_mmu_fast_pf_get_last_sptep(): the last SPTE on the walk to ``gfn`` (under RCU)."""
    last = None
    for it in for_each_tdp_pte(vm, root, gfn, gfn + 1):
        last = it
    return last
