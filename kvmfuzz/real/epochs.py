"""The epoch bookkeeping of the stress mode: host effects as time intervals, per-page state.

A host operation that may change what the guest sees is an ``Interval`` of CLOCK_MONOTONIC
nanoseconds: in force possibly over ``(start, end)`` and surely over ``(firm_start, firm_end)``
(an op begins an effect between its start and end; a persistent effect, e.g. a protection or
an absent slot, ends between the start and end of the op that ends it). ``PageTrack`` keeps a
guest page's intervals and last write and answers which values a read may return.
"""

from __future__ import annotations

from collections import deque
from typing import Final

import attrs

from kvmfuzz.real.harness import Region
from kvmfuzz.real.ops import RegionKind

INF: Final = 1 << 62
NEG: Final = -(1 << 62)
PAGE_SIZE: Final = 4096


@attrs.define(eq=False)
class Interval:
    """A host effect in time: may be in force over (start, end), surely over the firm part."""

    start: int
    what: str = ""
    end: int = INF
    firm_start: int = INF
    firm_end: int = INF


def overlaps(iv: Interval, rs: int, re: int) -> bool:
    return iv.start < re and iv.end > rs


def firm(iv: Interval, rs: int, re: int) -> bool:
    return iv.firm_start < rs and re < iv.firm_end


@attrs.define(eq=False)
class PageTrack:
    """One guest page, owned by one vCPU (the only thread that prunes its deques)."""

    slot: int
    index: int
    zero: deque[Interval] = attrs.Factory(deque)
    fault_w: deque[Interval] = attrs.Factory(deque)  # writes may fail (read-only)
    fault_rw: deque[Interval] = attrs.Factory(deque)  # all accesses may fail (none, unmapped)
    absent: dict[int, deque[Interval]] = attrs.Factory(dict)  # per gpa base of its slot
    value: int = 0  # last successful guest write (0: none yet)
    ws: int = NEG
    we: int = NEG
    seen_zero: bool = False

    def allowed(self, rs: int, re: int) -> tuple[int, ...]:
        """Values a read over [rs, re] may return under the zeroing rule."""
        if self.value == 0 or self.seen_zero:
            return (0,)
        zeros = tuple(self.zero)
        if any(z.start > self.we and z.end < rs for z in zeros):
            return (0,)
        if any(z.end > self.ws and z.start < re for z in zeros):
            return (self.value, 0)
        return (self.value,)

    def prune(self) -> None:
        for dq, horizon in ((self.zero, self.ws), (self.fault_w, self.ws),
                            (self.fault_rw, self.ws)):
            while dq and dq[0].end < horizon:
                dq.popleft()
        for dq in self.absent.values():
            while dq and dq[0].end < self.ws:
                dq.popleft()


@attrs.define(eq=False)
class LogGeneration:
    """One dirty-logging generation of a slot (logging on, bitmap kept)."""

    serial: int


@attrs.define(eq=False)
class SlotTrack:
    ident: int
    region: Region
    locs: tuple[int, ...]
    loc: int
    pages: list[PageTrack]
    present: bool = True
    log: bool = False
    gen: LogGeneration | None = None
    prot: Interval | None = None
    prot_kind: str = ""
    prot_range: tuple[int, int] = (0, 0)
    journal: deque[tuple[int, int, int, LogGeneration]] = attrs.Factory(deque)
    pending: dict[int, list[tuple[int, int, LogGeneration]]] = attrs.Factory(dict)
    harvests: deque[tuple[int, int, frozenset[int], LogGeneration]] = attrs.Factory(deque)

    @property
    def kind(self) -> RegionKind:
        return self.region.kind

    def gpa(self, page: int, loc: int) -> int:
        return loc + page * PAGE_SIZE
