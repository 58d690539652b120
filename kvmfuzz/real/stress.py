"""Seeded concurrent stress of the real KVM: vCPUs access memory while the host mutates it.

Modelled on tools/testing/selftests/kvm/mmu_stress_test.c and
memslot_modification_stress_test.c. vCPU threads run the CPL3 accessor in a loop (reads and
writes of unique values to pages each vCPU owns), while the calling thread performs ``host_ops``
host operations chosen by ``random.Random(seed)``: MADV_DONTNEED, mprotect flips (read-only,
none, back), mmap(MAP_FIXED) / munmap+mmap / mremap replacement, memfd and guest_memfd hole
punches, memslot delete/re-create, MOVE, dirty-log toggles and harvests (GET, plus CLEAR with
manual protect).

Every host operation is recorded as a time interval ``[start, end]`` (CLOCK_MONOTONIC around
the system call); effects that persist (a protection, an absent slot) last from the start of
the op that began them to the end of the op that ended them, and are *firm* from the end of
the first to the start of the second. The epoch rules checked at every guest access:

- value: a read returns the page's last successful guest write, or 0 if a zeroing op (anon
  DONTNEED / replacement, hole punch) may have happened since that write began; only 0 once a
  zeroing op surely happened after the write ended and before the read began, or once 0 was
  seen. Anything else (an older value, another page's value) is a stale or lost write.
- MMIO only while the slot may be absent at that gpa (deleted, moved away); EFAULT only while a
  protection or an unmapped window may cover the page; success never while the slot is firmly
  absent (stale SPTE after delete/move) or the page firmly protected (stale writable/present
  SPTE after mprotect).
- dirty log: a write done while logging is on is reported by a harvest that ends after the
  write begins, at the latest by the first harvest that starts after the write ends
  (written ⊆ reported); disabling logging or deleting the slot starts afresh.
- at the end every page's backing holds the value the rules allow (no write lost).

Memory: one 64-page slot per region kind (``LAYOUT``): anon (slot 1, which MOVE moves between
two gpas), memfd (slot 2) and guest_memfd (slot 3, only where the kernel offers guest_memfd
with MMAP|INIT_SHARED: ``region_kinds()``; the report says which kinds ran and why not gmem).

Randomness: ``seed`` and the region kinds (the host thread and each vCPU thread draw from their
own ``random.Random`` derived from the seed); thread interleaving is the kernel's.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import attrs

from kvmfuzz.errors import InvalidArgument
from kvmfuzz.real import accessor as acc
from kvmfuzz.real import uapi
from kvmfuzz.real.epochs import (
    INF,
    NEG,
    Interval,
    LogGeneration,
    PageTrack,
    SlotTrack,
    firm,
    overlaps,
)
from kvmfuzz.real.harness import (
    Kvm,
    Region,
    RegionKinds,
    Vcpu,
    Vm,
    resolve_region_kinds,
)
from kvmfuzz.real.kmsg import KernelLog
from kvmfuzz.real.ops import Mmio, RegionKind, RunFailed, Value

NPAGES: Final = 64  # pages per slot
MAX_RANGE: Final = 8  # pages per host mm operation
MAX_VIOLATIONS: Final = 50  # details kept; the count goes on
LOG: Final = uapi.KVM_MEM_LOG_DIRTY_PAGES
_MIB: Final = 1 << 20
# (slot id, region kind, gpas it may sit at: MOVE alternates between them)
LAYOUT: Final[tuple[tuple[int, RegionKind, tuple[int, ...]], ...]] = (
    (1, "anon", (16 * _MIB, 24 * _MIB)), (2, "memfd", (32 * _MIB,)), (3, "gmem", (40 * _MIB,)))

_now = time.monotonic_ns


@attrs.frozen
class StressReport:
    """What a stress run did and found. Rates are per second of the run's wall time."""

    seed: int
    vcpus: int
    host_ops: int
    manual_protect: bool
    duration_s: float
    host_ops_per_s: float
    guest_accesses: int
    guest_accesses_per_s: float
    op_counts: tuple[tuple[str, int], ...]
    outcome_counts: tuple[tuple[str, int], ...]
    dirty_writes_checked: int
    violation_count: int
    violations: tuple[str, ...]
    kernel_log: tuple[str, ...]
    kinds: RegionKinds = attrs.field(factory=RegionKinds)  # the kinds run; why any was not

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    def summary(self) -> str:
        return (f"seed {self.seed}: {self.host_ops} host ops ({self.host_ops_per_s:.0f}/s), "
                f"{self.guest_accesses} guest accesses ({self.guest_accesses_per_s:.0f}/s) on "
                f"{self.vcpus} vCPUs in {self.duration_s:.2f} s, "
                f"{self.violation_count} violations, {len(self.kernel_log)} kernel log lines")


