"""The differential fuzzer: one Hypothesis-generated sequential schedule, run op by op on the
Python model (``ModelBackend``) and on the kernel (``KvmBackend``), compared after every op.

``python -m kvmfuzz real [--schedules N] [--steps K] [--bug NAME] [--seed S] [--out DIR]``
runs generated schedules of ``K`` ops (default 60) until ``N`` of them had at least 50 ops
(Hypothesis also runs shorter ones, and ends schedules early while shrinking), prints
schedules, operations, operations/s and mismatches, and stops at the first mismatch: it is
shrunk by Hypothesis and saved as a ``kvmfuzz-diff/1`` file (diffcase.py) in DIR.
``python -m kvmfuzz real replay FILE [--bug NAME]`` re-runs a saved case on both backends.
``--bug`` plants a model bug (model_backend.MODEL_BUGS, or any of kvmfuzz.bugs).

The machine (``make_machine``): ``@initialize`` draws the VM configuration (1-2 vCPUs, manual
dirty-log protect, INITIALLY_SET) and resets both backends; one rule draws the next op from
what the agreed outcomes so far imply (regions, slots), applies it to the model and to the
kernel, compares (compare.py) and raises ``DiffMismatch`` on a disagreement (an exception
inside the model, e.g. an invariant violation, is a mismatch too). Ops stay inside the
model's address space (gpa < 16 MiB, the first 8 bytes of a page, slot ids < 8, see
model_backend.py). The probes the kernel must refuse are generated too (overlaps, unaligned
addresses, unknown flags and slot ids, bad dirty-log ranges, updates of guest_memfd slots).
Host accesses are always ``checked``.

Region kinds: a run draws regions from ``RegionKinds.kinds`` (harness.py), probed once per run
from the kernel (``region_kinds()``): ``anon``, ``memfd`` and, where KVM offers guest_memfd
with MMAP|INIT_SHARED, ``gmem``. ``CampaignResult.kinds`` records them and why gmem was left
out; ``kvmfuzz real`` prints them.

Mismatches the correct model is known to produce are listed in ``KNOWN_DIVERGENCES``; by
default the generator avoids the ops that trigger them (``--strict`` generates them too), so
an agreement campaign measures everything else. Each entry names the model function that is
wrong and the kernel's behaviour; tests/real/test_diff.py checks that each still diverges.
``KNOWN_MODEL_ISSUES`` lists, the same way, failures of the model's own invariants on
schedules the kernel runs fine.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, note, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from kvmfuzz.errors import InvalidArgument, KvmfuzzError
from kvmfuzz.real.backend import Backend
from kvmfuzz.real.compare import Comparator, Mismatch, compare
from kvmfuzz.real.diffcase import DiffCase, load_case, save_case
from kvmfuzz.real.diffreplay import replay
from kvmfuzz.real.harness import (
    REGION_KINDS,
    RegionKinds,
    guest_memfd_usable,
    region_kinds,
    resolve_region_kinds,
)
from kvmfuzz.real.kmsg import KernelLog
from kvmfuzz.real.model_backend import MODEL_BUGS, ModelBackend, known_bugs
from kvmfuzz.real.ops import (
    MEM_LOG_DIRTY_PAGES,
    MEM_READONLY,
    BackendConfig,
    ClearDirtyLog,
    CowReplace,
    CreateRegion,
    Errno,
    GetDirtyLog,
    GuestRead,
    GuestWrite,
    HostRead,
    HostWrite,
    MadviseDontneed,
    MemslotCreate,
    MemslotDelete,
    MemslotMove,
    MemslotSetFlags,
    Mprotect,
    Observation,
    Ok,
    Op,
    Outcome,
    Prot,
    PunchHole,
    RegionKind,
    Remap,
    RemapHow,
)

__all__ = ["KNOWN_DIVERGENCES", "KNOWN_MODEL_ISSUES", "CampaignResult", "DiffMismatch", "Mismatch", "compare",
           "main", "make_machine", "replay", "run_campaign"]

PAGE: Final = 4096
GPA_BASE: Final = 0x100000
GPA_STARTS: Final = tuple(GPA_BASE + i * 8 * PAGE for i in range(8))  # 8 pages apart
SLOT_IDS: Final = (1, 2, 3, 4)
BAD_SLOT: Final = 32767  # beyond KVM_USER_MEM_SLOTS of the kernel and of the model
REGION_IDS: Final = (1, 2, 3)
REGION_SIZES: Final = (8, 16, 4)
KINDS: Final[tuple[RegionKind, ...]] = REGION_KINDS  # all kinds; a run draws from World.kinds
LOG, RO = MEM_LOG_DIRTY_PAGES, MEM_READONLY
FLAGS: Final = (0, LOG, LOG, 0, LOG, RO, LOG | RO, 1 << 3)
GMEM_FLAGS: Final = (0, 0, 0, 0, LOG, RO, 1 << 3)  # only 0 is valid with a guest_memfd
SIZES: Final = (8, 8, 4, 2, 1)
PROTS: Final[tuple[Prot, ...]] = ("r", "none", "rw")
REMAPS: Final[tuple[RemapHow, ...]] = ("mmap_fixed", "munmap_mmap", "mremap")
DEFAULT_STEPS: Final = 60
FULL_OPS: Final = 50  # a campaign counts the schedules with at least this many ops

# op kind -> weight; sampled_from shrinks toward the first
OP_WEIGHTS: Final = {
    "guest_read": 7, "guest_write": 7, "host_read": 2, "host_write": 2, "slot_create": 4,
    "dontneed": 2, "mprotect": 2, "remap": 1, "cow": 1, "punch": 2, "slot_delete": 1,
    "slot_move": 1, "slot_flags": 2, "get_log": 3, "clear_log": 2, "region": 1,
}
OP_KINDS: Final = tuple(k for k, w in OP_WEIGHTS.items() for _ in range(w))

KNOWN_DIVERGENCES: Final[dict[str, str]] = {
    "clear-dirty-log-without-manual-protect":
        "KVM_CLEAR_DIRTY_LOG on a VM without KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: the kernel "
        "clears the requested bits and re-protects those pages (observed: 0, and the next GET "
        "reports only the bits left), the model's kvmfuzz/virt/dirty.py "
        "kvm_clear_dirty_log_protect() (uncommitted, absent from the committed model) returns "
        "-EINVAL first; the backend's fallback (model_backend.py) follows the kernel",
    "get-dirty-log-bad-slot-id":
        "KVM_GET_DIRTY_LOG of a slot id >= KVM_USER_MEM_SLOTS: the kernel's "
        "kvm_get_dirty_log_protect() checks the id (EINVAL), the model's "
        "kvmfuzz/virt/dirty.py kvm_get_dirty_log_protect() does not (ENOENT)",
}


# Failures of the correct model that are not kernel divergences (the model's own checks being
# wrong): avoided the same way unless strict.
KNOWN_MODEL_ISSUES: Final[dict[str, str]] = {
    # (none open; d1-readonly-logged-huge was fixed: D1 skips read-only leaves of READONLY slots)
}


class DiffMismatch(AssertionError):
    """The model and the kernel disagree (raised inside the machine; Hypothesis shrinks it)."""


# --- the generator's view of the VM -----------------------------------------------------------


@attrs.frozen
class SlotView:
    gpa: int
    npages: int
    region: int
    region_page: int
    flags: int


@attrs.define
class World:
    """What the agreed outcomes imply: regions, slots, the guest_memfd pages bound."""

    config: BackendConfig
    strict: bool = False
    kinds: tuple[RegionKind, ...] = KINDS  # the region kinds to draw from (the kernel's)
    regions: dict[int, tuple[RegionKind, int]] = attrs.field(factory=dict)
    slots: dict[int, SlotView] = attrs.field(factory=dict)
    counter: int = 0

    def next_value(self, size: int) -> int:
        self.counter += 1
        mask = (1 << (8 * size)) - 1
        return ((self.counter * 0x9E3779B97F4A7C15) >> 7 & mask) or 1

    def is_gmem(self, region: int) -> bool:
        return self.regions[region][0] == "gmem"

    def gmem_bound(self, region: int, first: int, npages: int, but: int | None = None) -> bool:
        """Would binding ``[first, first + npages)`` of gmem ``region`` hit a bound page?"""
        return any(s.region == region and sid != but and s.region_page < first + npages
                   and first < s.region_page + s.npages for sid, s in self.slots.items())

    def update(self, op: Op, outcome: Outcome) -> None:
        if not isinstance(outcome, Ok):
            return
        if isinstance(op, CreateRegion):
            self.regions[op.region] = (op.kind, op.npages)
        elif isinstance(op, MemslotCreate):
            if op.npages:
                self.slots[op.slot] = SlotView(op.gpa, op.npages, op.region, op.region_page,
                                               op.flags)
            else:
                self.slots.pop(op.slot, None)
        elif isinstance(op, MemslotDelete):
            self.slots.pop(op.slot, None)
        elif isinstance(op, MemslotMove):
            self.slots[op.slot] = attrs.evolve(self.slots[op.slot], gpa=op.gpa)
        elif isinstance(op, MemslotSetFlags):
            self.slots[op.slot] = attrs.evolve(self.slots[op.slot], flags=op.flags)


# --- drawing ops ------------------------------------------------------------------------------


def _page_range(data: st.DataObject, npages: int) -> tuple[int, int]:
    page = data.draw(st.integers(0, npages - 1), label="page")
    n = data.draw(st.integers(1, npages - page), label="npages")
    return page, n


def _word_access(data: st.DataObject) -> tuple[int, int]:
    """(size, byte offset inside the page's data word)."""
    size = data.draw(st.sampled_from(SIZES), label="size")
    offset = data.draw(st.integers(0, 8 // size - 1), label="word index") * size
    return size, offset


def _draw_guest(data: st.DataObject, w: World, write: bool) -> Op:
    vcpu = data.draw(st.integers(0, w.config.vcpus - 1), label="vcpu")
    if w.slots and data.draw(st.sampled_from((True, True, True, False)), label="in a slot"):
        slot = w.slots[data.draw(st.sampled_from(sorted(w.slots)), label="slot")]
        gpa = slot.gpa + PAGE * data.draw(st.integers(0, slot.npages - 1), label="page")
    else:
        gpa = data.draw(st.sampled_from(GPA_STARTS), label="base") \
            + PAGE * data.draw(st.integers(0, 15), label="page")
    size, offset = _word_access(data)
    if write:
        return GuestWrite(vcpu, gpa + offset, w.next_value(size), size)
    return GuestRead(vcpu, gpa + offset, size)


def _draw_slot_create(data: st.DataObject, w: World) -> Op:
    free = [i for i in SLOT_IDS if i not in w.slots]
    slot = data.draw(st.sampled_from((*free, *free, *free, *SLOT_IDS, BAD_SLOT)), label="slot")
    old = w.slots.get(slot)
    if old is not None and data.draw(st.booleans(), label="variant of the existing slot"):
        how = data.draw(st.sampled_from(("same", "move", "flags", "npages")), label="change")
        if how == "same":
            return MemslotCreate(slot, old.gpa, old.npages, old.region, old.region_page,
                                 old.flags)
        if how == "move":
            gpa = _new_gpa(data, w, old)
            return MemslotCreate(slot, gpa, old.npages, old.region, old.region_page, old.flags)
        if how == "flags":
            flags = _new_flags(data, w, old)
            return MemslotCreate(slot, old.gpa, old.npages, old.region, old.region_page, flags)
        n = data.draw(st.integers(0, old.npages), label="npages")
        return MemslotCreate(slot, old.gpa, n, old.region, old.region_page, old.flags)
    region = data.draw(st.sampled_from(sorted(w.regions)), label="region")
    rpages = w.regions[region][1]
    whole = data.draw(st.booleans(), label="whole region")
    npages = rpages if whole else data.draw(st.integers(1, rpages), label="npages")
    region_page = 0 if whole else data.draw(st.integers(0, rpages - npages), label="region page")
    gpa = data.draw(st.sampled_from(GPA_STARTS), label="gpa")
    gpa += data.draw(st.sampled_from((0,) * 15 + (0x800,)), label="unaligned")
    flags = data.draw(st.sampled_from(GMEM_FLAGS if w.is_gmem(region) else FLAGS), label="flags")
    return MemslotCreate(slot, gpa, npages, region, region_page, flags)


def _new_gpa(data: st.DataObject, w: World, old: SlotView) -> int:
    """A gpa for a MOVE of ``old``."""
    return data.draw(st.sampled_from(GPA_STARTS), label="gpa")


def _new_flags(data: st.DataObject, w: World, old: SlotView) -> int:
    """New flags for ``old``: mostly a dirty-logging toggle."""
    flags: tuple[int, ...] = (*(old.flags ^ LOG,) * 5, *FLAGS)
    return data.draw(st.sampled_from(flags), label="flags")


def _draw_clear(data: st.DataObject, w: World, logging: list[int]) -> Op | None:
    if not w.config.manual_protect and not w.strict:
        return None  # known: clear-dirty-log-without-manual-protect
    slot_id = data.draw(st.sampled_from([*logging, *logging, *sorted(w.slots), *SLOT_IDS]),
                        label="slot")
    slot = w.slots.get(slot_id)
    npages = slot.npages if slot is not None else 16
    choice = data.draw(st.sampled_from(range(8)), label="clear range")
    first = 64 if choice == 7 else 0
    n = {5: 0, 6: max(1, npages - 1)}.get(choice, npages)
    pages: tuple[int, ...] | None = None
    if data.draw(st.booleans(), label="some pages"):
        pages = tuple(data.draw(st.lists(st.integers(0, npages - 1), max_size=4, unique=True),
                                label="pages"))
    return ClearDirtyLog(slot_id, first, n, pages)


def draw_op(data: st.DataObject, w: World) -> Op:
    """The next op, drawn from what the VM has now."""
    kind = data.draw(st.sampled_from(OP_KINDS), label="op")
    if not w.regions or (kind == "region" and len(w.regions) < len(REGION_IDS)):
        region = min(set(REGION_IDS) - set(w.regions))
        return CreateRegion(region, data.draw(st.sampled_from(REGION_SIZES), label="npages"),
                            data.draw(st.sampled_from(w.kinds), label="kind"),
                            data.draw(st.booleans(), label="thp"))
    fd_regions = sorted(r for r, (k, _) in w.regions.items() if k != "anon")
    logging = sorted(i for i, s in w.slots.items() if s.flags & LOG)
    if not w.slots and kind in ("guest_read", "guest_write", "get_log", "clear_log"):
        kind = "slot_create"
    if kind in ("guest_read", "region") or (kind in ("slot_move", "slot_flags") and not w.slots):
        return _draw_guest(data, w, False)
    if kind == "guest_write":
        return _draw_guest(data, w, True)
    if kind == "slot_create":
        return _draw_slot_create(data, w)
    if kind == "slot_delete":
        known = sorted(w.slots)
        return MemslotDelete(data.draw(st.sampled_from([*known, *known, *known, 5, BAD_SLOT]),
                                       label="slot"))
    if kind == "slot_move":
        slot = data.draw(st.sampled_from(sorted(w.slots)), label="slot")
        return MemslotMove(slot, _new_gpa(data, w, w.slots[slot]))
    if kind == "slot_flags":
        slot = data.draw(st.sampled_from(sorted(w.slots)), label="slot")
        return MemslotSetFlags(slot, _new_flags(data, w, w.slots[slot]))
    if kind == "clear_log":
        clear = _draw_clear(data, w, logging)
        if clear is not None:
            return clear
        kind = "get_log"
    if kind == "get_log":
        ids: tuple[int, ...] = (*logging, *logging, *logging, *sorted(w.slots), *SLOT_IDS)
        if w.strict:
            ids = (*ids, BAD_SLOT)  # known: get-dirty-log-bad-slot-id
        return GetDirtyLog(data.draw(st.sampled_from(ids), label="slot"))
    if kind == "punch" and fd_regions:
        region = data.draw(st.sampled_from(fd_regions), label="region")
    else:
        region = data.draw(st.sampled_from(sorted(w.regions)), label="region")
    npages = w.regions[region][1]
    if kind in ("host_read", "host_write"):
        page = data.draw(st.integers(0, npages - 1), label="page")
        size, offset = _word_access(data)
        if kind == "host_read":
            return HostRead(region, page * PAGE + offset, size, checked=True)
        return HostWrite(region, page * PAGE + offset, w.next_value(size), size, checked=True)
    page, n = _page_range(data, npages)
    if kind == "mprotect":
        prot = data.draw(st.sampled_from(PROTS), label="prot")
        return Mprotect(region, page, n, prot)
    if kind == "remap":
        how = data.draw(st.sampled_from(REMAPS), label="how")
        return Remap(region, page, n, how)
    if kind == "cow":
        return CowReplace(region, page, n)
    if kind == "punch" and fd_regions:
        return PunchHole(region, page, n)
    return MadviseDontneed(region, page, n)


# --- the machine ------------------------------------------------------------------------------


@attrs.define
class DiffStats:
    """What a differential run did."""

    schedules: int = 0
    operations: int = 0
    generated: int | None = None  # schedules run until the first mismatch (then: shrinking)
    lengths: Counter[int] = attrs.field(factory=Counter)
    ops_by_kind: Counter[str] = attrs.field(factory=Counter)
    regions_by_kind: Counter[str] = attrs.field(factory=Counter)  # CreateRegion ops by kind
    outcomes: Counter[str] = attrs.field(factory=Counter)
    dirty_differs: int = 0
    kernel_log: list[str] = attrs.field(factory=list)

    def full(self, at_least: int) -> int:
        """Schedules that ran at least ``at_least`` ops."""
        return sum(n for length, n in self.lengths.items() if length >= at_least)


@attrs.define
class Recorder:
    """The last failing schedule the machine saw (after shrinking: the minimal one)."""

    last: DiffCase | None = None


@attrs.define
class DiffContext:
    real: Backend
    model: ModelBackend
    stats: DiffStats
    recorder: Recorder
    strict: bool = False
    klog: KernelLog | None = None  # new kernel-log lines, read after each schedule
    kinds: RegionKinds = attrs.field(factory=RegionKinds)  # the region kinds the kernel offers


def _outcome_label(outcome: Outcome | None) -> str:
    if outcome is None:
        return "raised"
    if isinstance(outcome, Errno):
        return f"Errno.{outcome.name}"
    return type(outcome).__name__


class DiffMachine(RuleBasedStateMachine):
    """One schedule on both backends (build a concrete class with ``make_machine``)."""

    ctx: ClassVar[DiffContext]

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.comparator: Comparator | None = None
        self.ops: list[Op] = []
        self.model_out: list[Outcome | None] = []
        self.real_out: list[Outcome] = []

    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        vcpus = data.draw(st.integers(1, 2), label="vcpus")
        manual = data.draw(st.booleans(), label="manual_protect")
        initially = manual and data.draw(st.booleans(), label="initially_set")
        config = BackendConfig(vcpus=vcpus, manual_protect=manual, initially_set=initially,
                               kernel_log=False)  # read once per schedule: see teardown
        self.ctx.model.reset(config)
        self.ctx.real.reset(config)
        self.world = World(config, self.ctx.strict, self.ctx.kinds.kinds)
        self.comparator = Comparator(config)
        self.ctx.stats.schedules += 1
        note(f"config {config}")

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        assert self.world is not None
        self.apply(draw_op(data, self.world))

    def apply(self, op: Op) -> None:
        assert self.world is not None and self.comparator is not None
        ctx = self.ctx
        step = len(self.ops)
        model_obs: Observation | None = None
        error: str | None = None
        try:
            model_obs = ctx.model.apply(op)
        except InvalidArgument:
            raise
        except (KvmfuzzError, AssertionError) as exc:  # ModelError, ProtocolViolation, ...
            error = f"{type(exc).__name__}: {exc}"
        real_obs = ctx.real.apply(op)
        self.ops.append(op)
        self.model_out.append(None if model_obs is None else model_obs.outcome)
        self.real_out.append(real_obs.outcome)
        stats = ctx.stats
        stats.operations += 1
        stats.ops_by_kind[type(op).__name__] += 1
        if isinstance(op, CreateRegion):
            stats.regions_by_kind[op.kind] += 1
        stats.outcomes[_outcome_label(real_obs.outcome)] += 1
        mismatch: Mismatch | None
        if model_obs is None:
            mismatch = Mismatch(step, op, "model-raised", None, real_obs.outcome, error or "")
        else:
            before = self.comparator.dirty_differs
            mismatch = self.comparator.compare(step, op, model_obs, real_obs)
            stats.dirty_differs += self.comparator.dirty_differs - before
        line = f"{step}: {op} -> {real_obs.outcome}"
        if mismatch is not None:
            note(line + f"  MISMATCH model {mismatch.model}")
            if stats.generated is None:
                stats.generated = stats.schedules  # later schedules are shrink attempts
            ctx.recorder.last = DiffCase(self.world.config, tuple(self.ops),
                                         tuple(self.model_out), tuple(self.real_out), mismatch,
                                         ctx.model.bug)
            raise DiffMismatch(mismatch.describe())
        note(line)
        self.world.update(op, real_obs.outcome)

    def teardown(self) -> None:
        if self.world is not None:
            self.ctx.stats.lengths[len(self.ops)] += 1
        if self.ctx.klog is not None:
            self.ctx.stats.kernel_log.extend(self.ctx.klog.read_new())


def make_machine(ctx: DiffContext) -> type[DiffMachine]:
    """A machine class bound to two backends, the run's stats and its recorder."""
    return type("DiffMachineBound", (DiffMachine,), {"ctx": ctx})


# --- campaign and replay ----------------------------------------------------------------------


@attrs.frozen
class CampaignResult:
    schedules: int
    operations: int
    seconds: float
    case: DiffCase | None
    saved: Path | None
    stats: DiffStats
    full_at: int = 50
    kinds: RegionKinds = attrs.field(factory=RegionKinds)

    @property
    def ops_per_s(self) -> float:
        return self.operations / self.seconds if self.seconds else 0.0

    @property
    def full_schedules(self) -> int:
        return self.stats.full(self.full_at)

    def summary(self) -> str:
        shrink = ""
        if self.stats.generated is not None:
            shrink = f"; {self.schedules - self.stats.generated} were shrink attempts"
        return (f"schedules {self.schedules} ({self.full_schedules} with >= {self.full_at} ops"
                f"{shrink}), operations "
                f"{self.operations}, {self.seconds:.1f} s, {self.ops_per_s:.0f} operations/s, "
                f"mismatches {0 if self.case is None else 1}")


def diff_settings(schedules: int, steps: int) -> settings:
    """Hypothesis settings for ``schedules`` examples of ``steps`` ops (the machine's
    ``@initialize`` counts as a step of ``stateful_step_count``)."""
    return settings(max_examples=schedules, stateful_step_count=steps + 1, deadline=None,
                    database=None, report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck), print_blob=False,
                    phases=(Phase.generate, Phase.shrink), verbosity=Verbosity.quiet)


def run_campaign(real: Backend, model: ModelBackend, schedules: int, *,
                 steps: int = DEFAULT_STEPS, seed_: int | None = None,
                 out: str | Path | None = None, strict: bool = False,
                 kernel_log: bool = True, kinds: RegionKinds | None = None) -> CampaignResult:
    """Run generated schedules on both backends until ``schedules`` of them had at least
    ``min(FULL_OPS, steps)`` ops (Hypothesis also runs shorter ones), or until a mismatch,
    which Hypothesis shrinks, and which is saved into ``out``. ``seed_`` makes
    the run deterministic (round ``k`` of examples uses seed ``seed_ + k``) on a given kernel.

    ``kinds``: the region kinds to generate, from the caller that knows ``real``'s kernel;
    None probes this machine's KVM once (``region_kinds()``: no gmem without guest_memfd)."""
    kinds = resolve_region_kinds(kinds)
    ctx = DiffContext(real, model, DiffStats(), Recorder(), strict, KernelLog(kernel_log),
                      kinds)
    full_at = min(FULL_OPS, steps)
    start = time.perf_counter()
    try:
        for round_ in itertools.count():
            missing = schedules - ctx.stats.full(full_at)
            if missing <= 0:
                break
            machine: Any = make_machine(ctx)
            if seed_ is not None:
                machine = seed(seed_ + round_)(machine)
            try:
                run_state_machine_as_test(  # type: ignore[no-untyped-call]
                    machine, settings=diff_settings(missing + missing // 8, steps))
            except DiffMismatch:
                if ctx.recorder.last is None:
                    raise
                break
    finally:
        if ctx.klog is not None:
            ctx.klog.close()
    case = ctx.recorder.last
    seconds = time.perf_counter() - start
    saved = save_case(case, out) if case is not None and out is not None else None
    return CampaignResult(ctx.stats.schedules, ctx.stats.operations, seconds, case, saved,
                          ctx.stats, full_at, kinds)


def _real_backend() -> Backend:
    from kvmfuzz.real.backend import KvmBackend
    from kvmfuzz.real.harness import kvm_usable
    usable, reason = kvm_usable()
    if not usable:
        raise SystemExit(f"kvmfuzz real: needs a usable /dev/kvm: {reason}")
    return KvmBackend()


def _main_replay(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvmfuzz real replay",
                                     description="re-run a saved kvmfuzz-diff/1 case on the "
                                                 "model and on the kernel")
    parser.add_argument("file")
    parser.add_argument("--bug", default=None,
                        help="model bug to plant (default: the one recorded in the file)")
    args = parser.parse_args(argv)
    case = load_case(args.file)
    bug = args.bug if args.bug is not None else case.model_bug
    print(f"{args.file}: {case.title}; config {case.config}; model bug {bug}")
    real = _real_backend()
    if any(isinstance(op, CreateRegion) and op.kind == "gmem" for op in case.ops):
        usable, reason = guest_memfd_usable()
        if not usable:
            real.close()
            raise SystemExit(f"kvmfuzz real replay: {args.file} creates a gmem region, which "
                             f"this kernel cannot: {reason}")
    try:
        result = replay(case, real, ModelBackend(bug), echo=print)
    finally:
        real.close()
    if result.mismatch is None:
        print(f"replayed {len(result.ops)} ops: the model and the kernel agree")
        return 0
    print("MISMATCH " + result.mismatch.describe())
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """``kvmfuzz real [--schedules N] [--steps K] [--bug NAME] [--seed S] [--out DIR]``,
    ``kvmfuzz real replay FILE``."""
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["replay"]:
        return _main_replay(args_in[1:])
    parser = argparse.ArgumentParser(
        prog="kvmfuzz real",
        description="differential fuzzing: generated uAPI schedules on the Python model and on "
                    "/dev/kvm, compared op by op (replay FILE: re-run a saved mismatch)")
    parser.add_argument("--schedules", type=int, default=100,
                        help=f"run until this many schedules had >= {FULL_OPS} ops "
                             "(default %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="operations per schedule (default %(default)s)")
    parser.add_argument("--bug", default=None,
                        help=f"plant a model bug: {', '.join(known_bugs())}")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default="diff-mismatches",
                        help="directory for shrunk mismatches (default %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="also generate the ops of KNOWN_DIVERGENCES")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the model's invariant checks after each step (faster)")
    args = parser.parse_args(args_in)
    if args.schedules < 1 or args.steps < 1:
        parser.error("--schedules and --steps must be >= 1")
    if args.bug not in (None, "none", *known_bugs()):
        parser.error(f"--bug {args.bug}: expected one of {', '.join(known_bugs())}")
    model = ModelBackend(args.bug, check=not args.no_check)
    real = _real_backend()
    kinds = region_kinds()  # the worker runs on this machine's kernel
    try:
        result = run_campaign(real, model, args.schedules, steps=args.steps, seed_=args.seed,
                              out=args.out, strict=args.strict, kinds=kinds)
    finally:
        real.close()
    print(result.summary())
    print(f"region kinds: {kinds.describe()}; regions created: "
          + (", ".join(f"{k} {n}" for k, n in sorted(result.stats.regions_by_kind.items()))
             or "none"))
    stats = result.stats
    print("ops:", ", ".join(f"{k} {n}" for k, n in sorted(stats.ops_by_kind.items())))
    print("kernel outcomes:", ", ".join(f"{k} {n}" for k, n in sorted(stats.outcomes.items())))
    print(f"dirty logs within the bounds but unequal: {stats.dirty_differs}")
    if args.bug in MODEL_BUGS:
        print(f"planted model bug {args.bug}: {MODEL_BUGS[args.bug]}")
    for line in stats.kernel_log:
        print("kernel:", line)
    if result.case is not None and result.case.mismatch is not None:
        print(f"MISMATCH (shrunk to {len(result.case.ops)} ops), saved to {result.saved}")
        for step, op in enumerate(result.case.ops):
            print(f"  {step}: {op}")
        print(result.case.mismatch.describe())
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
