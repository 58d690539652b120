"""Paging geometry of the TDP tree: levels, fan-out, what one entry covers.

Models the level arithmetic of arch/x86/kvm/mmu/mmu_internal.h / tdp_iter.h
(``KVM_PAGES_PER_HPAGE``, ``SPTE_INDEX``, ``PT64_LEVEL_BITS``).

Simplification (the reference's "width knob", §6): the fan-out is a parameter. The kernel's is
512 entries per table (``level_bits = 9``); campaigns use a smaller fan-out (4 or 8 entries) so
that huge pages, slot edges and level boundaries are reached with small gfn numbers. Only the
geometry changes: SPTE bit layouts (spte.py) are the kernel's, bit for bit, whatever the fan-out.
"""

from __future__ import annotations

import attrs

from kvmfuzz.errors import InvalidArgument


@attrs.frozen
class Geometry:
    """``level_bits`` index bits per level; ``root_level`` 4 or 5; leaves up to ``max_huge_level``."""

    level_bits: int = 9
    root_level: int = 4
    max_huge_level: int = 3  # KVM_MAX_HUGEPAGE_LEVEL = PG_LEVEL_1G

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.level_bits <= 9:
            raise InvalidArgument(f"level_bits {self.level_bits}: expected 1..9")
        if self.root_level not in (4, 5):
            raise InvalidArgument(f"root_level {self.root_level}: expected 4 or 5")
        if not 1 <= self.max_huge_level <= 3:
            raise InvalidArgument(f"max_huge_level {self.max_huge_level}: expected 1..3")

    @property
    def ptes_per_table(self) -> int:
        return 1 << self.level_bits

    def pages(self, level: int) -> int:
        """KVM_PAGES_PER_HPAGE(level): gfns covered by one entry at ``level``."""
        return 1 << (self.level_bits * (level - 1))

    def index(self, gfn: int, level: int) -> int:
        """SPTE_INDEX(gfn << PAGE_SHIFT, level): the entry for ``gfn`` in a level-``level`` table."""
        return (gfn >> (self.level_bits * (level - 1))) & (self.ptes_per_table - 1)

    def align_down(self, gfn: int, level: int) -> int:
        return gfn & ~(self.pages(level) - 1)

    @property
    def max_gfn(self) -> int:
        """One past the highest gfn a root of ``root_level`` can map."""
        return self.pages(self.root_level + 1)


KERNEL_GEOMETRY = Geometry()
