"""Host physical memory: folios with a PFN, a refcount and per-page content tokens.

Models the parts of mm/ (folio refcounts, put_page freeing, alloc_pages of an order) that the
KVM protocol relies on: a page is freed only when its last reference is gone, and a freed
PFN must never stay mapped by an SPTE or a TLB entry.

Simplifications: PFNs are never reused (a freed PFN stays recorded as freed, so a stale
mapping of it is always detectable); a folio is 1 page or one host huge page (the guest's
2M level of the current geometry); content is an integer token per 4K page (0 = zeroed),
not bytes.
"""

from __future__ import annotations

import attrs

from kvmfuzz.errors import ModelError


@attrs.define(eq=False)
class Folio:
    """``struct folio``: ``nr_pages`` contiguous PFNs from ``head``; one refcount for all."""

    head: int
    nr_pages: int
    refcount: int
    content: list[int]
    owner: str  # "anon" or "gmem": who allocated it (for invariants P1/6)
    freed: bool = False
    poisoned: bool = False

    def contains(self, pfn: int) -> bool:
        return self.head <= pfn < self.head + self.nr_pages


@attrs.define(eq=False)
class PageAllocator:
    """alloc_pages()/folio_put(): PFNs handed out in increasing order, aligned to the size."""

    next_pfn: int = 0x100
    folios: dict[int, Folio] = attrs.field(factory=dict)  # every pfn -> its folio
    nr_freed: int = 0

    def alloc(self, nr_pages: int, owner: str, content: list[int] | None = None) -> Folio:
        """Allocate a zeroed (or given-content) folio holding one reference."""
        head = -(-self.next_pfn // nr_pages) * nr_pages  # align up
        self.next_pfn = head + nr_pages
        folio = Folio(head, nr_pages, 1, list(content) if content else [0] * nr_pages, owner)
        for pfn in range(head, head + nr_pages):
            self.folios[pfn] = folio
        return folio

    def folio(self, pfn: int) -> Folio:
        try:
            return self.folios[pfn]
        except KeyError:
            raise ModelError(f"pfn {pfn:#x} was never allocated") from None

    def is_freed(self, pfn: int) -> bool:
        folio = self.folios.get(pfn)
        return folio is None or folio.freed

    def get(self, folio: Folio) -> None:
        """folio_get(): take a reference on a live folio."""
        if folio.freed:
            raise ModelError(f"folio_get on freed pfn {folio.head:#x}")
        folio.refcount += 1

    def put(self, folio: Folio) -> None:
        """folio_put(): drop a reference; the last one frees the folio."""
        if folio.freed or folio.refcount <= 0:
            raise ModelError(f"folio_put on pfn {folio.head:#x} refcount {folio.refcount}")
        folio.refcount -= 1
        if folio.refcount == 0:
            folio.freed = True
            self.nr_freed += 1

    def read(self, pfn: int) -> int:
        folio = self.folio(pfn)
        return folio.content[pfn - folio.head]

    def write(self, pfn: int, token: int) -> None:
        folio = self.folio(pfn)
        folio.content[pfn - folio.head] = token
