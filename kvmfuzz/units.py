"""Units of the model, as NewTypes, and the half-open ranges built from them.

``gfn`` guest frame number, ``pfn`` host frame number, ``hva`` host virtual *page* number
(the model keeps host addresses in pages: hva page = address >> 12), ``gpa`` guest physical
address, ``level`` 1 = 4 KiB, ``npages`` a count of 4 KiB pages.
"""

from __future__ import annotations

from typing import NewType

import attrs

Gfn = NewType("Gfn", int)
Pfn = NewType("Pfn", int)
Hva = NewType("Hva", int)  # host virtual page number (address >> PAGE_SHIFT)
Level = NewType("Level", int)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

PG_LEVEL_4K = Level(1)
PG_LEVEL_2M = Level(2)
PG_LEVEL_1G = Level(3)
PG_LEVEL_512G = Level(4)
PG_LEVEL_256T = Level(5)

# INVALID_GPA: all ones; also used by kvm->mmu_invalidate_range_start/_end as "no range yet".
INVALID_GPA = (1 << 64) - 1


@attrs.frozen(order=True)
class GfnRange:
    """A half-open range of gfns ``[start, end)``."""

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad gfn range [{self.start:#x}, {self.end:#x})")

    def __contains__(self, gfn: object) -> bool:
        return isinstance(gfn, int) and self.start <= gfn < self.end

    def __len__(self) -> int:
        return self.end - self.start

    def overlaps(self, other: GfnRange) -> bool:
        return self.start < other.end and other.start < self.end

    def intersect(self, other: GfnRange) -> GfnRange | None:
        s, e = max(self.start, other.start), min(self.end, other.end)
        return GfnRange(s, e) if s < e else None

    def __str__(self) -> str:
        return f"gfn [{self.start:#x}, {self.end:#x})"


@attrs.frozen(order=True)
class HvaRange:
    """A half-open range of host virtual pages ``[start, end)``."""

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"bad hva range [{self.start:#x}, {self.end:#x})")

    def __contains__(self, hva: object) -> bool:
        return isinstance(hva, int) and self.start <= hva < self.end

    def __len__(self) -> int:
        return self.end - self.start

    def overlaps(self, other: HvaRange) -> bool:
        return self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"hva [{self.start:#x}, {self.end:#x})"
