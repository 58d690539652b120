"""Hand-written schedules for planted bugs: each drives a ``kvmfuzz.driver.Driver`` step by step
into the bug's race (shorter and easier to read than most campaign finds; the fallback for a bug
a short campaign does not find), and ``main`` saves the failure as a corpus file
(``corpus.make_schedule``) after checking that it reproduces on the bug and runs clean on the
correct model. tests/test_bugs_catalogue.py runs every builder.

    python corpus/hand_written.py [NAME ...]      # regenerate (default: all of them)

The builders only use the driver's public operations; they run without Hypothesis.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from kvmfuzz.bugs import BY_NAME
from kvmfuzz.config import VmConfig
from kvmfuzz.corpus import Schedule, make_schedule, replay, save
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.points import Point
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES

CORPUS = Path(__file__).resolve().parent
SLOT0 = SlotSpec(0, 0, 16, 0)  # gfn [0, 16) at hva page HVA_BASE + [0, 16), huge-page aligned
SLOT1 = SlotSpec(1, 16, 16, 16)
GMEM_SLOT0 = SlotSpec(0, 0, 16, 0, gmem_offset=0)
LOGGED_SLOT0 = SlotSpec(0, 0, 16, 0, flags=KVM_MEM_LOG_DIRTY_PAGES)

Body = Callable[[Driver], None]
BUILDERS: dict[str, tuple[dict[str, Any], tuple[SlotSpec, ...], Body]] = {}


def builder(name: str, slots: tuple[SlotSpec, ...], **config: Any) -> Callable[[Body], Body]:
    def register(body: Body) -> Body:
        BUILDERS[name] = (config, slots, body)
        return body
    return register


# -- driving helpers ------------------------------------------------------------------------------

def start(d: Driver, op: str, actor: str, **args: Any) -> None:
    if op == "access":
        args.setdefault("private", False)
    d.start(op, actor, **args)


def until(d: Driver, actor: str, point: Point, limit: int = 200) -> None:
    """Step ``actor`` alone until it stops at ``point``."""
    for _ in range(limit):
        if d.run_actor(actor).reached == point.name:
            return
    raise AssertionError(f"{actor} did not reach {point.name}")


def steps(d: Driver, actor: str, n: int) -> None:
    """Step ``actor`` up to ``n`` times, stopping when it is idle or blocked."""
    a = d.vm.sched.actor(actor)
    for _ in range(n):
        if not a.busy or not d.vm.sched.is_runnable(a):
            return
        d.run_actor(actor)


def op(d: Driver, op_name: str, actor: str, **args: Any) -> None:
    """Start an operation and run it alone to its end."""
    start(d, op_name, actor, **args)
    steps(d, actor, 500)
    assert not d.vm.sched.actor(actor).busy, f"{actor} {op_name} did not finish alone"


def delete_slot(d: Driver, actor: str, slot: int) -> None:
    start(d, "memslot", actor, slot=slot, as_id=0, flags=0, gfn=0, npages=0, hva=0, gmem_offset=-1)


# -- the schedules --------------------------------------------------------------------------------

@builder("unmap_before_range_add", (SLOT0,))
def unmap_before_range_add(d: Driver) -> None:
    """Two notifiers wait for mmu_lock behind a fault; the first zaps before adding its range
    and yields to the second (contended): a new fault then takes mmu_lock and finds
    in_progress > 0 with no range (mmu_invalidate_retry_gfn() WARNs)."""
    start(d, "access", "vcpu1", gfn=13, write=True)
    until(d, "vcpu1", Point.TDP_MAP_STEP_DOWN)  # holds mmu_lock for read
    op(d, "access", "vcpu0", gfn=1, write=True)
    op(d, "access", "vcpu0", gfn=9, write=True)
    start(d, "dontneed", "mm0", hva=0, npages=12)
    steps(d, "mm0", 10)  # blocked on mmu_lock (W)
    start(d, "dontneed", "mm1", hva=12, npages=4)
    steps(d, "mm1", 10)  # blocked on mmu_lock (W)
    steps(d, "vcpu1", 20)  # the fault finishes and drops mmu_lock
    until(d, "mm0", Point.TDP_MMU_YIELD)  # begun, zapped one leaf, yields: mm1 waits
    start(d, "access", "vcpu0", gfn=2, write=True)
    steps(d, "vcpu0", 20)


@builder("memslot_lookup_outside_srcu", (SLOT0,), slot_zap_all=False)
def memslot_lookup_outside_srcu(d: Driver) -> None:
    """The vCPU looks the slot up before entering the guest (outside SRCU); a DELETE completes
    without waiting for it; the exit handler then uses the freed slot."""
    start(d, "access", "vcpu0", gfn=5, write=True)
    until(d, "vcpu0", Point.VCPU_GUEST_ACCESS)
    delete_slot(d, "vmm0", 0)
    steps(d, "vmm0", 60)
    steps(d, "vcpu0", 20)


@builder("delete_zaps_before_invalid_swap", (SLOT0,), slot_zap_all=False)
def delete_zaps_before_invalid_swap(d: Driver) -> None:
    """A fault holding a pfn of the slot (inside SRCU) waits before mmu_lock; DELETE zaps the
    slot first, then publishes the INVALID copy and waits for SRCU: the fault maps the slot
    after the zap, and the mapping survives it."""
    start(d, "access", "vcpu0", gfn=5, write=True)
    until(d, "vcpu0", Point.FAULT_BEFORE_MMU_LOCK)
    delete_slot(d, "vmm0", 0)
    steps(d, "vmm0", 60)  # zapped, INVALID published, in synchronize_srcu()
    steps(d, "vcpu0", 20)
    steps(d, "vmm0", 60)


@builder("invalid_slot_treated_as_noslot", (SLOT0,))
def invalid_slot_treated_as_noslot(d: Driver) -> None:
    """A read-only mapping is in vcpu0's TLB; DELETE publishes the INVALID slot; a write fault
    in that window installs an MMIO SPTE over the present leaf without flushing."""
    op(d, "mprotect", "mm0", hva=4, npages=4, writable=False)
    op(d, "access", "vcpu0", gfn=5, write=False)
    delete_slot(d, "vmm0", 0)
    until(d, "vmm0", Point.SYNCHRONIZE_SRCU)
    start(d, "access", "vcpu0", gfn=5, write=True)
    steps(d, "vcpu0", 20)


@builder("gmem_end_before_truncate", (GMEM_SLOT0,), private_mem=True)
def gmem_end_before_truncate(d: Driver) -> None:
    """PUNCH_HOLE ends the invalidation before truncating; a private fault in between maps the
    folio that the truncate then frees."""
    op(d, "set_attributes", "vmm0", start=4, end=8, private=True)
    op(d, "access", "vcpu0", gfn=5, write=True, private=True)
    start(d, "punch_hole", "vmm0", start=4, end=8)
    until(d, "vmm0", Point.GMEM_TRUNCATE)
    start(d, "access", "vcpu0", gfn=5, write=True, private=True)
    steps(d, "vcpu0", 20)
    steps(d, "vmm0", 5)


@builder("fast_pf_marks_dirty_before_cmpxchg", (LOGGED_SLOT0,))
def fast_pf_marks_dirty_before_cmpxchg(d: Driver) -> None:
    """Fast PF marks gfn 5 dirty, then a GET harvests the bit and protects nothing (the SPTE
    is not writable yet); the fast PF's cmpxchg then sets W with the bit clear."""
    op(d, "access", "vcpu0", gfn=5, write=True)
    op(d, "get_dirty_log", "vmm0", slot=0)
    start(d, "access", "vcpu0", gfn=5, write=True)
    until(d, "vcpu0", Point.FAST_PF_CMPXCHG)
    op(d, "get_dirty_log", "vmm0", slot=0)
    steps(d, "vcpu0", 10)


