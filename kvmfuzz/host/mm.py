"""The VMM's address space (the "primary MMU") and the mm operations that fire MMU notifiers.

Models what KVM sees of mm/: ``struct mm_struct`` page tables for the guest-memory mapping
(4K PTEs and PMD-mapped THPs), ``get_user_pages`` as KVM's ``hva_to_pfn()`` calls it, and the
host operations of the reference §6 "Host model", each bracketed by
``mmu_notifier_invalidate_range_start`` ... change ... ``mmu_notifier_invalidate_range_end`` as
mm/ brackets them: zap_page_range_single (madvise DONTNEED), unmap_region (munmap),
change_protection (mprotect), migrate_pages, __split_huge_pmd, collapse_huge_page.

Addresses are host virtual *pages* (hva >> 12). The host's huge page is the guest's 2M level
of the current geometry, so host and guest agree on what "huge" means.

Simplifications (and why they are safe for the KVM protocol):
- mmap_lock is not modelled: KVM's correctness rests on the notifier bracket alone, and GUP
  is one atomic step (GUP-fast re-checks the PTE after taking its reference).
- An anonymous read fault populates a private zeroed page, not the shared zero page (no COW).
- A VMA is the per-page protection map ``prot``; munmap removes pages from it; mmap adds
  them back (no notifier: populating empty page tables never invalidates).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import attrs

from kvmfuzz.errors import ModelError
from kvmfuzz.host.pages import Folio, PageAllocator
from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt
from kvmfuzz.units import HvaRange

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor


class MmuNotifier(Protocol):
    """``struct mmu_notifier_ops`` as the model's mm calls it (KVM implements it)."""

    def invalidate_range_start(self, actor: Actor, rng: HvaRange) -> Op[None]: ...

    def invalidate_range_end(self, actor: Actor, rng: HvaRange) -> Op[None]: ...

    def clear_flush_young(self, actor: Actor, rng: HvaRange) -> Op[bool]: ...

    def clear_young(self, actor: Actor, rng: HvaRange) -> Op[bool]: ...

    def test_young(self, actor: Actor, rng: HvaRange) -> Op[bool]: ...


@attrs.frozen
class HostMapping:
    """What the host page table says about one hva page."""

    pfn: int
    writable: bool
    level: int  # 1 = PTE-mapped, 2 = PMD-mapped THP
    folio: Folio