class _Run:
    """The shared state of one stress run."""

    def __init__(self, seed: int, host_ops: int, vcpus: int, plant: str | None,
                 kinds: RegionKinds) -> None:
        self.seed = seed
        self.plant = plant
        self.rng = random.Random(seed)
        self.host_ops = host_ops
        self.manual = self.rng.random() < 0.5
        self.kvm = Kvm()
        self.vm = Vm(self.kvm, vcpus, manual_protect=self.manual)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.violations: list[str] = []
        self.violation_count = 0
        self.op_counts: dict[str, int] = {}
        self.outcomes: dict[str, int] = {}
        self.accesses = 0
        self.dirty_checked = 0
        self.gen_serial = 0
        self.slots: list[SlotTrack] = []
        try:
            for ident, kind, locs in LAYOUT:
                if kind not in kinds.kinds:
                    continue
                region = Region(kind, NPAGES, self.vm)
                pages = [PageTrack(ident, i) for i in range(NPAGES)]
                for page in pages:
                    for loc in locs:
                        page.absent[loc] = deque()
                    for loc in locs[1:]:  # initially only at locs[0]
                        page.absent[loc].append(Interval(NEG, "initial", firm_start=NEG))
                self.slots.append(SlotTrack(ident, region, locs, locs[0], pages))
        except BaseException:
            self.close()
            raise
        for slot in self.slots:
            self._set(slot, 0)

    # --- reporting --------------------------------------------------------------------------

    def violation(self, text: str) -> None:
        with self.lock:
            self.violation_count += 1
            if len(self.violations) < MAX_VIOLATIONS:
                self.violations.append(text)

    def count(self, table: dict[str, int], key: str) -> None:
        with self.lock:
            table[key] = table.get(key, 0) + 1

    # --- memslots ---------------------------------------------------------------------------

    def _set(self, slot: SlotTrack, flags: int, npages: int = NPAGES,
             loc: int | None = None) -> int:
        region = slot.region
        gpa = slot.loc if loc is None else loc
        if region.kind == "gmem":
            return self.vm.set_memory_region(slot.ident, flags | uapi.KVM_MEM_GUEST_MEMFD, gpa,
                                             npages * acc.PAGE_SIZE, region.addr, region.fd, 0)
        return self.vm.set_memory_region(slot.ident, flags, gpa, npages * acc.PAGE_SIZE,
                                         region.addr)

    def close(self) -> None:
        self.vm.close()
        for slot in self.slots:
            slot.region.close()
        self.kvm.close()


# --- the vCPU side --------------------------------------------------------------------------


def _vcpu_loop(run: _Run, vcpu: Vcpu, rng: random.Random) -> None:
    mine = [page for slot in run.slots for page in slot.pages
            if page.index % len(run.vm.vcpus) == vcpu.index]
    slots = {slot.ident: slot for slot in run.slots}
    seq = 0
    accesses = 0
    try:
        while not run.stop.is_set():
            page = rng.choice(mine)
            slot = slots[page.slot]
            loc = slot.loc
            gen = slot.gen
            gpa = slot.gpa(page.index, loc)
            write = rng.random() < 0.5
            if write:
                seq += 1
                value = ((vcpu.index + 1) << 56 | page.slot << 48 | page.index << 32
                         | (seq & 0xFFFFFFFF))
                rs = _now()
                outcome = vcpu.access(acc.CMD_WRITE[8], gpa, value)
            else:
                rs = _now()
                outcome = vcpu.access(acc.CMD_READ[8], gpa)
            re = _now()
            accesses += 1
            _check_access(run, vcpu.index, slot, page, loc, gen, write, rs, re, outcome,
                          value if write else 0)
    except Exception as exc:  # a harness failure must end the run visibly
        run.violation(f"vcpu{vcpu.index} thread failed: {exc!r}")
        run.stop.set()
    finally:
        with run.lock:
            run.accesses += accesses