@builder("stale_check_ignores_obsolete_root", (SLOT0, SLOT1))
def stale_check_ignores_obsolete_root(d: Driver) -> None:
    """DELETE of slot 1 waits in its first synchronize_srcu(); vcpu0's fault on gfn 5 starts
    after that grace period began, so the zap-all invalidates vcpu0's root under the fault,
    which then installs into the obsolete root."""
    op(d, "access", "vcpu0", gfn=1, write=False)  # vcpu0 has a root
    delete_slot(d, "vmm0", 1)
    until(d, "vmm0", Point.SYNCHRONIZE_SRCU)
    start(d, "access", "vcpu0", gfn=5, write=True)
    until(d, "vcpu0", Point.FAULT_BEFORE_MMU_LOCK)
    steps(d, "vmm0", 60)  # zap_all_fast done; now waits for vcpu0's SRCU section
    steps(d, "vcpu0", 20)


@builder("zap_yield_without_flush", (SLOT0,))
def zap_yield_without_flush(d: Driver) -> None:
    """vcpu0's TLB holds gfns 1 and 9; two notifiers wait for mmu_lock behind a fault; the first
    zaps gfn 1's leaf, then yields to the second (contended) without flushing first."""
    start(d, "access", "vcpu1", gfn=13, write=True)
    until(d, "vcpu1", Point.TDP_MAP_STEP_DOWN)  # holds mmu_lock for read
    op(d, "access", "vcpu0", gfn=1, write=True)
    op(d, "access", "vcpu0", gfn=9, write=True)
    start(d, "dontneed", "mm0", hva=0, npages=12)
    steps(d, "mm0", 10)
    start(d, "dontneed", "mm1", hva=12, npages=4)
    steps(d, "mm1", 10)
    steps(d, "vcpu1", 20)
    until(d, "mm0", Point.TDP_MMU_YIELD)


