"""The Hypothesis-free core of a run: build a VM, start operations, step, check, record.

The stateful machine (kvmfuzz.machine) and corpus replay (kvmfuzz.corpus) both drive a
``Driver``; so does anything that wants to run a hand-written schedule. Every call is
recorded as a ``Step`` (resolved names, no Hypothesis draws), which is what a corpus file stores.

Operations (``OPS``): ``access`` (vCPU), host mm ``dontneed`` / ``munmap`` / ``mmap`` /
``mprotect`` / ``migrate`` / ``thp_split`` / ``thp_collapse`` / ``age`` / ``host_write``, VMM
ioctls ``memslot`` (KVM_SET_USER_MEMORY_REGION2), ``set_attributes``, ``punch_hole``,
``get_dirty_log``; x86: host ``clear_young`` / ``test_young`` (lockless aging), VMM
``clear_dirty_log`` (KVM_CLEAR_DIRTY_LOG), ``enable_manual_protect``
(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), kernel-internal ``zap_gfn_range`` (kvm_zap_gfn_range).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import attrs

from kvmfuzz.config import VmConfig
from kvmfuzz.errors import InvalidArgument, ProtocolViolation
from kvmfuzz.host.mm import Mm
from kvmfuzz.host.pages import PageAllocator
from kvmfuzz.points import Point
from kvmfuzz.sched.scheduler import Actor, Scheduler, TraceStep
from kvmfuzz.sched.traps import Op
from kvmfuzz.units import HvaRange
from kvmfuzz.virt.attributes import kvm_vm_set_mem_attributes
from kvmfuzz.virt.dirty import (
    kvm_clear_dirty_log_protect,
    kvm_enable_manual_dirty_log_protect,
    kvm_get_dirty_log_protect,
)
from kvmfuzz.virt.guest_memfd import GmemFile, kvm_gmem_punch_hole
from kvmfuzz.virt.kvm import KVM_MEMORY_ATTRIBUTE_PRIVATE, KvmMemslots, Vm
from kvmfuzz.virt.memslots import UserspaceMemoryRegion, kvm_set_memory_region
from kvmfuzz.virt.notifier import KvmMmuNotifier
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.mmu import KvmArch, kvm_zap_gfn_range
from kvmfuzz.x86.vcpu import Vcpu, kvm_vcpu_access

HVA_BASE = 0x40000  # the VMM's guest-memory mapping starts here (hva page number)
NR_MM_ACTORS = 2
# Teardown switches actors here: a vCPU re-entering after a handled fault (it may be retrying
# on an open window), and a TDP walk that dropped mmu_lock because someone is waiting for it.
TEARDOWN_SWITCH_AT = frozenset({Point.VCPU_REENTER, Point.TDP_MMU_YIELD})
# VMM threads (vmm0, vmm1, ...): two by default (the hunting machine, and every corpus file that
# names no other); the WeavingMachine runs a third, so that an operation of a third kind can run
# while one VMM thread holds slots_lock and another waits for it.
NR_VMM_ACTORS = 2
MAX_VMM_ACTORS = 3


@attrs.frozen
class SlotSpec:
    """An initial memslot: created before the schedule starts."""

    slot: int
    base_gfn: int
    npages: int
    hva_offset: int  # from HVA_BASE, in pages
    flags: int = 0
    gmem_offset: int = -1  # >= 0: a guest_memfd slot bound at this file offset

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Step:
    """One schedule step: ``do`` is "start" (an operation) or "run" (one scheduler step)."""

    do: str
    actor: str
    op: str | None = None
    args: tuple[tuple[str, Any], ...] = ()
    reached: str | None = None

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]

    def __str__(self) -> str:
        if self.do == "run":
            return f"run {self.actor} → {self.reached}"
        args = " ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) and k in
                        ("gfn", "hva", "start", "end", "npages") else f"{k}={v}" for k, v in self.args)
        return f"start {self.actor} {self.op} {args}".rstrip()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"do": self.do, "actor": self.actor}
        if self.op is not None:
            out["op"] = self.op
        out.update(dict(self.args))
        if self.reached is not None:
            out["reached"] = self.reached
        return out


# op name -> (actor kind, argument names)
OPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "access": ("vcpu", ("gfn", "write", "private", "exec")),
    "dontneed": ("mm", ("hva", "npages")),
    "munmap": ("mm", ("hva", "npages")),
    "mmap": ("mm", ("hva", "npages")),
    "mprotect": ("mm", ("hva", "npages", "writable")),
    "migrate": ("mm", ("hva",)),
    "thp_split": ("mm", ("hva",)),
    "thp_collapse": ("mm", ("hva",)),
    "age": ("mm", ("hva", "npages")),
    "host_write": ("mm", ("hva",)),
    "memslot": ("vmm", ("slot", "as_id", "flags", "gfn", "npages", "hva", "gmem_offset")),
    "set_attributes": ("vmm", ("start", "end", "private")),
    "punch_hole": ("vmm", ("start", "end")),
    "get_dirty_log": ("vmm", ("slot",)),
    "clear_young": ("mm", ("hva", "npages")),
    "test_young": ("mm", ("hva", "npages")),
    "zap_gfn_range": ("vmm", ("start", "end")),
    "clear_dirty_log": ("vmm", ("slot", "first", "num", "mask")),
    "enable_manual_protect": ("vmm", ("initially_set",)),
}


# Arguments added after the first corpus files: absent means this default.
OPTIONAL_ARGS: dict[str, dict[str, Any]] = {"access": {"exec": False}}


def build_vm(config: VmConfig, nr_vmm: int = NR_VMM_ACTORS) -> Vm:
    """A VM with its actors (``nr_vmm`` VMM threads), the VMM's guest-memory mapping and KVM's
    MMU notifier."""
    if not 1 <= nr_vmm <= MAX_VMM_ACTORS:
        raise InvalidArgument(f"nr_vmm {nr_vmm}: expected 1..{MAX_VMM_ACTORS}")
    geo = config.geometry
    sched = Scheduler()
    pages = PageAllocator()
    mm = Mm(pages, geo.pages(2), config.thp)
    arch = KvmArch(geo, S.ept_masks(has_ad_bits=config.ad_bits))
    arch.mmio_gen_mask = (1 << config.mmio_gen_bits) - 1
    vm = Vm(config, sched, pages, mm, arch)
    for as_id in range(config.nr_as):
        a, b = KvmMemslots(as_id, 0, as_id), KvmMemslots(as_id, 1, as_id)
        vm.memslot_sets.append([a, b])
        vm.memslots.append(a)
    for i in range(config.nr_vcpus):
        vm.vcpus.append(Vcpu(vm, i, sched.add_actor(f"vcpu{i}", "vcpu")))
    for i in range(NR_MM_ACTORS):
        sched.add_actor(f"mm{i}", "mm")
    for i in range(nr_vmm):
        sched.add_actor(f"vmm{i}", "vmm")
    mm.mmap(HvaRange(HVA_BASE, HVA_BASE + geo.max_gfn))
    mm.notifiers.append(KvmMmuNotifier(vm))
    if config.private_mem:
        vm.gmem_files.append(GmemFile(0, geo.max_gfn))
    return vm


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _notes_failure(method: Callable[Concatenate[Driver, _P], _R]) -> Callable[Concatenate[Driver, _P], _R]:
    """Keep the first ProtocolViolation a stepping method raises (``Driver.failure``) and the
    schedule up to it (``Driver.failed_steps``), before teardown runs on past it."""

    @functools.wraps(method)
    def wrapper(self: Driver, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except ProtocolViolation as exc:
            self._note_failure(exc)
            raise
    return wrapper


class Driver:
    """Runs one schedule on one VM, checking invariants after every step.

    ``failure`` / ``failed_steps``: the first violation raised and the steps up to it; when it
    was raised inside a step (by the operation itself), the last step is a "run" without
    ``reached``.
    """

    def __init__(self, config: VmConfig, slots: tuple[SlotSpec, ...] = (),
                 check: bool = True, nr_vmm: int = NR_VMM_ACTORS) -> None:
        from kvmfuzz.invariants import check_quiescent, check_step
        self.config = config
        self.slots = slots
        self.vm = build_vm(config, nr_vmm)
        self.steps: list[Step] = []
        self.results: list[tuple[str, str, Any]] = []
        self.check = check
        self._check_step: Callable[[Vm], None] = check_step
        self._check_quiescent: Callable[[Vm], None] = check_quiescent
        for spec in slots:
            self._setup_slot(spec)
        self.failure: ProtocolViolation | None = None
        self.failed_steps: tuple[Step, ...] = ()
        self._attempts0 = self.vm.sched.steps  # scheduler steps attempted during setup
        self.observe: Callable[[Driver, TraceStep], None] = lambda d, t: None  # coverage hook

    # -- setup ----------------------------------------------------------------------------
    def _setup_slot(self, spec: SlotSpec) -> None:
        actor = self.vm.sched.actor("vmm0")
        flags = spec.flags | (4 if spec.gmem_offset >= 0 else 0)
        mem = UserspaceMemoryRegion(spec.slot, 0, flags, spec.base_gfn, spec.npages,
                                    HVA_BASE + spec.hva_offset, 0 if spec.gmem_offset >= 0 else -1,
                                    max(spec.gmem_offset, 0))
        box: list[int] = []
        self.vm.sched.start(actor, "memslot", kvm_set_memory_region(self.vm, actor, mem), box.append)
        self.vm.sched.run_to_completion()
        self.vm.sched.trace.clear()
        self.vm.sched.last = None
        self.vm.ghost.events.clear()
        if box != [0]:
            raise InvalidArgument(f"initial memslot {spec} failed: {box}")

    # -- operations -----------------------------------------------------------------------
    def idle_actors(self, kind: str) -> list[Actor]:
        return [a for a in self.vm.sched.actors if a.kind == kind and not a.busy]

    def start(self, op: str, actor_name: str, **args: Any) -> None:
        """Give ``actor_name`` the operation ``op``; recorded as a "start" step."""
        if op not in OPS:
            raise InvalidArgument(f"unknown operation {op!r}; known: {', '.join(OPS)}")
        kind, names = OPS[op]
        actor = self.vm.sched.actor(actor_name)
        if actor.kind != kind:
            raise InvalidArgument(f"{op} runs on a {kind} actor, not {actor_name}")
        for name, default in OPTIONAL_ARGS.get(op, {}).items():
            args.setdefault(name, default)
        missing = [n for n in names if n not in args]
        extra = sorted(set(args) - set(names))
        if missing or extra:
            raise InvalidArgument(f"{op}: missing {missing}, unexpected {extra}")
        gen = self._make(op, actor, args)
        step = Step("start", actor_name, op, tuple((n, args[n]) for n in names))
        self.steps.append(step)

        def done(result: Any) -> None:
            self.results.append((actor_name, op, result))

        self.vm.sched.start(actor, op, gen, done)

    def _make(self, op: str, actor: Actor, a: dict[str, Any]) -> Op[Any]:
        vm = self.vm
        mm = vm.mm
        if op == "access":
            vcpu = next(v for v in vm.vcpus if v.actor is actor)
            private = a["private"] if vm.config.private_mem else None
            return kvm_vcpu_access(vm, vcpu, a["gfn"], a["write"], a["exec"], private)
        if op in ("dontneed", "munmap", "mprotect", "age", "mmap"):
            rng = HvaRange(HVA_BASE + a["hva"], HVA_BASE + a["hva"] + a["npages"])
            if op == "mprotect":
                return mm.change_protection(actor, rng, a["writable"])
            if op == "age":
                return mm.age(actor, rng, True)
            if op == "mmap":
                return _atomic(lambda: _mmap_missing(mm, rng))
            return mm.zap_range(actor, rng, op == "munmap")
        hva = HVA_BASE + a.get("hva", 0)
        if op == "migrate":
            return mm.migrate(actor, hva)
        if op == "thp_split":
            return mm.split_thp(actor, hva)
        if op == "thp_collapse":
            return mm.collapse(actor, hva)
        if op == "host_write":
            token = vm.new_token()
            return _atomic(lambda: mm.host_write(hva, token))
        if op == "memslot":
            mem = UserspaceMemoryRegion(a["slot"], a["as_id"], a["flags"], a["gfn"], a["npages"],
                                        HVA_BASE + a["hva"], 0 if a["gmem_offset"] >= 0 else -1,
                                        max(a["gmem_offset"], 0))
            return kvm_set_memory_region(vm, actor, mem)
        if op == "set_attributes":
            attrs_ = KVM_MEMORY_ATTRIBUTE_PRIVATE if a["private"] else 0
            return kvm_vm_set_mem_attributes(vm, actor, a["start"], a["end"], attrs_)
        if op == "punch_hole":
            return kvm_gmem_punch_hole(vm, actor, 0, a["start"], a["end"])
        if op == "get_dirty_log":
            return kvm_get_dirty_log_protect(vm, actor, 0, a["slot"])
        if op in ("clear_young", "test_young"):
            rng = HvaRange(HVA_BASE + a["hva"], HVA_BASE + a["hva"] + a["npages"])
            return mm.age(actor, rng, False) if op == "clear_young" else _test_young(mm, actor, rng)
        if op == "zap_gfn_range":
            return kvm_zap_gfn_range(vm, actor, a["start"], a["end"])
        if op == "clear_dirty_log":
            words = [a["mask"] >> (64 * i) & ((1 << 64) - 1) for i in range((a["num"] + 63) // 64)]
            return kvm_clear_dirty_log_protect(vm, actor, 0, a["slot"], a["first"], a["num"], words)
        if op == "enable_manual_protect":
            return kvm_enable_manual_dirty_log_protect(vm, actor, a["initially_set"])
        raise InvalidArgument(op)

    # -- stepping -------------------------------------------------------------------------
    def runnable(self) -> list[Actor]:
        return self.vm.sched.runnable()

    @_notes_failure
    def run(self, pick: int = 0) -> TraceStep:
        """One scheduler step chosen by ``pick`` (0 = the last actor keeps running)."""
        return self._record(self.vm.sched.step(pick))

    @_notes_failure
    def run_actor(self, name: str) -> TraceStep:
        return self._record(self.vm.sched.step_actor(self.vm.sched.actor(name)))

    def _record(self, t: TraceStep) -> TraceStep:
        self.steps.append(Step("run", t.actor, reached=t.reached))
        self.observe(self, t)
        if self.check:
            self._check_step(self.vm)
            if self.vm.sched.quiescent():
                self._check_quiescent(self.vm)
        return t

    @_notes_failure
    def finish(self, max_steps: int = 20_000) -> None:
        """Teardown: run every actor to completion with as few switches as possible (the last
        actor keeps running; switch when it blocks, ends, or re-enters the guest after a
        handled fault), checking as we go."""
        sched = self.vm.sched
        for _ in range(max_steps):
            if sched.quiescent():
                if self.check:
                    self._check_quiescent(self.vm)
                return
            self._record(sched.step_actor(sched.next_for_teardown(TEARDOWN_SWITCH_AT)))
        from kvmfuzz.errors import NoProgress
        raise NoProgress("teardown did not reach quiescence in "
                         f"{max_steps} steps: " + "; ".join(a.where() for a in sched.busy()),
                         title="I12-fault-progress")

    def _note_failure(self, exc: ProtocolViolation) -> None:
        if self.failure is not None:
            return
        self.failure = exc
        steps = list(self.steps)
        sched = self.vm.sched
        if sched.steps - self._attempts0 > len(sched.trace) and sched.last is not None:
            steps.append(Step("run", sched.last.name))  # raised inside this step
        self.failed_steps = tuple(steps)

    def drain_events(self) -> list[str]:
        events, self.vm.ghost.events[:] = list(self.vm.ghost.events), []
        return events


def _test_young(mm: Mm, actor: Actor, rng: HvaRange) -> Op[bool]:
    """mmu_notifier_test_young() (folio_referenced() without clearing)."""
    young = False
    for mn in mm.notifiers:
        young |= yield from mn.test_young(actor, rng)
    return young


def _atomic(fn: Callable[[], Any]) -> Op[Any]:
    """An operation that is one atomic step."""
    return fn()
    yield  # pragma: no cover


def _mmap_missing(mm: Mm, rng: HvaRange) -> bool:
    """mmap(MAP_FIXED_NOREPLACE) of the pages in ``rng`` that are not mapped."""
    missing = [h for h in range(rng.start, rng.end) if h not in mm.prot]
    for h in missing:
        mm.prot[h] = True
    return bool(missing)
