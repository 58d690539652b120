"""The differential comparison: one op's model observation against the kernel's.

``compare(op, model_obs, real_obs, bounds=None) -> Mismatch | None``, the rule per op:

- guest accesses (GuestRead / GuestWrite): the outcomes are equal: the value read (or the
  write's echo), an MMIO exit with the same gpa, size, direction and data (a write's bytes;
  zeros supplied to a read), a failed KVM_RUN with the same errno, exit reason and fault gpa,
  or the same unexpected exit;
- host accesses, mm operations, region creation, memslot ioctls, CLEAR_DIRTY_LOG: equal
  outcomes (Ok, the value, or the same errno);
- GET_DIRTY_LOG: the same errno; two bitmaps need not be equal (on this kernel a guest read can
  set a dirty bit, the model marks read-faulted pages of its always-writable anonymous
  memory), but each must satisfy ``written ⊆ reported ⊆ accessed`` for the bounds of that
  slot since its bits were last cleared (``DirtyBounds``, kept by ``Comparator``). Without
  bounds, bitmaps must be equal;
- a worker that died on the real side is a mismatch unless the model predicts the death too
  (an unchecked host access to a page the host cannot access).

``Comparator`` applies ``compare`` along a schedule and keeps the dirty-log bounds from the
agreed outcomes: the slot layout (create / delete / move / flag changes), the pages written
(successful guest writes) and accessed (any guest access) while logging, reset for a slot by
a GET without manual protect and per page by CLEAR_DIRTY_LOG; a slot that starts logging with
INITIALLY_SET may report every page.
"""

from __future__ import annotations

import attrs

from kvmfuzz.real.ops import (
    MEM_LOG_DIRTY_PAGES,
    BackendConfig,
    ClearDirtyLog,
    Dirty,
    GetDirtyLog,
    GuestRead,
    GuestWrite,
    MemslotCreate,
    MemslotDelete,
    MemslotMove,
    MemslotSetFlags,
    Observation,
    Ok,
    Op,
    Outcome,
    Value,
    WorkerDied,
)

PAGE = 4096


@attrs.frozen
class DirtyBounds:
    """What a slot's dirty bitmap may report: at least ``written``, at most ``accessed``."""

    written: frozenset[int]
    accessed: frozenset[int]


@attrs.frozen
class Mismatch:
    """One op on which the model and the kernel disagree. ``model`` is None when the model
    raised (``rule`` "model-raised", the exception in ``detail``)."""

    step: int
    op: Op
    rule: str
    model: Outcome | None
    real: Outcome
    detail: str

    def describe(self) -> str:
        return (f"step {self.step}: {self.op}\n  rule: {self.rule}: {self.detail}\n"
                f"  model: {self.model}\n  kernel: {self.real}")


def _dirty_violation(pages: tuple[int, ...], bounds: DirtyBounds) -> str | None:
    reported = frozenset(pages)
    lost = sorted(bounds.written - reported)
    extra = sorted(reported - bounds.accessed)
    parts = []
    if lost:
        parts.append(f"pages {lost} written while logging are not reported")
    if extra:
        parts.append(f"pages {extra} reported but never accessed while logging")
    return "; ".join(parts) or None


def compare(op: Op, model_obs: Observation, real_obs: Observation,
            bounds: DirtyBounds | None = None, step: int = -1) -> Mismatch | None:
    """The per-op rule (module docstring); None when the observations agree."""
    model, real = model_obs.outcome, real_obs.outcome
    if isinstance(real, WorkerDied) or isinstance(model, WorkerDied):
        if isinstance(real, WorkerDied) and isinstance(model, WorkerDied):
            return None
        return Mismatch(step, op, "worker-died", model, real,
                        "only one side lost its process")
    if isinstance(op, GetDirtyLog) and isinstance(model, Dirty) and isinstance(real, Dirty) \
            and bounds is not None:
        for side, outcome in (("model", model), ("kernel", real)):
            why = _dirty_violation(outcome.pages, bounds)
            if why is not None:
                return Mismatch(step, op, f"dirty-bounds-{side}", model, real,
                                f"{side}: {why} (written {sorted(bounds.written)}, accessed "
                                f"{sorted(bounds.accessed)})")
        return None
    if model != real:
        return Mismatch(step, op, "outcome", model, real, "the outcomes differ")
    return None