@builder("mmio_gen_wrap_not_handled", (SLOT0,), mmio_gen_bits=2, slot_zap_all=False)
def mmio_gen_wrap_not_handled(d: Driver) -> None:
    """A 2-bit MMIO generation: gfn 40 (no slot) gets an MMIO SPTE at generation 1; CREATE,
    DELETE, CREATE of a slot over it take the generation to 5, wrapping at 4 without a zap:
    the stale MMIO SPTE passes check_mmio_spte() again while a slot covers gfn 40."""
    op(d, "access", "vcpu0", gfn=40, write=False)
    slot1 = {"slot": 1, "as_id": 0, "flags": 0, "gfn": 32, "npages": 16, "hva": 32,
             "gmem_offset": -1}
    op(d, "memslot", "vmm0", **slot1)
    delete_slot(d, "vmm0", 1)
    steps(d, "vmm0", 500)
    op(d, "memslot", "vmm0", **slot1)


@builder("attr_pre_skips_head_tail", (GMEM_SLOT0,), private_mem=True)
def attr_pre_skips_head_tail(d: Driver) -> None:
    """Making gfn 5 private invalidates only [5, 6), not the 2M frame [4, 8) around it; in the
    window (PRE done, attributes not yet stored, MIXED not yet recomputed) a shared fault on
    gfn 4 does not retry and maps the whole frame huge, over gfn 5."""
    start(d, "set_attributes", "vmm0", start=5, end=6, private=True)
    until(d, "vmm0", Point.ATTR_STORE)
    start(d, "access", "vcpu0", gfn=4, write=True)
    steps(d, "vcpu0", 20)


@builder("end_forgets_wakeup", (SLOT0,))
def end_forgets_wakeup(d: Driver) -> None:
    """A memslot CREATE sleeps in kvm_swap_active_memslots() while a notifier is active; the
    notifier's end drops the count to 0 without waking it."""
    start(d, "dontneed", "mm0", hva=4, npages=4)
    until(d, "mm0", Point.HOST_PTE_CHANGE)
    start(d, "memslot", "vmm0", slot=1, as_id=0, flags=0, gfn=16, npages=16, hva=16,
          gmem_offset=-1)
    steps(d, "vmm0", 20)  # asleep in SWAP_WAIT_MN_ACTIVE
    steps(d, "mm0", 20)
    d.run(0)


@builder("get_dirty_log_skips_protect", (LOGGED_SLOT0,))
def get_dirty_log_skips_protect(d: Driver) -> None:
    """GET harvests gfn 3 but leaves its SPTE writable: at once a writable SPTE of a logged
    slot whose dirty bit is clear."""
    op(d, "access", "vcpu0", gfn=3, write=True)
    op(d, "get_dirty_log", "vmm0", slot=0)


@builder("flush_remote_tlbs_noop", (SLOT0,))
def flush_remote_tlbs_noop(d: Driver) -> None:
    """The DONTNEED zap of gfn 5 is not flushed: vcpu0's TLB still maps it in the window."""
    op(d, "access", "vcpu0", gfn=5, write=True)
    start(d, "dontneed", "mm0", hva=4, npages=4)
    until(d, "mm0", Point.HOST_PTE_CHANGE)


# -- saving ---------------------------------------------------------------------------------------

NOTE = "written by hand (corpus/hand_written.py)"


def build(name: str) -> Schedule:
    """The schedule of ``name``'s race, checked: it fires one of the bug's ``caught_by`` on the
    bug (strict replay) and runs clean on the correct model (lenient replay)."""
    config, slots, body = BUILDERS[name]
    d = Driver(VmConfig(bug=name, **config), slots)
    try:
        body(d)
        d.finish()
    except ProtocolViolation:
        pass
    if d.failure is None:
        raise AssertionError(f"{name}: the schedule does not fail on the bug")
    s = make_schedule(d, d.failure, bug=name, seed=None)
    s = attrs.evolve(s, meta=attrs.evolve(s.meta, note=NOTE))
    r = replay(s, name)
    assert r.violation is not None and r.violation.title == s.title, name
    assert s.title in BY_NAME[name].titles, f"{name}: {s.title} is not in its caught_by"
    clean = replay(s, None)
    assert clean.violation is None, f"{name} on the correct model: {clean.violation}"
    return s


def main(names: list[str]) -> int:
    for name in names or sorted(BUILDERS):
        s = build(name)
        path, written = save(s, CORPUS)
        print(f"{name}: {s.title}, {len(s.steps)} steps -> {path.name}"
              f"{'' if written else ' (an existing file is as short: kept)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