def _check_access(run: _Run, vcpu: int, slot: SlotTrack, page: PageTrack, loc: int,
                  gen: LogGeneration | None, write: bool, rs: int, re: int, outcome: object,
                  value: int) -> None:
    where = f"vcpu{vcpu} {'write' if write else 'read'} slot {slot.ident} page {page.index} " \
            f"gpa {slot.gpa(page.index, loc):#x}"
    absent = tuple(page.absent[loc])
    faults = tuple(page.fault_rw) + (tuple(page.fault_w) if write else ())
    if isinstance(outcome, Value):
        run.count(run.outcomes, "write" if write else "read")
        gone = [iv for iv in absent if firm(iv, rs, re)]
        if gone:
            iv = gone[0]
            run.violation(f"stale-mapping: {where} over [{rs}, {re}] succeeded while the slot "
                          f"was surely absent there ({iv.what} over [{iv.start}, "
                          f"{iv.end}], firm [{iv.firm_start}, {iv.firm_end}])")
        if any(firm(iv, rs, re) for iv in faults):
            run.violation(f"stale-spte: {where} succeeded while the page was surely "
                          f"{'not writable' if write else 'not accessible'} (mprotect)")
        if write:
            page.value, page.ws, page.we, page.seen_zero = value, rs, re, False
            page.prune()
            if gen is not None:
                slot.journal.append((page.index, rs, re, gen))
            return
        allowed = page.allowed(rs, re)
        if outcome.value not in allowed:
            run.violation(
                f"epoch-value: {where} read {outcome.value:#x}, allowed "
                f"{', '.join(hex(v) for v in allowed)} (last write {page.value:#x})")
        elif outcome.value == 0 and page.value != 0:
            page.seen_zero = True
        return
    if isinstance(outcome, Mmio):
        run.count(run.outcomes, "mmio")
        if not any(overlaps(iv, rs, re) for iv in absent):
            run.violation(f"spurious-mmio: {where} exited MMIO while the slot was present")
        return
    if isinstance(outcome, RunFailed):
        run.count(run.outcomes, f"run-{outcome.name}")
        if not any(overlaps(iv, rs, re) for iv in faults):
            run.violation(f"spurious-fault: {where} failed KVM_RUN {outcome.name} with the "
                          "page mapped and accessible")
        return
    run.count(run.outcomes, "other")
    run.violation(f"unexpected-exit: {where}: {outcome}")


# --- the host side --------------------------------------------------------------------------