@attrs.define
class _LogSlot:
    gpa: int
    npages: int
    flags: int
    written: set[int] = attrs.field(factory=set)
    accessed: set[int] = attrs.field(factory=set)

    @property
    def logging(self) -> bool:
        return bool(self.flags & MEM_LOG_DIRTY_PAGES)


@attrs.define
class Comparator:
    """``compare`` along one schedule, with the dirty-log bounds of every slot."""

    config: BackendConfig
    slots: dict[int, _LogSlot] = attrs.field(factory=dict)
    dirty_differs: int = 0  # GETs where both sides were within bounds but not equal

    def bounds(self, slot: int) -> DirtyBounds | None:
        s = self.slots.get(slot)
        if s is None or not s.logging:
            return None
        return DirtyBounds(frozenset(s.written), frozenset(s.accessed))

    def compare(self, step: int, op: Op, model_obs: Observation,
                real_obs: Observation) -> Mismatch | None:
        """Compare, then (if they agree) track the op's effect on the dirty-log bounds."""
        bounds = self.bounds(op.slot) if isinstance(op, GetDirtyLog) else None
        mismatch = compare(op, model_obs, real_obs, bounds, step)
        if mismatch is None:
            if model_obs.outcome != real_obs.outcome:
                self.dirty_differs += 1
            self.update(op, real_obs.outcome)
        return mismatch

    def _start_logging(self, s: _LogSlot) -> None:
        s.written = set()
        s.accessed = set(range(s.npages)) if self.config.initially_set else set()

    def _set(self, slot: int, gpa: int, npages: int, flags: int) -> None:
        old = self.slots.get(slot)
        if old is None:
            new = _LogSlot(gpa, npages, flags)
            if new.logging:
                self._start_logging(new)
            self.slots[slot] = new
            return
        was = old.logging
        old.gpa, old.flags = gpa, flags  # MOVE keeps the bitmap; FLAGS_ONLY may toggle it
        if old.logging and not was:
            self._start_logging(old)
        elif not old.logging:
            old.written, old.accessed = set(), set()

    def _slot_at(self, gpa: int) -> tuple[_LogSlot, int] | None:
        for s in self.slots.values():
            if s.gpa <= gpa < s.gpa + s.npages * PAGE:
                return s, (gpa - s.gpa) // PAGE
        return None

    def update(self, op: Op, outcome: Outcome) -> None:
        """Track the agreed ``outcome`` of ``op``."""
        if isinstance(op, GuestRead | GuestWrite):
            hit = self._slot_at(op.gpa)
            if hit is not None and hit[0].logging:
                s, page = hit
                s.accessed.add(page)
                if isinstance(op, GuestWrite) and isinstance(outcome, Value):
                    s.written.add(page)
            return
        if not isinstance(outcome, Ok | Dirty):
            return
        if isinstance(op, MemslotCreate):
            if op.npages:
                self._set(op.slot, op.gpa, op.npages, op.flags)
            else:
                self.slots.pop(op.slot, None)
        elif isinstance(op, MemslotDelete):
            self.slots.pop(op.slot, None)
        elif isinstance(op, MemslotMove):
            s = self.slots[op.slot]
            self._set(op.slot, op.gpa, s.npages, s.flags)
        elif isinstance(op, MemslotSetFlags):
            s = self.slots[op.slot]
            self._set(op.slot, s.gpa, s.npages, op.flags)
        elif isinstance(op, GetDirtyLog) and not self.config.manual_protect:
            s = self.slots[op.slot]
            s.written, s.accessed = set(), set()
        elif isinstance(op, ClearDirtyLog) and op.slot in self.slots:
            s = self.slots[op.slot]
            span = range(op.first_page, op.first_page + op.npages)
            cleared = set(span) if op.pages is None else set(op.pages) & set(span)
            s.written -= cleared
            s.accessed -= cleared