@attrs.define(eq=False)
class Mm:
    """``struct mm_struct`` of the VMM: page tables of the guest-memory mapping."""

    pages: PageAllocator
    huge_pages: int  # host huge page size in 4K pages (== guest 2M level)
    thp: bool
    prot: dict[int, bool] = attrs.field(factory=dict)  # hva -> writable (VMA present)
    ptes: dict[int, Folio] = attrs.field(factory=dict)  # hva -> folio (4K mapping)
    pmds: dict[int, Folio] = attrs.field(factory=dict)  # aligned hva -> huge folio
    notifiers: list[MmuNotifier] = attrs.field(factory=list)

    # -- mmap / lookups -------------------------------------------------------------------
    def mmap(self, rng: HvaRange, writable: bool = True) -> None:
        """mmap(MAP_ANONYMOUS): a VMA over ``rng``; pages are populated on first touch."""
        for hva in range(rng.start, rng.end):
            if hva in self.prot:
                raise ModelError(f"mmap over mapped hva {hva:#x}")
            self.prot[hva] = writable

    def huge_base(self, hva: int) -> int:
        return hva - hva % self.huge_pages

    def lookup(self, hva: int) -> HostMapping | None:
        """Walk the host page table for ``hva`` (follow_pte / the PMD check)."""
        base = self.huge_base(hva)
        folio = self.pmds.get(base)
        if folio is not None:
            return HostMapping(folio.head + hva - base, self.prot[hva], 2, folio)
        folio = self.ptes.get(hva)
        if folio is None:
            return None
        return HostMapping(folio.head + self._index(folio, hva), self.prot[hva], 1, folio)

    def _index(self, folio: Folio, hva: int) -> int:
        return 0 if folio.nr_pages == 1 else hva - self.huge_base(hva)

    def host_pfn_mapping_level(self, hva: int) -> int:
        """host_pfn_mapping_level(): the level the host maps ``hva`` at (4K if not mapped)."""
        return 2 if self.huge_base(hva) in self.pmds else 1

    # -- page faults and GUP --------------------------------------------------------------
    def handle_mm_fault(self, hva: int) -> HostMapping | None:
        """Populate ``hva``: a THP if enabled and the aligned range is empty and uniform."""
        # unreachable(true): both callers (get_user_page, host_write) return before calling handle_mm_fault()
        #   for an hva without a VMA
        if hva not in self.prot:
            return None
        base = self.huge_base(hva)
        span = range(base, base + self.huge_pages)
        if (self.thp and self.huge_pages > 1 and base not in self.pmds
                and all(h in self.prot and h not in self.ptes for h in span)
                and len({self.prot[h] for h in span}) == 1):
            self.pmds[base] = self.pages.alloc(self.huge_pages, "anon")
        # unreachable(false): redundant re-check: both callers call handle_mm_fault() only after lookup(hva)
        #   returned None, and nothing mapped it since
        elif self.lookup(hva) is None:
            self.ptes[hva] = self.pages.alloc(1, "anon")
        return self.lookup(hva)

    def get_user_page(self, hva: int, write: bool) -> HostMapping | None:
        """get_user_pages for one page, as KVM's hva_to_pfn() uses it.

        Returns the mapping with a reference taken on its folio, or None (-EFAULT: no VMA,
        or a write to a read-only VMA). The caller drops the reference with folio_put.
        """
        if hva not in self.prot or (write and not self.prot[hva]):
            return None
        mapping = self.lookup(hva) or self.handle_mm_fault(hva)
        if mapping is None:
            raise ModelError(f"fault-in of hva {hva:#x} failed")
        self.pages.get(mapping.folio)
        return mapping

    # -- page-table edits (only between notifier start and end) --------------------------
    def _unmap_pte(self, hva: int) -> None:
        folio = self.ptes.pop(hva, None)
        if folio is not None:
            self.pages.put(folio)

    def _split_pmd_locked(self, base: int) -> None:
        """__split_huge_pmd_locked(): the PMD becomes PTEs onto the same folio."""
        folio = self.pmds.pop(base)
        for i in range(self.huge_pages):
            self.ptes[base + i] = folio
        folio.refcount += self.huge_pages - 1  # each PTE mapping holds a reference

    def _partial_huge(self, rng: HvaRange) -> list[int]:
        bases = {self.huge_base(rng.start), self.huge_base(rng.end - 1)}
        return sorted(b for b in bases if b in self.pmds
                      and not (rng.start <= b and b + self.huge_pages <= rng.end))

    def _notify_start(self, actor: Actor, rng: HvaRange) -> Op[None]:
        for mn in self.notifiers:
            yield from mn.invalidate_range_start(actor, rng)

    def _notify_end(self, actor: Actor, rng: HvaRange) -> Op[None]:
        for mn in self.notifiers:
            yield from mn.invalidate_range_end(actor, rng)

    def split_huge_pmd(self, actor: Actor, base: int) -> Op[None]:
        """__split_huge_pmd(): its own notifier bracket over the whole huge range."""
        rng = HvaRange(base, base + self.huge_pages)
        yield from self._notify_start(actor, rng)
        yield from preempt(Point.HOST_PTE_CHANGE)
        if base in self.pmds:
            self._split_pmd_locked(base)
        yield from self._notify_end(actor, rng)

    def _split_partial(self, actor: Actor, rng: HvaRange) -> Op[None]:
        """Split every THP that ``rng`` covers only in part (zap_pmd_range / change_pmd_range
        -> __split_huge_pmd), re-checking after each split's notifiers gave up control."""
        while parts := self._partial_huge(rng):
            yield from self.split_huge_pmd(actor, parts[0])

    def zap_range(self, actor: Actor, rng: HvaRange, unmap_vma: bool) -> Op[None]:
        """zap_page_range_single() (DONTNEED) / unmap_region() (munmap)."""
        yield from self._notify_start(actor, rng)
        yield from preempt(Point.HOST_PTE_CHANGE)
        yield from self._split_partial(actor, rng)
        for base in sorted(b for b in self.pmds
                           if rng.start <= b and b + self.huge_pages <= rng.end):
            self.pages.put(self.pmds.pop(base))
        for hva in range(rng.start, rng.end):
            self._unmap_pte(hva)
            if unmap_vma:
                self.prot.pop(hva, None)
        yield from self._notify_end(actor, rng)

    def change_protection(self, actor: Actor, rng: HvaRange, writable: bool) -> Op[None]:
        """mprotect() -> change_protection(): notifier bracket around the PTE updates."""
        yield from self._notify_start(actor, rng)
        yield from preempt(Point.HOST_PTE_CHANGE)
        yield from self._split_partial(actor, rng)
        for hva in range(rng.start, rng.end):
            if hva in self.prot:
                self.prot[hva] = writable
        yield from self._notify_end(actor, rng)

    def migrate(self, actor: Actor, hva: int) -> Op[bool]:
        """migrate_pages() of the folio at ``hva``: try_to_migrate, copy, remap.

        Fails (PTEs restored, same PFN) when someone else holds a reference, as
        folio_migrate_mapping's refcount check does; the notifier bracket runs either way.
        """
        mapping = self.lookup(hva)
        if mapping is None or (mapping.level == 1 and mapping.folio.nr_pages > 1):
            return False  # nothing there, or a PTE-mapped THP (would need a folio split)
        folio = mapping.folio
        huge = mapping.level == 2
        base = self.huge_base(hva) if huge else hva
        rng = HvaRange(base, base + folio.nr_pages)
        yield from self._notify_start(actor, rng)
        yield from preempt(Point.HOST_PTE_CHANGE)
        still = (self.pmds.get(base) is folio) if huge else (self.ptes.get(hva) is folio)
        moved = still and folio.refcount == 1  # only the mapping's reference: no pins
        if moved:
            new = self.pages.alloc(folio.nr_pages, "anon", folio.content)
            if huge:
                self.pmds[base] = new
            else:
                self.ptes[hva] = new
            self.pages.put(folio)
        yield from self._notify_end(actor, rng)
        return moved

    def split_thp(self, actor: Actor, hva: int) -> Op[bool]:
        """split_huge_pmd() of the THP mapping ``hva`` (the folio stays whole)."""
        base = self.huge_base(hva)
        if base not in self.pmds:
            return False
        yield from self.split_huge_pmd(actor, base)
        return True

    def collapse(self, actor: Actor, hva: int) -> Op[bool]:
        """khugepaged collapse_huge_page(): copy 4K pages into a new THP, map it by PMD."""
        base = self.huge_base(hva)
        span = range(base, base + self.huge_pages)
        if (not self.thp or self.huge_pages == 1 or base in self.pmds
                or any(h not in self.prot for h in span)
                or len({self.prot[h] for h in span}) != 1):
            return False
        rng = HvaRange(base, base + self.huge_pages)
        yield from self._notify_start(actor, rng)
        yield from preempt(Point.HOST_PTE_CHANGE)
        ok = base not in self.pmds and all(h in self.prot for h in span)
        if ok:
            content = [self.pages.read(m.pfn) if (m := self.lookup(h)) else 0 for h in span]
            for h in span:
                self._unmap_pte(h)
            self.pmds[base] = self.pages.alloc(self.huge_pages, "anon", content)
        yield from self._notify_end(actor, rng)
        return ok

    def age(self, actor: Actor, rng: HvaRange, flush: bool) -> Op[bool]:
        """folio_referenced() -> mmu_notifier_clear_flush_young / clear_young."""
        young = False
        for mn in self.notifiers:
            if flush:
                young |= yield from mn.clear_flush_young(actor, rng)
            else:
                young |= yield from mn.clear_young(actor, rng)
        return young

    def host_write(self, hva: int, token: int) -> bool:
        """The VMM stores to guest memory through its mapping (faults the page in)."""
        if hva not in self.prot or not self.prot[hva]:
            return False
        mapping = self.lookup(hva) or self.handle_mm_fault(hva)
        # unreachable(true): handle_mm_fault() returns None only for an hva without a VMA, which host_write()
        #   ruled out above
        if mapping is None:
            return False
        self.pages.write(mapping.pfn, token)
        return True