class _Host:
    """The host thread's operations; each records its effect intervals around the syscall."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.rng = run.rng
        self.done = 0

    def _range(self) -> tuple[int, int]:
        n = self.rng.randint(1, MAX_RANGE)
        return self.rng.randrange(0, NPAGES - n + 1), n

    def _pages(self, slot: SlotTrack, first: int, n: int) -> list[PageTrack]:
        return slot.pages[first:first + n]

    def _count(self, name: str) -> None:
        self.done += 1
        self.run.count(self.run.op_counts, name)

    def _timed(self, name: str, call: Callable[[], int], opened: Iterable[deque[Interval]] = ()
               ) -> int:
        """Run ``call`` as an instant op; append [start, end] to ``opened`` deques."""
        start = _now()
        iv = Interval(start)
        for dq in opened:
            dq.append(iv)
        err = call()
        iv.end = _now()
        self._count(name)
        if err:
            self.run.violation(f"host-op: {name} failed: errno {err}")
        return err

    # mm operations
    def dontneed(self, slot: SlotTrack) -> None:
        first, n = self._range()
        zero = slot.kind == "anon" and self.run.plant != "hide-zero"
        opened = [p.zero for p in self._pages(slot, first, n)] if zero else []
        self._timed(f"dontneed-{slot.kind}", lambda: slot.region.dontneed(first, n), opened)

    def punch(self, slot: SlotTrack) -> None:
        first, n = self._range()
        self._timed(f"punch-{slot.kind}", lambda: slot.region.punch_hole(first, n),
                    [p.zero for p in self._pages(slot, first, n)])

    def remap(self, slot: SlotTrack) -> None:
        if slot.prot is not None:
            return self.unprotect(slot)
        first, n = self._range()
        how = self.rng.choice(("mmap_fixed", "munmap_mmap", "mremap"))
        pages = self._pages(slot, first, n)
        opened: list[deque[Interval]] = []
        if how != "mremap" and slot.kind == "anon":
            opened += [p.zero for p in pages]
        if how != "mmap_fixed":
            opened += [p.fault_rw for p in pages]
        self._timed(f"remap-{how}-{slot.kind}", lambda: slot.region.remap(first, n, how),
                    opened)
        return None

    def protect(self, slot: SlotTrack) -> None:
        if slot.prot is not None:
            return self.unprotect(slot)
        first, n = self._range()
        prot = self.rng.choice(("r", "none"))
        iv = Interval(_now())
        for page in self._pages(slot, first, n):
            (page.fault_w if prot == "r" else page.fault_rw).append(iv)
        err = slot.region.protect(first, n, prot)
        iv.firm_start = _now()
        self._count(f"mprotect-{prot}-{slot.kind}")
        if err:
            iv.end = iv.firm_start
            self.run.violation(f"host-op: mprotect {prot} failed: errno {err}")
            return None
        slot.prot, slot.prot_kind, slot.prot_range = iv, prot, (first, n)
        return None

    def unprotect(self, slot: SlotTrack) -> None:
        iv = slot.prot
        if iv is None:
            return
        first, n = slot.prot_range
        iv.firm_end = _now()
        err = slot.region.protect(first, n, "rw")
        iv.end = _now()
        slot.prot = None
        self._count(f"mprotect-rw-{slot.kind}")
        if err:
            self.run.violation(f"host-op: mprotect rw failed: errno {err}")

    # memslots
    def _open_absent(self, slot: SlotTrack, loc: int, what: str) -> Interval:
        iv = Interval(_now(), f"{what} #{self.done}")
        for page in slot.pages:
            page.absent[loc].append(iv)
        return iv

    def _closing(self, slot: SlotTrack, loc: int) -> list[Interval]:
        """Before the op that makes the slot present at ``loc``: its absence is no longer firm."""
        now = _now()
        closing = {id(iv): iv for page in slot.pages for iv in tuple(page.absent[loc])
                   if iv.end == INF}
        for iv in closing.values():
            iv.firm_end = now
        return list(closing.values())

    @staticmethod
    def _closed(closing: list[Interval], ok: bool) -> None:
        """After that op: the absence ended (or, if it failed, goes on)."""
        now = _now()
        for iv in closing:
            if ok:
                iv.end = now
            else:
                iv.firm_end = INF

    def delete(self, slot: SlotTrack) -> None:
        if not slot.present:
            return self.create(slot)
        slot.gen = None
        iv = self._open_absent(slot, slot.loc, "delete")
        if self.run.plant == "hide-absent":
            iv.start = iv.end = NEG
        err = self.run._set(slot, 0, npages=0)
        iv.firm_start = _now()
        self._count(f"slot-delete-{slot.kind}")
        if err:
            self.run.violation(f"host-op: delete slot {slot.ident}: errno {err}")
            return None
        slot.present = False
        slot.log = False
        return None

    def create(self, slot: SlotTrack) -> None:
        if slot.present:
            return None
        log = slot.kind != "gmem" and self.rng.random() < 0.5
        closing = self._closing(slot, slot.loc)
        err = self.run._set(slot, LOG if log else 0)
        self._closed(closing, not err)
        self._count(f"slot-create-{slot.kind}")
        if err:
            self.run.violation(f"host-op: create slot {slot.ident}: errno {err}")
            return None
        slot.present, slot.log = True, log
        slot.gen = self._new_gen() if log else None
        return None

    def move(self, slot: SlotTrack) -> None:
        if not slot.present or len(slot.locs) < 2:
            return None
        old = slot.loc
        new = slot.locs[1] if old == slot.locs[0] else slot.locs[0]
        iv = self._open_absent(slot, old, f"move {old:#x}->{new:#x}")
        closing = self._closing(slot, new)
        err = self.run._set(slot, LOG if slot.log else 0, loc=new)
        end = _now()
        iv.firm_start = end
        self._closed(closing, not err)
        self._count(f"slot-move-{slot.kind}")
        if err:
            iv.end = end
            self.run.violation(f"host-op: move slot {slot.ident}: errno {err}")
            return None
        slot.loc = new
        return None

    def _new_gen(self) -> LogGeneration:
        self.run.gen_serial += 1
        return LogGeneration(self.run.gen_serial)

    def toggle_log(self, slot: SlotTrack) -> None:
        if not slot.present or slot.kind == "gmem":
            return None
        log = not slot.log
        if not log:
            slot.gen = None
        err = self.run._set(slot, LOG if log else 0)
        self._count(f"log-{'on' if log else 'off'}-{slot.kind}")
        if err:
            self.run.violation(f"host-op: dirty-log toggle slot {slot.ident}: errno {err}")
            return None
        slot.log = log
        if log:
            slot.gen = self._new_gen()
        return None

    def harvest(self, slot: SlotTrack) -> None:
        if not slot.present or not slot.log or slot.gen is None:
            return self.toggle_log(slot)
        gen = slot.gen
        hs = _now()
        err, pages = self.run.vm.get_dirty_log(slot.ident, NPAGES)
        if not err and self.run.manual and pages:
            err = self.run.vm.clear_dirty_log(slot.ident, 0, NPAGES, pages)
        he = _now()
        self._count(f"harvest-{slot.kind}")
        if err:
            self.run.violation(f"host-op: dirty log of slot {slot.ident}: errno {err}")
            return None
        if self.run.plant == "drop-dirty":
            pages = pages[1:]
        slot.harvests.append((hs, he, frozenset(pages), gen))
        while slot.harvests and slot.harvests[0][1] < he - 2_000_000_000:
            slot.harvests.popleft()
        self._check_dirty(slot, gen)
        return None

    def _check_dirty(self, slot: SlotTrack, gen: LogGeneration) -> None:
        while slot.journal:
            page, ws, we, wgen = slot.journal.popleft()
            slot.pending.setdefault(page, []).append((ws, we, wgen))
        harvests = [h for h in slot.harvests if h[3] is gen]
        for page in sorted(slot.pending):
            keep = []
            for ws, we, wgen in slot.pending[page]:
                if wgen is not gen:
                    continue
                if any(page in rep and he > ws for _, he, rep, _ in harvests):
                    self.run.dirty_checked += 1
                    continue
                late = [(hs, he) for hs, he, _, _ in harvests if hs > we]
                if late:
                    self.run.dirty_checked += 1
                    self.run.violation(
                        f"dirty-lost: slot {slot.ident} page {page} written over "
                        f"[{ws}, {we}] ns is in no harvest up to the one over {late[0]}")
                    continue
                keep.append((ws, we, wgen))
            if keep:
                slot.pending[page] = keep
            else:
                del slot.pending[page]

    # the schedule
    def step(self) -> None:
        rng = self.rng
        slot = rng.choice(self.run.slots)
        if slot.kind == "gmem":
            kind = rng.choices(("punch", "delete"), (3, 1))[0]
        else:
            choices = ["dontneed", "protect", "remap", "delete", "toggle_log", "harvest"]
            weights = [3, 3, 2, 1, 1, 3]
            if slot.kind == "memfd":
                choices.append("punch")
                weights.append(3)
            if len(slot.locs) > 1:
                choices.append("move")
                weights.append(1)
            kind = rng.choices(choices, weights)[0]
        if kind in ("punch", "dontneed", "protect", "remap") and not slot.present \
                and rng.random() < 0.5:
            kind = "delete"  # re-create soon rather than run long without the slot
        getattr(self, kind)(slot)

    def restore(self) -> None:
        for slot in self.run.slots:
            self.unprotect(slot)
            if not slot.present:
                self.create(slot)


def _final_check(run: _Run) -> None:
    """No write lost: every page's backing holds a value its rules allow."""
    now = _now()
    for slot in run.slots:
        for page in slot.pages:
            got = int.from_bytes(uapi.read_mem(slot.region.hva(page.index), 8), "little")
            allowed = page.allowed(now, now)
            if got not in allowed:
                run.violation(
                    f"write-lost: slot {slot.ident} page {page.index} holds {got:#x} at the "
                    f"end, allowed {', '.join(hex(v) for v in allowed)}")


PLANTS: Final = ("hide-zero", "hide-absent", "drop-dirty")


def run_stress(seed: int, host_ops: int = 2000, vcpus: int = 2, kernel_log: bool = True,
               plant: str | None = None, pace: bool = True,
               kinds: RegionKinds | None = None) -> StressReport:
    """Run ``host_ops`` seeded host operations against ``vcpus`` spinning vCPUs; check the
    epoch rules; report rates and violations. Needs a usable /dev/kvm (see kvm_usable).

    ``kinds``: the region kinds to run (a slot each, see ``LAYOUT``); None probes the kernel
    once (``region_kinds()``: gmem only with guest_memfd MMAP|INIT_SHARED). The report records
    them and why any was left out.

    ``pace``: the host thread yields the GIL after each op (sleep(0)), so the vCPU threads
    make several accesses per host op (about 4 with 2 vCPUs on 2 cores) instead of about one.

    ``plant`` blinds the checker on purpose, to show it bites: ``hide-zero`` forgets that anon
    DONTNEED zeroes, ``hide-absent`` forgets slot deletions, ``drop-dirty`` drops the first
    reported page of each harvest. A planted run must report violations.
    """
    if plant is not None and plant not in PLANTS:
        raise InvalidArgument(f"plant={plant!r}: expected one of {PLANTS}")
    if host_ops < 0:
        raise InvalidArgument(f"host_ops={host_ops}: expected >= 0")
    if not 1 <= vcpus <= 8:
        raise InvalidArgument(f"vcpus={vcpus}: expected 1..8")
    kinds = resolve_region_kinds(kinds)
    klog = KernelLog(kernel_log)
    try:
        run = _Run(seed, host_ops, vcpus, plant, kinds)
    except BaseException:
        klog.close()
        raise
    lines: list[str] = []
    try:
        host = _Host(run)
        threads = [threading.Thread(target=_vcpu_loop, name=f"kvmfuzz-vcpu{v.index}",
                                    args=(run, v, random.Random(f"{seed}/vcpu{v.index}")),
                                    daemon=True)
                   for v in run.vm.vcpus]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        next_log = 1024
        while host.done < host_ops and not run.stop.is_set():
            host.step()
            if pace:
                time.sleep(0)
            if host.done >= next_log:
                next_log += 1024
                lines.extend(klog.read_new())
        run.stop.set()
        for thread in threads:
            thread.join(timeout=30)
            if thread.is_alive():
                run.violation(f"no-progress: {thread.name} did not finish its access in 30 s")
        duration = time.perf_counter() - start
        done = host.done
        host.restore()
        if not any(t.is_alive() for t in threads):
            _final_check(run)
        lines.extend(klog.read_new())
    finally:
        if not any(t.is_alive() for t in threads):
            run.close()
        klog.close()
    return StressReport(
        seed=seed, vcpus=vcpus, host_ops=done, manual_protect=run.manual,
        duration_s=duration, host_ops_per_s=done / duration if duration else 0.0,
        guest_accesses=run.accesses,
        guest_accesses_per_s=run.accesses / duration if duration else 0.0,
        op_counts=tuple(sorted(run.op_counts.items())),
        outcome_counts=tuple(sorted(run.outcomes.items())),
        dirty_writes_checked=run.dirty_checked, violation_count=run.violation_count,
        violations=tuple(run.violations), kernel_log=tuple(lines), kinds=kinds)


def main(argv: list[str] | None = None) -> int:
    """``python -m kvmfuzz.real.stress --seed S --host-ops N --vcpus V``: print the report."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kvmfuzz.real.stress",
                                     description=main.__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--host-ops", type=int, default=100_000)
    parser.add_argument("--vcpus", type=int, default=2)
    parser.add_argument("--no-pace", action="store_true",
                        help="do not yield after each host op (more host ops, fewer accesses)")
    args = parser.parse_args(argv)
    report = run_stress(args.seed, args.host_ops, args.vcpus, pace=not args.no_pace)
    print(report.summary())
    print("host ops:", ", ".join(f"{name} {n}" for name, n in report.op_counts))
    print("guest outcomes:", ", ".join(f"{name} {n}" for name, n in report.outcome_counts))
    print(f"region kinds: {report.kinds.describe()}")
    print(f"manual dirty-log protect: {report.manual_protect}; "
          f"dirty writes checked: {report.dirty_writes_checked}")
    for line in report.violations:
        print("VIOLATION", line)
    for line in report.kernel_log:
        print("kernel:", line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
