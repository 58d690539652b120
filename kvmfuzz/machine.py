"""The Hypothesis stateful machine: a thin adapter over ``kvmfuzz.driver.Driver``.

Rules only start operations on idle actors or advance the schedule with ``run(pick)`` (pick
0 = the last actor keeps running, so shrinking minimises context switches). Invariants run
inside the driver after every step; teardown runs every actor to completion.
``make_machine(bug=..., plain=...)`` builds a machine class for a planted bug; ``plain=True``
gives the baseline machine with uniform arguments and no protocol-aware biasing.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import MAX_VMM_ACTORS, NR_VMM_ACTORS, Driver, SlotSpec
from kvmfuzz.points import Point
from kvmfuzz.strategies import draw_near, memslot_layouts, vm_configs
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS


@attrs.define
class Stats:
    """What a campaign did (filled by the machines it runs)."""

    examples: int = 0
    steps: int = 0
    starts: dict[str, int] = attrs.field(factory=dict)
    events: dict[str, int] = attrs.field(factory=dict)
    points: dict[str, int] = attrs.field(factory=dict)


# The ⇄ points of the reference where protocol races live: a run can go "to the next window".
WINDOW_POINTS = frozenset(p.name for p in (
    Point.FAULT_SEQ_SNAPSHOT, Point.FAULT_GUP, Point.FAULT_PFN_RESOLVED,
    Point.FAULT_BEFORE_MMU_LOCK, Point.FAULT_GMEM_GET_PFN, Point.TDP_MAP_STEP_DOWN,
    Point.MN_START_COUNTED, Point.HOST_PTE_CHANGE, Point.MN_END_BEFORE_COUNT,
    Point.SYNCHRONIZE_SRCU, Point.SWAP_WAIT_MN_ACTIVE, Point.ATTR_STORE, Point.GMEM_TRUNCATE,
    Point.DIRTY_LOG_BEFORE_FLUSH, Point.TDP_MMU_YIELD,
    # x86 (fast page fault, aging, dirty logging, huge pages)
    Point.FAST_PF_CMPXCHG, Point.FAST_PF_MARK_DIRTY, Point.AGE_SPTE, Point.TDP_RECOVER_HUGE,
    Point.TDP_SPLIT_ALLOC, Point.DIRTY_LOG_ENABLE_WRPROT, Point.CLEAR_DIRTY_LOG_BEFORE_FLUSH))

# Where an x86 operation sits inside a race window (the machine's x86 rule may let a racing
# host invalidation run through it).
_RACE_POINTS = frozenset({"FAST_PF_CMPXCHG", "FAST_PF_MARK_DIRTY", "TDP_RECOVER_HUGE",
                          "TDP_MMU_YIELD", "AGE_SPTE"})

# Points few rules stop an operation at (``WeavingMachine``'s interposition prefers them).
_RARE_STOPS = frozenset({"TDP_MMU_YIELD", "TDP_SPLIT_ALLOC", "TDP_RECOVER_HUGE", "MMU_LOCK_WRITE",
                         "GMEM_INVALIDATE_LOCK", "DIRTY_LOG_ENABLE_WRPROT", "DIRTY_LOG_BEFORE_FLUSH",
                         "CLEAR_DIRTY_LOG_BEFORE_FLUSH", "FAULT_GMEM_GET_PFN", "AGE_SPTE",
                         "FAST_PF_CMPXCHG", "FAST_PF_MARK_DIRTY", "SLOTS_LOCK", "GMEM_TRUNCATE"})

# Where ``start_race`` stops the fault, and where it stops the invalidation racing it
# (``DONE``: run it to its end). Order matters for shrinking: earlier entries are simpler.
FAULT_WINDOWS = ("FAULT_PFN_RESOLVED", "FAULT_SEQ_SNAPSHOT", "FAULT_BEFORE_MMU_LOCK", "FAULT_GUP",
                 "FAULT_GMEM_GET_PFN", "TDP_MAP_STEP_DOWN")
RACE_STOPS = {
    "host": ("DONE", "HOST_PTE_CHANGE", "MN_START_COUNTED", "MN_END_BEFORE_COUNT"),
    "memslot": ("DONE", "SYNCHRONIZE_SRCU", "SWAP_WAIT_MN_ACTIVE", "TDP_MMU_YIELD"),
    "attributes": ("DONE", "ATTR_STORE"),
    "punch_hole": ("DONE", "GMEM_TRUNCATE"),
}

HOST_OPS = ("dontneed", "munmap", "mmap", "mprotect", "migrate", "thp_split", "thp_collapse",
            "age", "host_write")
FAMILIES = ("host", "memslot", "attributes", "punch_hole", "dirty_log", "zap_gfn_range")
# (strategies are immutable values: built once, drawn from in every example)
_FAMILIES_OFF = st.tuples(*(st.booleans() for _ in FAMILIES))
_HOST_OPS_OFF = st.tuples(*(st.booleans() for _ in HOST_OPS))


class KvmMachine(RuleBasedStateMachine):
    bug: str | None = None
    plain: bool = False
    private_mem: bool | None = None
    stats: Stats | None = None
    observe_steps: Any = None  # Driver.observe for every example (staticmethod; coverage)
    weaving: bool = False  # WeavingMachine: coverage-driven set-ups (the ``weave`` rule)
    nr_vmm_actors: int = NR_VMM_ACTORS  # VMM threads of the VM (the WeavingMachine runs more)
    swarm: bool = True  # switch off a drawn subset of the operation families per example

    def __init__(self) -> None:
        super().__init__()
        self.driver: Driver | None = None
        self.families: frozenset[str] = frozenset()
        self.host_ops: tuple[str, ...] = ()
        self.seen_events: set[str] = set()  # the model's protocol events so far (ghost.event)

    # -- setup ----------------------------------------------------------------------------
    @initialize(data=st.data())
    def init_vm(self, data: st.DataObject) -> None:
        config: VmConfig = data.draw(vm_configs(self.bug, self.private_mem), label="config")
        layout: tuple[SlotSpec, ...] = data.draw(memslot_layouts(config.private_mem), label="slots")
        self.driver = Driver(config, layout, nr_vmm=self.nr_vmm_actors)
        self.driver.observe = self.observe_steps or self.driver.observe
        if self.plain or not self.swarm:
            self.families, self.host_ops = frozenset(FAMILIES), HOST_OPS
        else:
            # Swarm testing: each example switches off a drawn subset of the operation families
            # (and of the host mm operations); none left = all on, which is what shrinking
            # moves toward (False = not switched off).
            off = data.draw(_FAMILIES_OFF, label="families_off")
            self.families = frozenset(f for f, o in zip(FAMILIES, off, strict=True) if not o) \
                or frozenset(FAMILIES)
            off = data.draw(_HOST_OPS_OFF, label="host_ops_off")
            self.host_ops = tuple(o for o, x in zip(HOST_OPS, off, strict=True) if not x) or HOST_OPS
        note(f"config {config}")
        note("slots " + ", ".join(f"{s}" for s in layout))
        if self.stats is not None:
            self.stats.examples += 1

    @property
    def d(self) -> Driver:
        assert self.driver is not None
        return self.driver

    def _idle(self, kind: str, family: str | None = None) -> bool:
        if self.driver is None or (family is not None and family not in self.families):
            return False
        return bool(self.d.idle_actors(kind))

    def _actor(self, data: st.DataObject, kind: str) -> str:
        """An idle actor of ``kind``, chosen by its position among *all* actors of that kind
        (stable when Hypothesis deletes other steps), moving on to the next idle one."""
        actors = [a for a in self.d.vm.sched.actors if a.kind == kind]
        i = data.draw(st.integers(0, len(actors) - 1), label=kind)
        for a in actors[i:] + actors[:i]:
            if not a.busy:
                return a.name
        raise AssertionError("precondition guarantees an idle actor")

    # -- what is interesting now ------------------------------------------------------------
    def _slot_gfns(self) -> list[int]:
        """Slot edges (first, last, one past) and huge-frame starts of the memslots: what the
        race rule targets. It depends on the memslots alone, not on recent steps, so a race
        keeps its gfn when Hypothesis deletes earlier steps while shrinking."""
        vm = self.d.vm
        pts: set[int] = set()
        four = vm.arch.geo.pages(2)
        for slots in vm.memslots:
            for s in slots.ordered():
                pts.update((s.base_gfn, s.base_gfn + s.npages - 1, s.base_gfn + s.npages))
                pts.update(range(-(-s.base_gfn // four) * four, s.base_gfn + s.npages, four * 4))
        return sorted(p for p in pts if 0 <= p < vm.arch.geo.max_gfn)

    def _hot_gfns(self) -> list[int]:
        """``_slot_gfns`` and the gfns recent steps touched."""
        vm = self.d.vm
        pts = set(self._slot_gfns())
        for step in self.d.steps[-12:]:
            args = dict(step.args)
            for key in ("gfn", "start"):
                if isinstance(args.get(key), int):
                    pts.add(args[key])
            if isinstance(args.get("hva"), int):
                for slots in vm.memslots:
                    for s in slots.ordered():
                        g = s.hva_to_gfn(0x40000 + args["hva"])
                        if g in s.gfns:
                            pts.add(g)
        return sorted(p for p in pts if 0 <= p < vm.arch.geo.max_gfn)

    def _gfn(self, data: st.DataObject) -> int:
        hi = self.d.vm.arch.geo.max_gfn
        if self.plain:
            return data.draw(st.integers(0, hi - 1), label="gfn")
        return draw_near(data, self._hot_gfns(), 0, min(hi, 160), "gfn")

    def _hva(self, data: st.DataObject) -> int:
        """An hva offset (pages from HVA_BASE), biased to the slots' backing."""
        hi = self.d.vm.arch.geo.max_gfn
        if self.plain:
            return data.draw(st.integers(0, hi - 1), label="hva")
        pts = []
        for g in self._hot_gfns():
            for slots in self.d.vm.memslots:
                slot = slots.search(g)
                if slot is not None:
                    pts.append(slot.gfn_to_hva(g) - 0x40000)
        return draw_near(data, pts, 0, hi, "hva")

    # -- rules: start operations -------------------------------------------------------------
    @precondition(lambda self: self._idle("vcpu"))
    @rule(data=st.data())
    def start_access(self, data: st.DataObject) -> None:
        actor = self._actor(data, "vcpu")
        gfn = self._gfn(data)
        write = data.draw(st.booleans(), label="write")
        # the access is private as the gfn's attribute says, but 1 time in 8 the other way (a
        # private/shared mismatch exits to userspace with KVM_EXIT_MEMORY_FAULT)
        private = self.d.vm.kvm_mem_is_private(gfn)
        if self.d.vm.config.private_mem and not self.plain:
            private ^= data.draw(st.integers(0, 7), label="mismatch") == 7
        elif self.d.vm.config.private_mem:
            private = data.draw(st.booleans(), label="private")
        exec_ = not write and data.draw(st.integers(0, 7), label="exec") == 7  # 1 fetch in 8 reads
        self._start("access", actor, gfn=gfn, write=write, private=private, exec=exec_)

    @precondition(lambda self: self._idle("mm", "host"))
    @rule(data=st.data())
    def start_host_op(self, data: st.DataObject) -> None:
        actor = self._actor(data, "mm")
        op = data.draw(st.sampled_from(self.host_ops), label="op")
        hva = self._hva(data)
        if op in ("dontneed", "munmap", "mmap", "mprotect", "age"):
            npages = data.draw(st.integers(1, 8), label="npages")
            args: dict[str, Any] = {"hva": hva, "npages": npages}
            if op == "mprotect":
                args["writable"] = data.draw(st.booleans(), label="writable")
        else:
            args = {"hva": hva}
        self._start(op, actor, **args)

    @precondition(lambda self: self._idle("vmm", "memslot"))
    @rule(data=st.data())
    def start_memslot(self, data: st.DataObject) -> None:
        actor = self._actor(data, "vmm")
        vm = self.d.vm
        slots = vm.memslots[0].ordered()
        kind = data.draw(st.sampled_from(["delete", "move", "log", "create"]), label="kind")
        gmem_offset = -1
        if kind != "create" and slots:
            s = data.draw(st.sampled_from(slots), label="slot")
            slot, gfn, npages, hva = s.id, s.base_gfn, s.npages, s.userspace_addr - 0x40000
            flags = s.flags & ~(1 << 16)
            if s.has_gmem:
                gmem_offset = s.gmem_pgoff
            if kind == "delete":
                npages = 0
            elif kind == "move":
                gfn = draw_near(data, [gfn + 4, gfn - 4, gfn + 16], 0, 200, "to")
            else:
                flags ^= KVM_MEM_LOG_DIRTY_PAGES
        else:
            used = {s.id for s in slots}
            slot = data.draw(st.sampled_from([i for i in range(4) if i not in used] or [0]),
                             label="slot")
            # near the fixed spots, or where something happened lately (an MMIO fault's gfn)
            gfn = draw_near(data, [100, 112, 128, 144, *(() if self.plain else self._hot_gfns())],
                            0, 200, "gfn")
            npages = data.draw(st.integers(1, 24), label="npages")
            hva = draw_near(data, [gfn, 160, gfn + 1], 0, 232, "hva")
            flags = data.draw(st.sampled_from([0, 0, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY]),
                              label="flags")
        self._start("memslot", actor, slot=slot, as_id=0, flags=flags, gfn=gfn, npages=npages,
                    hva=hva, gmem_offset=gmem_offset)

    @precondition(lambda self: self._idle("vmm", "attributes") and self.d.vm.config.private_mem)
    @rule(data=st.data())
    def start_set_attributes(self, data: st.DataObject) -> None:
        actor = self._actor(data, "vmm")
        start = self._gfn(data)
        n = data.draw(st.integers(1, 9), label="npages")
        self._start("set_attributes", actor, start=start, end=start + n,
                    private=data.draw(st.booleans(), label="private"))

    @precondition(lambda self: self._idle("vmm", "punch_hole") and self.d.vm.config.private_mem)
    @rule(data=st.data())
    def start_punch_hole(self, data: st.DataObject) -> None:
        actor = self._actor(data, "vmm")
        start = self._gfn(data)
        n = data.draw(st.integers(1, 8), label="npages")
        self._start("punch_hole", actor, start=start, end=start + n)

    @precondition(lambda self: self._idle("vmm", "dirty_log"))
    @rule(data=st.data())
    def start_get_dirty_log(self, data: st.DataObject) -> None:
        actor = self._actor(data, "vmm")
        slot = data.draw(st.integers(0, 3), label="slot")
        self._start("get_dirty_log", actor, slot=slot)

    # -- the protocol's race, set up in one rule ---------------------------------------------------
    def _invalidators(self, gfn: int) -> list[str]:
        """The kinds of invalidation of ``gfn`` that can start now (enabled family, idle actor)."""
        vm = self.d.vm
        slot = vm.memslots[0].search(gfn)
        out = []
        if (slot is not None and self._idle("mm", "host")
                and any(op in self.host_ops for op in self._INVALIDATING)):
            out.append("host")
        if self._idle("vmm", "memslot"):
            out.append("memslot")
        if vm.config.private_mem and self._idle("vmm", "attributes"):
            out.append("attributes")
        if vm.config.private_mem and slot is not None and slot.has_gmem \
                and self._idle("vmm", "punch_hole"):
            out.append("punch_hole")
        return out

    def _race_possible(self) -> bool:
        return (self.driver is not None and not self.plain and self._idle("vcpu")
                and any(self._invalidators(g) for g in self._slot_gfns()))

    @precondition(lambda self: self._race_possible())
    @rule(data=st.data())
    def start_race(self, data: st.DataObject) -> None:
        """The race the protocol exists for, in one rule, either way round.

        Fault first: a vCPU fault on gfn G stopped at one of its windows (``FAULT_WINDOWS``),
        then an invalidation of G — a host mm operation over G's hva, a memslot DELETE / MOVE /
        flags change of G's slot, an attribute change or a guest_memfd hole punch over G — run
        to one of its windows or to its end, then the fault maybe resumed to its end.
        Invalidation first: the invalidation of G stopped at one of its windows, then a fault
        on G or a neighbour in G's huge frame run to its end, then the invalidation maybe
        resumed. (Protocol-aware generation: the plain machine has no such rule.) Every part is
        an ordinary start or run step of the schedule."""
        vm = self.d.vm
        hot = [g for g in self._slot_gfns() if self._invalidators(g)]
        gfn = data.draw(st.sampled_from(hot), label="gfn")
        if data.draw(st.booleans(), label="invalidation_first"):
            self._race_fault_inside(data, gfn)
            return
        vcpu = self._race_access(data, gfn)
        window = data.draw(st.sampled_from(FAULT_WINDOWS), label="window")
        self._run_to(vcpu, frozenset({window}))
        if not vm.sched.actor(vcpu).busy:
            return  # the access did not fault (TLB hit, spurious) or the fault ended early
        self._race_invalidate(data, vcpu, gfn)

    def _race_access(self, data: st.DataObject, gfn: int) -> str:
        """Start a guest access of ``gfn`` as the attributes say (1 in 8 the other way)."""
        vm = self.d.vm
        vcpu = self._actor(data, "vcpu")
        write = data.draw(st.booleans(), label="write")
        private = vm.kvm_mem_is_private(gfn)
        if vm.config.private_mem and data.draw(st.integers(0, 7), label="flip_private") == 7:
            private = not private
        self._start("access", vcpu, gfn=gfn, write=write, private=private, exec=False)
        return vcpu

    def _race_fault_inside(self, data: st.DataObject, gfn: int) -> None:
        """An invalidation of ``gfn`` stopped in its window, a fault on ``gfn`` or a gfn of its
        huge frame run to the end inside it, then the invalidation maybe resumed."""
        vm = self.d.vm
        kind = data.draw(st.sampled_from(self._invalidators(gfn)), label="invalidation")
        actor = getattr(self, f"_race_{kind}")(data, gfn)
        if actor is None:
            return
        stop = data.draw(st.sampled_from(RACE_STOPS[kind][1:]), label="stop")
        self._run_to(actor, frozenset({stop}))
        if vm.sched.actor(actor).busy:
            self._maybe_interpose(data, gfn)
        if not vm.sched.actor(actor).busy or not self._idle("vcpu"):
            return
        pages = vm.arch.geo.pages(2)
        frame = gfn - gfn % pages
        near = sorted({gfn, gfn - 1, gfn + 1, frame, frame + pages - 1} & set(range(vm.arch.geo.max_gfn)))
        target = data.draw(st.sampled_from(near), label="fault_gfn")
        vcpu = self._race_access(data, target)
        self._run_to(vcpu, frozenset())
        if data.draw(st.booleans(), label="resume"):
            self._run_to(actor, frozenset())

    def _race_invalidate(self, data: st.DataObject, victim: str, gfn: int) -> None:
        """The second half of a race: ``victim`` is stopped inside its window working on
        ``gfn``; start an invalidation of ``gfn``, run it to a drawn stop (``RACE_STOPS``),
        then maybe let the victim run on to its end."""
        kinds = self._invalidators(gfn)
        if not kinds:
            return
        kind = data.draw(st.sampled_from(kinds), label="invalidation")
        actor = getattr(self, f"_race_{kind}")(data, gfn)
        if actor is None:
            return
        stop = data.draw(st.sampled_from(RACE_STOPS[kind]), label="stop")
        self._run_to(actor, frozenset({stop}))
        self._maybe_interpose(data, gfn)
        if data.draw(st.booleans(), label="resume"):
            self._run_to(victim, frozenset())

    def _race_host(self, data: st.DataObject, gfn: int) -> str:
        slot = self.d.vm.memslots[0].search(gfn)
        assert slot is not None
        actor = self._actor(data, "mm")
        op = data.draw(st.sampled_from([o for o in self._INVALIDATING if o in self.host_ops]),
                       label="op")
        hva = slot.gfn_to_hva(gfn) - 0x40000
        args: dict[str, Any] = {"hva": hva}
        if op in ("dontneed", "munmap", "mprotect"):
            args["npages"] = data.draw(st.integers(1, 4), label="npages")
        if op == "mprotect":
            args["writable"] = False
        self._start(op, actor, **args)
        return actor

    def _race_memslot(self, data: st.DataObject, gfn: int) -> str:
        actor = self._actor(data, "vmm")
        vm = self.d.vm
        s = vm.memslots[0].search(gfn)
        if s is None:  # a slot appearing under the fault (the MMIO / noslot path)
            used = {x.id for x in vm.memslots[0].ordered()}
            free = [i for i in range(4) if i not in used]
            if not free:
                return self._race_memslot_existing(data, actor, vm.memslots[0].ordered()[0])
            self._start("memslot", actor, slot=free[0], as_id=0, flags=0, gfn=gfn, npages=1,
                        hva=gfn, gmem_offset=-1)
            return actor
        return self._race_memslot_existing(data, actor, s)

    def _race_memslot_existing(self, data: st.DataObject, actor: str, s: Any) -> str:
        kind = data.draw(st.sampled_from(["delete", "move", "log"]), label="kind")
        flags = s.flags & ~(1 << 16)
        gfn, npages = s.base_gfn, s.npages
        if kind == "delete":
            npages = 0
        elif kind == "move":
            gfn = s.base_gfn + data.draw(st.sampled_from([4, -4, 16]), label="by")
        else:
            flags ^= KVM_MEM_LOG_DIRTY_PAGES
        self._start("memslot", actor, slot=s.id, as_id=0, flags=flags, gfn=max(gfn, 0),
                    npages=npages, hva=s.userspace_addr - 0x40000,
                    gmem_offset=s.gmem_pgoff if s.has_gmem else -1)
        return actor

    def _race_attributes(self, data: st.DataObject, gfn: int) -> str:
        actor = self._actor(data, "vmm")
        n = data.draw(st.integers(1, 4), label="npages")
        self._start("set_attributes", actor, start=gfn, end=gfn + n,
                    private=not self.d.vm.kvm_mem_is_private(gfn))
        return actor

    def _race_punch_hole(self, data: st.DataObject, gfn: int) -> str | None:
        n = data.draw(st.integers(1, 4), label="npages")
        vm = self.d.vm
        if (not all(vm.kvm_mem_is_private(g) for g in range(gfn, gfn + n))
                and self._idle("vmm", "attributes")):
            # a hole punch races private faults: convert the range to private first (run to
            # its end), so that the fault the race needs goes to guest_memfd
            actor = self._actor(data, "vmm")
            self._start("set_attributes", actor, start=gfn, end=gfn + n, private=True)
            self._run_to(actor, frozenset())
            if not self._idle("vmm"):
                return None  # the conversion blocked (e.g. behind a memslot update)
        actor = self._actor(data, "vmm")
        self._start("punch_hole", actor, start=gfn, end=gfn + n)
        return actor

    # -- x86: protocol-aware races (fast page fault, huge-page recovery) --------------------------
    _INVALIDATING = ("dontneed", "munmap", "mprotect", "migrate", "thp_split", "thp_collapse")

    def _race_targets(self) -> list[int]:
        """gfns an in-flight x86 operation is in the middle of: vCPU faults (slow or fast) and
        huge-page recovery about to rebuild a frame."""
        vm = self.d.vm
        out = {v.fault.gfn for v in vm.vcpus if v.fault is not None}
        out.update(gfn for _, gfn, _ in vm.arch.ghost.recovering.values())
        return sorted(out)

    def _mapped_leaves(self) -> list[tuple[int, int, int]]:
        """(gfn, level, spte) of the present leaves of the vCPUs' valid roots (cached per
        schedule position: preconditions run often)."""
        key = len(self.d.steps)
        cached = getattr(self, "_leaves_cache", None)
        if cached is not None and cached[0] == key:
            return list(cached[1])
        from kvmfuzz.x86 import spte as S
        from kvmfuzz.x86.tdp_mmu import for_each_tdp_pte
        vm = self.d.vm
        out: list[tuple[int, int, int]] = []
        for root in sorted({v.root for v in vm.vcpus if v.root is not None and not v.root.role_invalid},
                           key=lambda r: r.id):
            for it in for_each_tdp_pte(vm, root, 0, vm.arch.geo.max_gfn):
                if S.is_shadow_present_pte(it.old_spte) and S.is_last_spte(it.old_spte, it.level):
                    out.append((it.gfn, it.level, it.old_spte))
        self._leaves_cache = (key, out)
        return list(out)

    def _racer_at(self, gfn: int) -> str | None:
        """The actor stopped at an x86 race point working on ``gfn``, if any."""
        vm = self.d.vm
        for v in vm.vcpus:
            if v.fault is not None and v.fault.gfn == gfn and v.actor.pending is not None \
                    and v.actor.pending.point.name in _RACE_POINTS:
                return v.actor.name
        for name, (_, g, level) in sorted(vm.arch.ghost.recovering.items()):
            a = vm.sched.actor(name)
            if g <= gfn < g + vm.arch.geo.pages(level) and a.pending is not None \
                    and a.pending.point.name in _RACE_POINTS:
                return name
        return None

    def _pending_accesses(self) -> dict[str, int]:
        """vCPU -> gfn of the access it has been given but not yet faulted on (what it will
        touch next)."""
        out = {}
        for v in self.d.vm.vcpus:
            if v.actor.op_name != "access" or v.fault is not None:
                continue
            start = next((st_ for st_ in reversed(self.d.steps)
                          if st_.do == "start" and st_.actor == v.actor.name), None)
            if start is not None:
                out[v.actor.name] = int(start.arg("gfn"))
        return out

    def _pending_access_gfns(self) -> list[int]:
        return sorted(set(self._pending_accesses().values()))

    def _fixable(self) -> dict[int, bool]:
        """gfn -> "needs a write" for pages whose leaf a fast page fault may fix: write-protected
        but MMU-writable (a write faults), or access-tracked (any access faults)."""
        from kvmfuzz.x86 import spte as S
        vm = self.d.vm
        m, geo = vm.arch.masks, vm.arch.geo
        out: dict[int, bool] = {}
        for gfn, level, spte in self._mapped_leaves():
            tracked = S.is_access_track_spte(m, spte)
            if tracked or (not S.is_writable_pte(spte) and S.is_mmu_writable_spte(m, spte)):
                for g in range(gfn, gfn + min(geo.pages(level), 4)):
                    out[g] = not tracked
        return out

    def _fixable_gfns(self) -> list[int]:
        return sorted(self._fixable())

    def _run_to(self, actor: str, points: frozenset[str]) -> None:
        """Run ``actor`` (no other actor in between) until it stops at one of ``points``,
        blocks or finishes: the first half of a race, set up by an x86 start rule."""
        sched = self.d.vm.sched
        a = sched.actor(actor)
        for _ in range(64):
            if not sched.is_runnable(a):
                return
            t = self.d.run_actor(actor)
            self._account(t.reached)
            if t.reached in points:
                return

    def _x86_race_kinds(self) -> list[str]:
        """The x86 race set-ups possible now (rare and short-lived: they get a rule of their
        own, so that they are taken when they appear)."""
        if self.driver is None or self.plain:
            return []
        kinds = []
        if self._fast_pf_candidates():
            kinds.append("prepare_fast_pf")
        if (self._idle("mm", "host") and self._race_targets()
                and any(op in self.host_ops for op in self._INVALIDATING)):
            kinds.append("racing_host_op")
        return kinds

    def _x86_kinds(self) -> list[str]:
        """The other x86 operations that can start now (one rule for all of them, so that
        adding them does not dilute the other rules, ``run`` above all)."""
        if self.driver is None:
            return []
        vm = self.d.vm
        kinds = []
        if self._idle("vcpu") and self._fixable_gfns():
            kinds.append("access_fixable")
        if self._idle("mm", "host") and "age" in self.host_ops:
            kinds.append("young")
        if self._idle("vmm", "zap_gfn_range"):
            kinds.append("zap_gfn_range")
        if self._idle("vmm", "dirty_log"):
            kinds.append("clear_dirty_log")
            if vm.memslots[0].slots:
                kinds.append("toggle_dirty_logging")
            if not vm.config.manual_protect and not any(s.logging for s in vm.memslots[0].ordered()):
                kinds.append("enable_manual_protect")
        if (not self.plain and self._idle("vmm", "memslot") and vm.memslots[0].slots
                and "spte.install.mmio" in self.seen_events):
            kinds.append("memslot_churn")
        return kinds

    def _x86_memslot_churn(self, data: st.DataObject) -> None:
        """Memslot updates back to back, each run to its end (a VMM toggling dirty logging on a
        slot, as live migration does): the memslot generation moves by one per update, which
        with a narrow ``mmio_gen_bits`` wraps the generation MMIO SPTEs are stamped with.
        Offered once an MMIO SPTE was installed (protocol-aware: plain machines do not)."""
        actor = self._actor(data, "vmm")
        s = data.draw(st.sampled_from(self.d.vm.memslots[0].ordered()), label="slot")
        for _ in range(data.draw(st.integers(1, 4), label="updates")):
            s = self.d.vm.memslots[0].slots.get(s.id, s)
            self._start("memslot", actor, slot=s.id, as_id=0,
                        flags=(s.flags & ~(1 << 16)) ^ KVM_MEM_LOG_DIRTY_PAGES, gfn=s.base_gfn,
                        npages=s.npages, hva=s.userspace_addr - 0x40000,
                        gmem_offset=s.gmem_pgoff if s.has_gmem else -1)
            self._run_to(actor, frozenset())
            if self.d.vm.sched.actor(actor).busy or s.id not in self.d.vm.memslots[0].slots:
                return

    @precondition(lambda self: bool(self._x86_kinds()))
    @rule(data=st.data())
    def start_x86_op(self, data: st.DataObject) -> None:
        """Start an x86 operation: a guest access the fast page fault may fix,
        clear_young/test_young, kvm_zap_gfn_range, KVM_CLEAR_DIRTY_LOG, a dirty-logging
        toggle, or KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2."""
        kind = data.draw(st.sampled_from(self._x86_kinds()), label="x86")
        getattr(self, f"_x86_{kind}")(data)

    @precondition(lambda self: bool(self._x86_race_kinds()))
    @rule(data=st.data())
    def start_x86_race(self, data: st.DataObject) -> None:
        """Set up an x86 race: a fast page fault stopped between its lockless read and its
        cmpxchg, huge-page recovery stopped before it rebuilds a frame, or a host invalidation
        of the page such an operation is working on (optionally interleaved with it)."""
        kind = data.draw(st.sampled_from(self._x86_race_kinds()), label="x86")
        getattr(self, f"_x86_{kind}")(data)

    def _x86_access_fixable(self, data: st.DataObject) -> None:
        """A guest access to a page whose SPTE the fast page fault may fix (dirty-log
        write-protected: a write; access-tracked: any access), from a vCPU whose TLB does not
        already translate it (aging does not flush)."""
        fixable = self._fixable()
        gfn = data.draw(st.sampled_from(sorted(fixable)), label="gfn")
        vm = self.d.vm
        cold = [v.actor.name for v in vm.vcpus if not v.actor.busy and not any(
            e.gfn == gfn for e in v.tlb.entries.values())]
        actor = data.draw(st.sampled_from(cold), label="vcpu") if cold else self._actor(data, "vcpu")
        write = fixable[gfn] or data.draw(st.booleans(), label="write")
        self._start("access", actor, gfn=gfn, write=write, private=vm.kvm_mem_is_private(gfn),
                    exec=False)
        if data.draw(st.booleans(), label="to_race"):
            self._run_to(actor, frozenset({"FAST_PF_CMPXCHG", "FAST_PF_MARK_DIRTY"}))

    def _x86_racing_host_op(self, data: st.DataObject) -> None:
        """A host invalidation of the page (or huge frame) an in-flight fault or huge-page
        recovery is working on."""
        actor = self._actor(data, "mm")
        targets = self._race_targets()
        gfn = data.draw(st.sampled_from(targets), label="target")
        op = data.draw(st.sampled_from([o for o in self._INVALIDATING if o in self.host_ops]),
                       label="op")
        slot = self.d.vm.memslots[0].search(gfn)
        hva = slot.gfn_to_hva(gfn) - 0x40000 if slot is not None else gfn
        frame = self.d.vm.arch.geo.pages(2)
        if data.draw(st.booleans(), label="frame"):
            hva, npages = hva - hva % frame, frame
        else:
            npages = 1
        if op in ("dontneed", "munmap", "mprotect"):
            args: dict[str, Any] = {"hva": hva, "npages": npages}
            if op == "mprotect":
                args["writable"] = data.draw(st.booleans(), label="writable")
        else:
            args = {"hva": hva}
        self._start(op, actor, **args)
        how = data.draw(st.sampled_from(["start", "to_race", "interleave"]), label="how")
        if how == "start":
            return
        self._run_to(actor, frozenset({"HOST_PTE_CHANGE"}))
        racer = self._racer_at(gfn)
        if how == "interleave" and racer is not None:
            # the race itself: the racer takes one step (it may drop mmu_lock), the host op
            # goes on through its invalidation, the racer goes on
            self._run_to(racer, _RACE_POINTS)
            self._run_to(actor, frozenset({"HOST_PTE_CHANGE"}))
            self._run_to(racer, _RACE_POINTS)

    def _x86_young(self, data: st.DataObject) -> None:
        """mmu_notifier_clear_young / test_young (lockless TDP MMU aging), mostly of mapped pages."""
        actor = self._actor(data, "mm")
        op = data.draw(st.sampled_from(["clear_young", "test_young"]), label="op")
        mapped = sorted({g for g, _, _ in self._mapped_leaves()})
        slots = self.d.vm.memslots[0]
        hvas = [s_.gfn_to_hva(g) - 0x40000 for g in mapped if (s_ := slots.search(g)) is not None]
        if bool(hvas) and data.draw(st.booleans(), label="mapped"):
            hva = data.draw(st.sampled_from(hvas), label="hva")
        else:
            hva = self._hva(data)
        self._start(op, actor, hva=hva, npages=data.draw(st.integers(1, 8), label="npages"))
        if self.weaving and data.draw(st.booleans(), label="to_race"):
            self._run_to(actor, frozenset({"AGE_SPTE"}))  # an accessed leaf read, not yet aged
            if self.d.vm.sched.actor(actor).busy:
                self._maybe_interpose(data, self._actor_gfn(actor) or 0)

    def _x86_zap_gfn_range(self, data: st.DataObject) -> None:
        """kvm_zap_gfn_range() (MTRR / CR0.CD / APICv inhibit), here started by a VMM thread."""
        actor = self._actor(data, "vmm")
        start = self._gfn(data)
        n = data.draw(st.integers(1, 16), label="npages")
        self._start("zap_gfn_range", actor, start=start, end=start + n)

    def _x86_clear_dirty_log(self, data: st.DataObject) -> None:
        """KVM_CLEAR_DIRTY_LOG of a slot's whole range or a drawn subset of it."""
        actor = self._actor(data, "vmm")
        slots = self.d.vm.memslots[0].ordered()
        if bool(slots) and data.draw(st.booleans(), label="existing"):
            s = data.draw(st.sampled_from(slots), label="slot")
            slot, num = s.id, s.npages
        else:
            slot, num = data.draw(st.integers(0, 3), label="slot"), 64
        all_ones = (1 << min(num, 64)) - 1
        mask = data.draw(st.one_of(st.just(all_ones), st.integers(0, all_ones)), label="mask")
        self._start("clear_dirty_log", actor, slot=slot, first=0, num=num, mask=mask)

    def _x86_toggle_dirty_logging(self, data: st.DataObject) -> None:
        """A migration's dirty-logging cycle: KVM_SET_USER_MEMORY_REGION2 toggling
        KVM_MEM_LOG_DIRTY_PAGES on an existing slot, mostly one with mapped pages (enable:
        split + write-protect; disable: huge-page recovery)."""
        actor = self._actor(data, "vmm")
        slots = self.d.vm.memslots[0].ordered()
        leaves = self._mapped_leaves()
        mapped = [s_ for s_ in slots if any(g in s_.gfns for g, _, _ in leaves)]
        # logged slots with 4K leaves: disabling logging there recovers huge pages
        recoverable = [s_ for s_ in mapped if s_.logging
                       and any(lvl == 1 and g in s_.gfns for g, lvl, _ in leaves)]
        choice = data.draw(st.integers(0, 3), label="which")
        pool = (recoverable if choice >= 2 and recoverable else
                mapped if choice >= 1 and mapped else slots)
        s = data.draw(st.sampled_from(pool), label="slot")
        self._start("memslot", actor, slot=s.id, as_id=0,
                    flags=(s.flags & ~(1 << 16)) ^ KVM_MEM_LOG_DIRTY_PAGES, gfn=s.base_gfn,
                    npages=s.npages, hva=s.userspace_addr - 0x40000,
                    gmem_offset=s.gmem_pgoff if s.has_gmem else -1)
        if data.draw(st.booleans(), label="to_race"):
            # disabling: up to huge-page recovery's race point; enabling: to completion
            self._run_to(actor, frozenset({"TDP_RECOVER_HUGE"}))

    def _recovery_candidates(self) -> list[int]:
        """Slot ids where a dirty-logging cycle would give huge-page recovery work: THP-backed,
        writable, not guest_memfd, at least one huge frame (its pages are faulted in first
        when none is mapped yet)."""
        vm = self.d.vm
        if not vm.config.thp:
            return []
        out = []
        for slot in vm.memslots[0].ordered():
            if slot.readonly or slot.has_gmem or slot.invalid:
                continue
            if self._frames(slot) and (self._idle("vcpu") or any(
                    g in slot.gfns for g, _, _ in self._mapped_leaves())):
                out.append(slot.id)
        return out

    def _frames(self, slot: Any) -> list[int]:
        """The first gfns of the huge frames wholly inside ``slot`` whose hvas line up."""
        pages = self.d.vm.arch.geo.pages(2)
        first = -(-slot.base_gfn // pages) * pages
        return [g for g in range(first, slot.base_gfn + slot.npages - pages + 1, pages)
                if slot.gfn_to_hva(g) % pages == 0]

    def _ensure_mapped(self, data: st.DataObject, gfn: int) -> bool:
        """Fault ``gfn`` in (an idle vCPU writes it, run to the end) unless a leaf maps it."""
        geo = self.d.vm.arch.geo
        if any(g <= gfn < g + geo.pages(lvl) for g, lvl, _ in self._mapped_leaves()):
            return True
        if not self._idle("vcpu"):
            return False
        vcpu = self._actor(data, "vcpu")
        self._start("access", vcpu, gfn=gfn, write=True, private=False, exec=False)
        self._run_to(vcpu, frozenset())
        return not self.d.vm.sched.actor(vcpu).busy

    @precondition(lambda self: (self.driver is not None and not self.plain
                                and self._idle("vmm", "dirty_log") and bool(self._recovery_candidates())))
    @rule(data=st.data())
    def start_recovery_race(self, data: st.DataObject) -> None:
        """Huge-page recovery raced by an invalidation of the frame it rebuilds (a rule of its
        own: the set-up is long and the window narrow, so it must not share a rule's odds)."""
        self._x86_prepare_recovery(data)

    def _x86_prepare_recovery(self, data: st.DataObject) -> None:
        """A dirty-logging cycle on a THP-backed slot: fault a page of a huge frame in if none is
        mapped, enable logging (split, write-protect) unless it is on, then disable it and run
        up to huge-page recovery's race point (a racing invalidation may follow)."""
        vm = self.d.vm
        s = vm.memslots[0].slots[data.draw(st.sampled_from(self._recovery_candidates()),
                                           label="slot")]
        if not any(g in s.gfns for g, _, _ in self._mapped_leaves()):
            gfn = data.draw(st.sampled_from(self._frames(s)), label="frame")
            if not self._ensure_mapped(data, gfn):
                return
        if not self._idle("vmm", "dirty_log"):
            return
        actor = self._actor(data, "vmm")
        for on in ((True, False) if not s.logging else (False,)):
            flags = s.flags & ~(1 << 16)
            flags = flags | KVM_MEM_LOG_DIRTY_PAGES if on else flags & ~KVM_MEM_LOG_DIRTY_PAGES
            self._start("memslot", actor, slot=s.id, as_id=0, flags=flags, gfn=s.base_gfn,
                        npages=s.npages, hva=s.userspace_addr - 0x40000, gmem_offset=-1)
            self._run_to(actor, frozenset({"TDP_RECOVER_HUGE"}))
            if vm.sched.actor(actor).busy:
                break
            s = vm.memslots[0].slots.get(s.id, s)
        recovering = vm.arch.ghost.recovering.get(actor)
        if recovering is None:
            return
        # Recovery is stopped before building the huge SPTE, holding mmu_lock for read. Either
        # race an invalidation of the frame against it from here, or first let the
        # invalidation queue on mmu_lock (it blocks at MMU_LOCK_WRITE), so that recovery sees
        # the lock contended and yields it (TDP_MMU_YIELD) before it installs.
        gfn = recovering[1]
        if not data.draw(st.booleans(), label="contend") or not self._invalidators(gfn):
            self._race_invalidate(data, actor, gfn)
            return
        kind = data.draw(st.sampled_from(self._invalidators(gfn)), label="invalidation")
        racer = getattr(self, f"_race_{kind}")(data, gfn)
        if racer is None:
            return
        self._run_to(racer, frozenset({"MMU_LOCK_WRITE"}))  # to the lock it waits for
        self._run_to(actor, frozenset({"TDP_MMU_YIELD"}))
        stop = data.draw(st.sampled_from(RACE_STOPS[kind]), label="stop")
        self._run_to(racer, frozenset({stop}))
        if data.draw(st.booleans(), label="resume"):
            self._run_to(actor, frozenset())

    def _fast_pf_candidates(self) -> list[int]:
        """Mapped gfns a vCPU is about to touch (its pending access) or could touch (an idle
        vCPU), in slots where the fast page fault can be made to matter."""
        vm = self.d.vm
        geo = vm.arch.geo
        mapped = {g for gfn, level, _ in self._mapped_leaves()
                  for g in range(gfn, gfn + min(geo.pages(level), 4))}
        can_fix = ((self._idle("mm", "host") and "age" in self.host_ops and not vm.config.ad_bits)
                   or self._idle("vmm", "dirty_log"))
        if not mapped and can_fix and self._idle("vcpu"):
            mapped = set(self._hot_gfns())  # a page is faulted in first
        ok = {g for g in mapped if (s_ := vm.memslots[0].search(g)) is not None
              and not s_.readonly and not s_.has_gmem}
        if not can_fix:
            ok &= set(self._fixable())
        pending = sorted(g for g in self._pending_access_gfns() if g in ok)
        if pending:
            return pending
        return sorted(ok) if self._idle("vcpu") else []

    def _x86_prepare_fast_pf(self, data: st.DataObject) -> None:
        """The first half of a fast-page-fault race: make a mapped page fixable without mmu_lock
        (age it without A/D bits; or write-protect it for dirty logging: enable logging, GET or
        CLEAR), then let a vCPU fault on it and stop between its lockless read and its
        cmpxchg (a racing host invalidation may follow)."""
        vm = self.d.vm
        gfn = data.draw(st.sampled_from(self._fast_pf_candidates()), label="gfn")
        slot = vm.memslots[0].search(gfn)
        assert slot is not None
        if not self._ensure_mapped(data, gfn):
            return
        if gfn not in self._fixable():
            if self._idle("mm", "host") and "age" in self.host_ops and not vm.config.ad_bits:
                actor = self._actor(data, "mm")
                self._start("clear_young", actor, hva=slot.gfn_to_hva(gfn) - 0x40000, npages=1)
            elif self._idle("vmm", "dirty_log"):
                actor = self._actor(data, "vmm")
                if not slot.logging:
                    self._start("memslot", actor, slot=slot.id, as_id=0,
                                flags=(slot.flags & ~(1 << 16)) | KVM_MEM_LOG_DIRTY_PAGES,
                                gfn=slot.base_gfn, npages=slot.npages,
                                hva=slot.userspace_addr - 0x40000, gmem_offset=-1)
                elif vm.config.manual_protect:
                    self._start("clear_dirty_log", actor, slot=slot.id, first=0, num=slot.npages,
                                mask=(1 << min(slot.npages, 64)) - 1)
                else:
                    self._start("get_dirty_log", actor, slot=slot.id)
            else:
                return
            self._run_to(actor, frozenset())
        fixable = self._fixable()
        if gfn not in fixable:
            return
        pending = [name for name, g in sorted(self._pending_accesses().items()) if g == gfn]
        if pending:
            vcpu = pending[0]
        elif self._idle("vcpu"):
            vcpu = self._actor(data, "vcpu")
            self._start("access", vcpu, gfn=gfn, write=fixable[gfn],
                        private=vm.kvm_mem_is_private(gfn), exec=False)
        else:
            return
        window = data.draw(st.sampled_from(("FAST_PF_CMPXCHG", "FAST_PF_MARK_DIRTY")), label="window")
        self._run_to(vcpu, frozenset({window}))
        if vm.sched.actor(vcpu).busy:
            self._race_invalidate(data, vcpu, gfn)

    def _x86_enable_manual_protect(self, data: st.DataObject) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), with or without INITIALLY_SET."""
        actor = self._actor(data, "vmm")
        self._start("enable_manual_protect", actor,
                    initially_set=data.draw(st.booleans(), label="initially_set"))

    # -- interleavings for coverage: another kind of operation runs while one is stopped ----------
    def _busy_actors(self) -> list[str]:
        return [a.name for a in self.d.vm.sched.actors if a.busy]

    def _interpose_kinds(self) -> list[str]:
        """The kinds of operation (``kvmfuzz.coverage.KINDS``) that can start now, in
        ``INTERPOSE_KINDS`` order (enabled family, idle actor)."""
        vm = self.d.vm
        out = []
        if self._idle("vcpu"):
            out.append("fault")
        if self._idle("mm", "host"):
            if any(op in self.host_ops for op in self._INVALIDATING):
                out.append("invalidate")
            if "mmap" in self.host_ops or "host_write" in self.host_ops:
                out.append("host_atomic")
            if "age" in self.host_ops:
                out.append("age")
        if self._idle("vmm", "memslot"):
            out.append("memslot")
        if vm.config.private_mem and self._idle("vmm", "attributes"):
            out.append("attributes")
        if vm.config.private_mem and self._idle("vmm", "punch_hole"):
            out.append("punch_hole")
        if self._idle("vmm", "dirty_log"):
            out.append("dirty_log")
        if self._idle("vmm", "zap_gfn_range"):
            out.append("zap_gfn_range")
        return out

    def _actor_gfn(self, name: str) -> int | None:
        """The gfn the operation of actor ``name`` works on: a vCPU's faulting gfn, else the
        ``gfn`` / ``start`` / ``hva`` / ``slot`` argument it was started with."""
        vm = self.d.vm
        for v in vm.vcpus:
            if v.actor.name == name and v.fault is not None:
                return int(v.fault.gfn)
        start = next((s for s in reversed(self.d.steps) if s.do == "start" and s.actor == name), None)
        if start is None:
            return None
        args = dict(start.args)
        for key in ("gfn", "start"):
            if isinstance(args.get(key), int):
                return int(args[key])
        if isinstance(args.get("hva"), int):
            for slots in vm.memslots:
                for s in slots.ordered():
                    g = s.hva_to_gfn(0x40000 + args["hva"])
                    if g in s.gfns:
                        return int(g)
        if isinstance(args.get("slot"), int):
            slot = vm.memslots[0].slots.get(args["slot"])
            return None if slot is None else int(slot.base_gfn)
        return None

    def _start_kind(self, data: st.DataObject, kind: str, gfn: int) -> str | None:
        """Start an operation of ``kind`` on an idle actor, working on ``gfn`` (or its slot);
        the actor's name, or None when nothing could start."""
        vm = self.d.vm
        slot = vm.memslots[0].search(gfn)
        if kind == "fault":
            return self._race_access(data, gfn)
        if kind in ("invalidate", "host_atomic", "age"):
            actor = self._actor(data, "mm")
            hva = slot.gfn_to_hva(gfn) - 0x40000 if slot is not None else gfn
            if kind == "invalidate":
                ops = [o for o in self._INVALIDATING if o in self.host_ops]
            elif kind == "host_atomic":
                ops = [o for o in ("mmap", "host_write") if o in self.host_ops]
            else:
                ops = ["clear_young", "test_young", "age"]
            op = data.draw(st.sampled_from(ops), label="op")
            args: dict[str, Any] = {"hva": hva}
            if op in ("dontneed", "munmap", "mprotect", "mmap", "age", "clear_young", "test_young"):
                args["npages"] = data.draw(st.integers(1, 8), label="npages")
            if op == "mprotect":
                args["writable"] = data.draw(st.booleans(), label="writable")
            self._start(op, actor, **args)
            return actor
        if kind == "memslot":
            return self._race_memslot(data, gfn)
        if kind == "attributes":
            return self._race_attributes(data, gfn)
        actor = self._actor(data, "vmm")
        if kind == "punch_hole":
            n = data.draw(st.integers(1, 8), label="npages")
            self._start("punch_hole", actor, start=gfn, end=gfn + n)
        elif kind == "zap_gfn_range":
            start = max(0, gfn - data.draw(st.integers(0, 4), label="before"))
            n = data.draw(st.integers(1, 16), label="npages")
            self._start("zap_gfn_range", actor, start=start, end=start + n)
        else:  # dirty_log
            which = data.draw(st.sampled_from(["get", "clear", "enable"]), label="dirty_log")
            sid = slot.id if slot is not None else data.draw(st.integers(0, 3), label="slot")
            if which == "get":
                self._start("get_dirty_log", actor, slot=sid)
            elif which == "clear":
                num = slot.npages if slot is not None else 64
                self._start("clear_dirty_log", actor, slot=sid, first=0, num=num,
                            mask=(1 << min(num, 64)) - 1)
            else:
                self._start("enable_manual_protect", actor,
                            initially_set=data.draw(st.booleans(), label="initially_set"))
        return actor

    # The kinds that run on a VMM thread, and those of them that begin by taking slots_lock
    # (kvm_set_memory_region(), kvm_vm_set_mem_attributes(), the dirty-log ioctls).
    _VMM_KINDS = ("memslot", "attributes", "dirty_log", "punch_hole", "zap_gfn_range")
    _SLOTS_LOCK_KINDS = ("memslot", "attributes", "dirty_log")

    def _would_block(self, kind: str) -> bool:
        """Would an operation of VMM ``kind`` block at once on a lock a stopped operation holds
        (slots_lock; a guest_memfd's invalidate_lock for a hole punch; mmu_lock for
        kvm_zap_gfn_range())? It then keeps its VMM thread while that operation stays stopped."""
        vm = self.d.vm
        if kind in self._SLOTS_LOCK_KINDS:
            return vm.slots_lock.owner is not None
        if kind == "punch_hole":
            return any(f.invalidate_lock.owner is not None for f in vm.gmem_files)
        if kind == "zap_gfn_range":
            return vm.mmu_lock.writer is not None or bool(vm.mmu_lock.readers)
        return False

    def _interpose(self, data: st.DataObject, gfn: int, done: set[str] | None = None) -> str | None:
        """Start an operation of a drawn kind (not in ``done``, to which it is added) near
        ``gfn`` and run it until it ends, blocks or (drawn) stops at a race window: what ran
        while the stopped operations waited. In a series (``done`` given), a VMM kind that would
        block on a stopped operation's lock comes only after those that would not: a blocked
        one keeps its VMM thread, and the VMM threads are few."""
        kinds = [k for k in self._interpose_kinds() if done is None or k not in done]
        if done is not None and any(k in self._VMM_KINDS and not self._would_block(k) for k in kinds):
            kinds = [k for k in kinds if k not in self._VMM_KINDS or not self._would_block(k)]
        if not kinds:
            return None
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if done is not None:
            done.add(kind)
        actor = self._start_kind(data, kind, gfn)
        if actor is not None:
            to_window = data.draw(st.booleans(), label="to_window")
            self._run_to(actor, WINDOW_POINTS if to_window else frozenset())
        return actor

    def _interpose_each(self, data: st.DataObject, victim: str, gfn: int) -> bool:
        """While ``victim`` stays stopped, run an operation of each kind that can start, one
        after the other in drawn order (``_interpose``): a stop at a rare point is rare, so it
        meets every kind at once. Is ``victim`` still stopped?"""
        done: set[str] = set()  # each kind at most once
        busy = self.d.vm.sched.actor(victim).busy
        while busy and self._interpose(data, gfn, done) is not None:
            busy = self.d.vm.sched.actor(victim).busy
        return busy

    def _maybe_interpose(self, data: st.DataObject, gfn: int) -> None:
        """Run up to three operations (drawn kinds) one after the other while a set-up rule's
        operation is stopped (none is the simpler choice, which shrinking moves toward); only
        in weaving examples."""
        if not self.weaving:
            return
        done: set[str] = set()
        for _ in range(data.draw(st.integers(0, 3), label="interpose")):
            self._interpose(data, gfn, done)

    # -- weave: an operation stopped at a rare point, other kinds run meanwhile ------------------
    # (recipe, the site of the coverage universe it stops an operation at)
    STOPS = (("gmem_get_pfn", "fault@FAULT_GMEM_GET_PFN"), ("age_spte", "age@AGE_SPTE"),
             ("recover_huge", "memslot@TDP_RECOVER_HUGE"), ("enable_split", "memslot@TDP_SPLIT_ALLOC"),
             ("enable_wrprot", "memslot@DIRTY_LOG_ENABLE_WRPROT"),
             ("clear_split", "dirty_log@TDP_SPLIT_ALLOC"), ("clear_yield", "dirty_log@TDP_MMU_YIELD"),
             ("enable_yield", "memslot@TDP_MMU_YIELD (eager split or write-protect walk)"),
             ("gmem_lock", "memslot@GMEM_INVALIDATE_LOCK / punch_hole@GMEM_INVALIDATE_LOCK"),
             ("harvest_lock", "dirty_log@MMU_LOCK_WRITE"), ("memslot_lock", "memslot@MMU_LOCK_WRITE"),
             ("fast_pf_retries", "fault@FAST_PF_CMPXCHG, lost again and again (fast_pf.gave_up)"),
             ("frozen_table", "fault@TDP_MAP_STEP_DOWN over a table a huge mapping freezes"),
             ("writer_yield", "attributes / punch_hole / zap_gfn_range@TDP_MMU_YIELD"),
             ("before_flush", "dirty_log@DIRTY_LOG_BEFORE_FLUSH / @CLEAR_DIRTY_LOG_BEFORE_FLUSH"),
             ("clear_wrprot", "dirty_log@CLEAR_DIRTY_LOG_BEFORE_FLUSH after an INITIALLY_SET CLEAR "
              "write-protected a huge leaf (spte.wrprot_huge)"),
             ("to_shared_huge", "attributes@ATTR_STORE of a conversion to shared that zapped a "
              "huge shared leaf (attr.to_shared.huge)"))
    # The recipes of the dirty-logging walks over huge pages: they need THP or eager split, most
    # of them both (a quarter of the configurations), so that among all the recipes they would
    # be drawn rarely; they get a rule of their own too (``weave_stop_at_huge``).
    HUGE_STOPS = ("recover_huge", "enable_split", "enable_wrprot", "enable_yield", "clear_split",
                  "clear_yield", "clear_wrprot", "to_shared_huge")

    def _huge_stops(self) -> list[str]:
        return [r for r in self._stops() if r in self.HUGE_STOPS]

    def _stops(self) -> list[str]:
        """The ``STOPS`` recipes that can start now (a cheap test: the recipe may still find
        it cannot get there, and then stops early); cached per schedule position, as
        ``_unmapped_slot_gfns``: two preconditions and the rule ask for it."""
        key = len(self.d.steps)
        cached = getattr(self, "_stops_cache", None)
        if cached is None or cached[0] != key:
            cached = self._stops_cache = (key, tuple(self._stops_now()))
        return list(cached[1])

    def _stops_now(self) -> list[str]:
        vm = self.d.vm
        vcpu, mm, vmm = self._idle("vcpu"), self._idle("mm", "host"), self._idle("vmm")
        plain_slots = [s_ for s_ in vm.memslots[0].ordered() if not s_.has_gmem]
        gmem = vm.config.private_mem and any(s_.has_gmem for s_ in vm.memslots[0].ordered())
        out = []
        if gmem and vcpu and self._idle("vmm", "attributes"):
            out.append("gmem_get_pfn")
        if plain_slots and vcpu and mm and "age" in self.host_ops:
            out.append("age_spte")
        # (the dirty-log recipes take slots_lock, often more than once: not while it is held)
        dirty = (self._idle("vmm", "dirty_log") and (bool(plain_slots) or vm.config.thp)
                 and vm.slots_lock.owner is None)
        if dirty and vcpu:
            if vm.config.eager_split and not vm.config.initially_set:
                out.append("enable_wrprot")
            if vm.config.thp:
                out.append("recover_huge")
                if vm.config.eager_split and not vm.config.initially_set:
                    out += ["enable_split", "enable_yield"]
                # (CLEAR_DIRTY_LOG splits huge pages itself only with INITIALLY_SET and eager split)
                if vm.config.eager_split and (vm.config.initially_set or not vm.config.manual_protect):
                    out += ["clear_split", "clear_yield"]
                # (without eager split, it write-protects the huge leaves at the range's ends)
                if not vm.config.eager_split and (vm.config.initially_set
                                                  or not vm.config.manual_protect):
                    out.append("clear_wrprot")
        if gmem and sum(not a.busy for a in vm.sched.actors if a.kind == "vmm") >= 2 \
                and "punch_hole" in self.families:
            out.append("gmem_lock")
        if dirty and vcpu and plain_slots and bool(self._unmapped_slot_gfns()):
            out.append("harvest_lock")
        if dirty and plain_slots:
            out.append("before_flush")
        if vcpu and self._idle("vmm", "memslot") and len(vm.memslots[0].slots) >= 2 \
                and bool(self._unmapped_slot_gfns()):
            out.append("memslot_lock")
        if dirty and vcpu and mm and any(not s_.readonly for s_ in plain_slots):
            out.append("fast_pf_retries")
        if gmem and vcpu and vm.config.thp and self._idle("vmm", "attributes") \
                and bool(self._shared_frames()):
            out.append("to_shared_huge")
        if vcpu and vm.config.thp and self._idle("vmm", "memslot") and len(vm.memslots[0].slots) < 4:
            out.append("frozen_table")
        if vcpu and vm.memslots[0].slots and bool(self._unmapped_slot_gfns()) and (
                mm or sum(not a.busy for a in vm.sched.actors if a.kind == "vmm") >= 2):
            out.append("writer_yield")
        return out if vmm else []

    def _weave_stop_at(self, data: st.DataObject, recipes: list[str]) -> None:
        """Stop an operation at one of the rare points of ``STOPS`` (a drawn one of
        ``recipes``; each sets up what that point needs), run an operation of each kind that
        can start meanwhile (``_interpose_each``), then maybe let it go on."""
        recipe = data.draw(st.sampled_from(recipes), label="stop_at")
        got = getattr(self, f"_stop_{recipe}")(data)
        if got is None:
            return
        actor, gfn = got
        if not self._interpose_each(data, actor, gfn):
            return
        if data.draw(st.booleans(), label="resume"):
            self._run_to(actor, frozenset())

    def _stopped_at(self, actor: str, gfn: int) -> tuple[str, int] | None:
        return (actor, gfn) if self.d.vm.sched.actor(actor).busy else None

    def _framed_slot(self, data: st.DataObject) -> Any:
        """A non-guest_memfd slot with a whole huge frame (created when none has one)."""
        vm = self.d.vm
        framed = [s_ for s_ in vm.memslots[0].ordered() if not s_.has_gmem and self._frames(s_)]
        if framed:
            return data.draw(st.sampled_from(framed), label="slot")
        return self._create_aligned_slot(data) if vm.config.thp else None

    def _set_logging(self, data: st.DataObject, s: Any, on: bool, stop: str = "DONE") -> str | None:
        """Toggle dirty logging of slot ``s`` (run to ``stop``); the vmm actor."""
        if not self._idle("vmm"):
            return None
        actor = self._actor(data, "vmm")
        flags = s.flags & ~(1 << 16)
        flags = flags | KVM_MEM_LOG_DIRTY_PAGES if on else flags & ~KVM_MEM_LOG_DIRTY_PAGES
        self._start("memslot", actor, slot=s.id, as_id=0, flags=flags, gfn=s.base_gfn,
                    npages=s.npages, hva=s.userspace_addr - 0x40000,
                    gmem_offset=s.gmem_pgoff if s.has_gmem else -1)
        self._run_to(actor, frozenset({stop}))
        return actor

    def _logging_off(self, data: st.DataObject, s: Any) -> Any:
        """Slot ``s`` with dirty logging off (turned off first if on), or None."""
        if s is None or not s.logging:
            return s
        self._set_logging(data, s, False)
        s = self.d.vm.memslots[0].slots.get(s.id)
        return None if s is None or s.logging else s

    def _mmio_wrap_ahead(self, swaps: int) -> bool:
        """Does one of the next ``swaps`` memslot swaps wrap the MMIO generation? Each swap
        moves the generation by ``nr_as``; on a wrap kvm_arch_memslots_updated() ->
        kvm_mmu_invalidate_mmio_sptes() zaps all roots (``kvm_mmu_zap_all_fast``), every mapping
        a recipe faulted in with them (likely with a narrow ``mmio_gen_bits``)."""
        vm = self.d.vm
        gen = vm.memslots[0].generation & ~KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS
        step = vm.config.nr_as
        return any((gen + k * step) & vm.arch.mmio_gen_mask & ~(step - 1) == 0
                   for k in range(1, swaps + 1))

    def _past_mmio_wrap(self, data: st.DataObject, s: Any, swaps: int) -> Any:
        """Slot ``s`` (refreshed) once none of the next ``swaps`` (1 or 2) memslot swaps wraps
        the MMIO generation: when one would, toggle dirty logging of ``s`` twice first (two
        swaps, run to their end), so that the wrap zaps before the recipe maps its pages, not
        after. None when a toggle failed."""
        if s is None or not self._mmio_wrap_ahead(swaps):
            return s
        for on in (not s.logging, s.logging):
            if self._set_logging(data, s, on) is None:
                return None
            s = self.d.vm.memslots[0].slots.get(s.id)
            if s is None or s.logging != on:
                return None
        return s

    def _page(self, data: st.DataObject, s: Any) -> int:
        """One of the first eight gfns of slot ``s``."""
        return int(s.base_gfn + data.draw(st.integers(0, min(s.npages, 8) - 1), label="page"))

    def _gmem_page(self, data: st.DataObject) -> tuple[Any, int] | None:
        """A guest_memfd slot and one of its first gfns, or None."""
        gmem: list[Any] = [s_ for s_ in self.d.vm.memslots[0].ordered() if s_.has_gmem]
        s = data.draw(st.sampled_from(gmem or [None]), label="slot")
        return None if s is None else (s, self._page(data, s))

    def _stop_gmem_get_pfn(self, data: st.DataObject) -> tuple[str, int] | None:
        vm = self.d.vm
        got = self._gmem_page(data)
        if got is None:
            return None
        gfn = got[1]
        if not vm.kvm_mem_is_private(gfn):
            actor = self._actor(data, "vmm")
            self._start("set_attributes", actor, start=gfn, end=gfn + 1, private=True)
            self._run_to(actor, frozenset())
        if not vm.kvm_mem_is_private(gfn) or not self._idle("vcpu"):
            return None
        vcpu = self._actor(data, "vcpu")
        self._start("access", vcpu, gfn=gfn, write=data.draw(st.booleans(), label="write"),
                    private=True, exec=False)
        self._run_to(vcpu, frozenset({"FAULT_GMEM_GET_PFN"}))
        return self._stopped_at(vcpu, gfn)

    def _stop_age_spte(self, data: st.DataObject) -> tuple[str, int] | None:
        vm = self.d.vm
        s = data.draw(st.sampled_from([s_ for s_ in vm.memslots[0].ordered() if not s_.has_gmem]),
                      label="slot")
        gfn = self._page(data, s)
        if not self._ensure_mapped(data, gfn) or not self._idle("mm", "host"):
            return None
        actor = self._actor(data, "mm")
        self._start(data.draw(st.sampled_from(["clear_young", "age"]), label="op"), actor,
                    hva=s.gfn_to_hva(gfn) - 0x40000, npages=1)
        self._run_to(actor, frozenset({"AGE_SPTE"}))
        return self._stopped_at(actor, gfn)

    def _stop_recover_huge(self, data: st.DataObject) -> tuple[str, int] | None:
        s = self._past_mmio_wrap(data, self._framed_slot(data), 2)  # (the disable must not zap)
        if s is None or s.readonly:
            return None
        gfn = data.draw(st.sampled_from(self._frames(s)), label="frame")
        if not self._ensure_mapped(data, gfn):
            return None
        if not s.logging:
            self._set_logging(data, s, True)
            s = self.d.vm.memslots[0].slots.get(s.id)
            if s is None or not s.logging:
                return None
        if self._idle("vcpu"):  # a write splits the frame if eager split did not
            vcpu = self._actor(data, "vcpu")
            self._start("access", vcpu, gfn=gfn, write=True, private=False, exec=False)
            self._run_to(vcpu, frozenset())
        actor = self._set_logging(data, s, False, "TDP_RECOVER_HUGE")
        return None if actor is None else self._stopped_at(actor, gfn)

    def _map_frames(self, data: st.DataObject, s: Any, frames: int) -> int | None:
        """Fault in the first gfn of a drawn huge frame of ``s`` (``frames`` 2: of its first
        two frames too, so that a walk over the slot makes progress between them)."""
        gfn = data.draw(st.sampled_from(self._frames(s)), label="frame")
        for g in sorted({gfn, *self._frames(s)[:frames if frames > 1 else 0]}):
            if not self._ensure_mapped(data, g):
                return None
        return gfn

    def _stop_enable_split(self, data: st.DataObject, frames: int = 1) -> tuple[str, int] | None:
        s = self._past_mmio_wrap(data, self._logging_off(data, self._framed_slot(data)), 1)
        if s is None:
            return None
        gfn = self._map_frames(data, s, frames)
        if gfn is None:
            return None
        actor = self._set_logging(data, s, True, "TDP_SPLIT_ALLOC")
        return None if actor is None else self._stopped_at(actor, gfn)

    def _stop_enable_wrprot(self, data: st.DataObject) -> tuple[str, int] | None:
        vm = self.d.vm
        pool: list[Any] = [s_ for s_ in vm.memslots[0].ordered() if not s_.has_gmem and not s_.readonly]
        s = data.draw(st.sampled_from(pool or [None]), label="slot")
        s = self._logging_off(data, s)
        if s is None:
            return None
        gfn = self._page(data, s)
        if not self._ensure_mapped(data, gfn):
            return None
        actor = self._set_logging(data, s, True, "DIRTY_LOG_ENABLE_WRPROT")
        return None if actor is None else self._stopped_at(actor, gfn)

    def _stop_clear_split(self, data: st.DataObject, frames: int = 1,
                          stop: str = "TDP_SPLIT_ALLOC") -> tuple[str, int] | None:
        """KVM_CLEAR_DIRTY_LOG with INITIALLY_SET (enabled first, logging stopped for that) over
        a logged slot whose huge frame was mapped before logging began: with eager split it
        splits the huge leaf (stopped at ``stop``)."""
        vm = self.d.vm
        if not vm.config.manual_protect:
            # (the model enables manual protect only while no slot logs: stop logging first)
            for s_ in [s_ for s_ in vm.memslots[0].ordered() if s_.logging]:
                if self._logging_off(data, s_) is None:
                    return None
            if not self._idle("vmm"):
                return None
            actor = self._actor(data, "vmm")
            self._start("enable_manual_protect", actor, initially_set=True)
            self._run_to(actor, frozenset())
        if not (vm.config.manual_protect and vm.config.initially_set):
            return None
        s = self._framed_slot(data)
        if s is None:
            return None
        gfn = self._frames(s)[0]
        if not s.logging:
            s = self._past_mmio_wrap(data, s, 1)
            if s is None:
                return None
            mapped = self._map_frames(data, s, frames)
            if mapped is None:
                return None
            gfn = mapped
            self._set_logging(data, s, True)
            s = vm.memslots[0].slots.get(s.id)
            if s is None or not s.logging:
                return None
        if not self._idle("vmm", "dirty_log"):
            return None
        actor = self._actor(data, "vmm")
        self._start("clear_dirty_log", actor, slot=s.id, first=0, num=s.npages,
                    mask=(1 << min(s.npages, 64)) - 1)
        self._run_to(actor, frozenset({stop}))
        return self._stopped_at(actor, gfn)

    def _stop_clear_wrprot(self, data: st.DataObject) -> tuple[str, int] | None:
        """``_stop_clear_split`` without eager split: kvm_arch_mmu_enable_log_dirty_pt_masked()
        write-protects the huge leaf at the start of the cleared range itself (2M level), and
        the CLEAR stops before its flush."""
        return self._stop_clear_split(data, stop="CLEAR_DIRTY_LOG_BEFORE_FLUSH")

    def _hold_mmu_lock(self, data: st.DataObject, gfn: int | None = None) -> str | None:
        """A vCPU fault that links a table and stops at TDP_MAP_STEP_DOWN, holding mmu_lock for
        read (at ``gfn``, or a drawn ``_unmapped_slot_gfns``); the vCPU, or None when there is
        no idle vCPU or the fault linked nothing."""
        if gfn is None:
            gfns = self._unmapped_slot_gfns()
            if not gfns:
                return None
            gfn = data.draw(st.sampled_from(gfns), label="holder_gfn")
        if not self._idle("vcpu"):
            return None
        holder = self._race_access(data, gfn)
        self._run_to(holder, frozenset({"TDP_MAP_STEP_DOWN"}))
        return holder if self.d.vm.sched.actor(holder).busy else None

    def _contend(self, data: st.DataObject, victim: str, gfn: int) -> tuple[str, int] | None:
        """``victim`` is stopped with mmu_lock dropped (TDP_SPLIT_ALLOC) and will re-take it
        for write: a fault takes it for read (TDP_MAP_STEP_DOWN), a writer queues on it, the
        victim queues too; the fault ends and the victim, with the writer still queued, walks
        on until it yields (TDP_MMU_YIELD); the writer takes the lock and runs to its end
        (``_writer_done``)."""
        vm = self.d.vm
        holder = self._hold_mmu_lock(data)
        if holder is None:
            return self._stopped_at(victim, gfn)
        if self._idle("vmm", "zap_gfn_range"):
            writer = self._actor(data, "vmm")
            self._start("zap_gfn_range", writer, start=0, end=vm.arch.geo.max_gfn)
        elif self._idle("mm", "host") and "dontneed" in self.host_ops:
            writer = self._actor(data, "mm")
            s = vm.memslots[0].search(gfn)
            hva = s.gfn_to_hva(gfn) - 0x40000 if s is not None else gfn
            self._start("dontneed", writer, hva=hva, npages=1)
        else:
            self._run_to(holder, frozenset())
            return self._stopped_at(victim, gfn)
        self._run_to(writer, frozenset({"MMU_LOCK_WRITE"}))
        self._run_to(victim, frozenset({"MMU_LOCK_WRITE", "TDP_MMU_YIELD"}))
        self._run_to(holder, frozenset())
        self._run_to(victim, frozenset({"TDP_MMU_YIELD"}))
        return self._writer_done(writer, victim, gfn)

    def _writer_done(self, writer: str, victim: str, gfn: int) -> tuple[str, int] | None:
        """``victim`` yielded mmu_lock to the queued ``writer``: run the writer to its end (what
        the kernel does next), so that its thread is free for the operations that run while
        the victim stays stopped; (victim, gfn), or None when the victim is not stopped."""
        if self.d.vm.sched.actor(victim).busy:
            self._run_to(writer, frozenset())
        return self._stopped_at(victim, gfn)

    def _stop_clear_yield(self, data: st.DataObject) -> tuple[str, int] | None:
        got = self._stop_clear_split(data, frames=2)
        return None if got is None else self._contend(data, *got)

    def _stop_enable_yield(self, data: st.DataObject) -> tuple[str, int] | None:
        got = self._stop_enable_split(data, frames=2)
        return None if got is None else self._contend(data, *got)

    def _stop_gmem_lock(self, data: st.DataObject) -> tuple[str, int] | None:
        vm = self.d.vm
        got = self._gmem_page(data)
        if got is None:
            return None
        s, gfn = got
        holder = self._actor(data, "vmm")
        self._start("punch_hole", holder, start=gfn, end=gfn + data.draw(st.integers(1, 4), label="n"))
        self._run_to(holder, frozenset({"GMEM_TRUNCATE"}))
        if not vm.sched.actor(holder).busy or not self._idle("vmm"):
            return None
        # a second hole punch, or a memslot DELETE / MOVE (kvm_gmem_unbind), waits for the lock
        waiter = self._actor(data, "vmm")
        if data.draw(st.booleans(), label="memslot"):  # DELETE: kvm_gmem_unbind()
            self._start("memslot", waiter, slot=s.id, as_id=0, flags=s.flags & ~(1 << 16),
                        gfn=s.base_gfn, npages=0, hva=s.userspace_addr - 0x40000,
                        gmem_offset=s.gmem_pgoff)
        else:
            self._start("punch_hole", waiter, start=gfn, end=gfn + 1)
        self._run_to(waiter, frozenset({"GMEM_INVALIDATE_LOCK"}))
        victim = data.draw(st.sampled_from([waiter, holder]), label="victim")
        return self._stopped_at(victim, gfn)

    def _logging_slot(self, data: st.DataObject) -> Any:
        """A non-guest_memfd slot that logs dirty pages (logging is turned on when none does)."""
        vm = self.d.vm
        pool = [s_ for s_ in vm.memslots[0].ordered() if not s_.has_gmem]
        logging = [s_ for s_ in pool if s_.logging]
        if logging:
            return data.draw(st.sampled_from(logging), label="slot")
        if not pool:
            return None
        s = data.draw(st.sampled_from(pool), label="slot")
        self._set_logging(data, s, True)
        now: Any = vm.memslots[0].slots.get(s.id)
        return now if now is not None and now.logging else None

    def _start_harvest(self, data: st.DataObject, s: Any) -> str:
        """KVM_GET_DIRTY_LOG, or KVM_CLEAR_DIRTY_LOG of the whole slot with manual protect."""
        actor = self._actor(data, "vmm")
        if self.d.vm.config.manual_protect:
            self._start("clear_dirty_log", actor, slot=s.id, first=0, num=s.npages,
                        mask=(1 << min(s.npages, 64)) - 1)
        else:
            self._start("get_dirty_log", actor, slot=s.id)
        return actor

    def _stop_harvest_lock(self, data: st.DataObject) -> tuple[str, int] | None:
        s = self._logging_slot(data)
        if s is None or not self._idle("vmm", "dirty_log") or self._hold_mmu_lock(data) is None:
            return None
        actor = self._start_harvest(data, s)
        self._run_to(actor, frozenset({"MMU_LOCK_WRITE"}))
        return self._stopped_at(actor, s.base_gfn)

    def _stop_memslot_lock(self, data: st.DataObject) -> tuple[str, int] | None:
        """A memslot DELETE / MOVE past its synchronize_srcu() (a grace period waits only for
        readers that entered before it), then a fault that holds mmu_lock for read: the
        memslot update's zap waits for it at MMU_LOCK_WRITE."""
        vm = self.d.vm
        gfn = data.draw(st.sampled_from(self._unmapped_slot_gfns()), label="gfn")
        others = [s_ for s_ in vm.memslots[0].ordered() if gfn not in s_.gfns]
        if not others:
            return None
        s = data.draw(st.sampled_from(others), label="slot")
        actor = self._actor(data, "vmm")
        move = data.draw(st.booleans(), label="move")
        self._start("memslot", actor, slot=s.id, as_id=0, flags=s.flags & ~(1 << 16),
                    gfn=s.base_gfn + (16 if move else 0), npages=s.npages if move else 0,
                    hva=s.userspace_addr - 0x40000, gmem_offset=s.gmem_pgoff if s.has_gmem else -1)
        self._run_to(actor, frozenset({"SYNCHRONIZE_SRCU"}))
        if not vm.sched.actor(actor).busy or self._hold_mmu_lock(data, gfn) is None:
            return None
        self._run_to(actor, frozenset({"MMU_LOCK_WRITE"}))
        return self._stopped_at(actor, s.base_gfn)

    def _stop_fast_pf_retries(self, data: st.DataObject) -> tuple[str, int] | None:
        """A fast page fault whose cmpxchg is lost again and again: a logged page is written and
        harvested (write-protected, MMU-writable), a vCPU's write stops before its cmpxchg, then
        up to five times the SPTE changes (aging clears A, another vCPU's read sets it) and the
        fast page fault retries (more than four: it gives up to the slow path)."""
        vm = self.d.vm
        s = self._logging_slot(data)
        if s is None or s.readonly or not self._ensure_mapped(data, s.base_gfn):
            return None
        gfn = s.base_gfn
        if not self._idle("vmm", "dirty_log"):
            return None
        harvest = self._start_harvest(data, s)
        self._run_to(harvest, frozenset())
        if gfn not in self._fixable() or not self._idle("vcpu"):
            return None
        vcpu = self._actor(data, "vcpu")
        self._start("access", vcpu, gfn=gfn, write=True, private=False, exec=False)
        self._run_to(vcpu, frozenset({"FAST_PF_CMPXCHG"}))
        # five changes make it give up (fast_pf.gave_up); fewer leave it retrying
        changes = 5 if data.draw(st.booleans(), label="until_it_gives_up") \
            else data.draw(st.integers(1, 4), label="changes")
        for i in range(changes):
            pending = vm.sched.actor(vcpu).pending
            if pending is None or pending.point.name != "FAST_PF_CMPXCHG":
                break
            # alternately: aging clears A (no flush), a vCPU that does not cache the
            # translation reads the page (its walk sets A again)
            cold = [v.actor.name for v in vm.vcpus if not v.actor.busy
                    and not any(e.gfn == gfn for e in v.tlb.entries.values())]
            if i % 2:
                if not cold:
                    break
                other = cold[0]
                self._start("access", other, gfn=gfn, write=False, private=False, exec=False)
            elif self._idle("mm", "host"):
                other = self._actor(data, "mm")
                self._start("clear_young", other, hva=s.gfn_to_hva(gfn) - 0x40000, npages=1)
            else:
                break
            self._run_to(other, frozenset())
            # one step: the cmpxchg; lost, the loop retries and stops before the next one
            self._account(self.d.run_actor(vcpu).reached)
        return self._stopped_at(vcpu, gfn)

    def _shared_frames(self) -> list[int]:
        """The huge frames of guest_memfd slots with a page of the slot just before them."""
        return [g for s_ in self.d.vm.memslots[0].ordered() if s_.has_gmem
                for g in self._frames(s_) if g > s_.base_gfn]

    def _stop_to_shared_huge(self, data: st.DataObject) -> tuple[str, int] | None:
        """A conversion to shared whose range holds a huge *shared* leaf: the page before a huge
        frame of a guest_memfd slot is made private, the frame (shared, THP-backed) is faulted
        in huge, then the range from that page over the frame goes back to shared:
        kvm_arch_pre_set_memory_attributes() zaps the huge leaf too. Stopped at ATTR_STORE."""
        vm = self.d.vm
        frame = data.draw(st.sampled_from(self._shared_frames()), label="frame")
        private = frame - 1
        actor = self._actor(data, "vmm")
        self._start("set_attributes", actor, start=private, end=private + 1, private=True)
        self._run_to(actor, frozenset())
        if vm.sched.actor(actor).busy or not self._ensure_mapped(data, frame) \
                or not self._idle("vmm"):
            return None
        actor = self._actor(data, "vmm")
        self._start("set_attributes", actor, start=private, end=frame + vm.arch.geo.pages(2),
                    private=False)
        self._run_to(actor, frozenset({"ATTR_STORE"}))
        return self._stopped_at(actor, frame)

    def _stop_frozen_table(self, data: st.DataObject) -> tuple[str, int] | None:
        """A fault that links page tables stops at its last TDP_MAP_STEP_DOWN; a memslot CREATE
        makes its huge frame present (it waits in synchronize_srcu() for the fault's SRCU read
        section); another vCPU maps the frame with a huge leaf, which zaps and freezes the table
        the first fault stepped into: it finds a FROZEN SPTE and retries."""
        vm = self.d.vm
        geo = vm.arch.geo
        size = geo.pages(2)
        region = self._free_region(size)
        if region is None:
            return None
        slot, frame = region
        vcpu = self._actor(data, "vcpu")
        self._start("access", vcpu, gfn=frame, write=False, private=False, exec=False)
        for _ in range(geo.root_level - 1):  # down to the 4K table
            self._run_to(vcpu, frozenset({"TDP_MAP_STEP_DOWN"}))
        if not vm.sched.actor(vcpu).busy or not self._idle("vmm") or not self._idle("vcpu"):
            return self._stopped_at(vcpu, frame)
        vmm = self._actor(data, "vmm")
        self._start("memslot", vmm, slot=slot, as_id=0, flags=0, gfn=frame, npages=size,
                    hva=frame, gmem_offset=-1)
        self._run_to(vmm, frozenset({"SYNCHRONIZE_SRCU"}))
        other = self._actor(data, "vcpu")
        self._start("access", other, gfn=frame + 1, write=True, private=False, exec=False)
        self._run_to(other, frozenset())
        return self._stopped_at(vcpu, frame)

    def _stop_writer_yield(self, data: st.DataObject) -> tuple[str, int] | None:
        """A zap walk under mmu_lock (kvm_arch_pre_set_memory_attributes(), a hole punch's
        invalidation, kvm_zap_gfn_range()) over two mapped pages, started while a fault holds
        mmu_lock for read and another writer waits for it: it zaps the first page, finds the
        lock contended and yields (TDP_MMU_YIELD); the writer runs to its end (``_writer_done``)."""
        vm = self.d.vm
        kinds = [k for k in ("attributes", "punch_hole", "zap_gfn_range") if k in self.families
                 and (k == "zap_gfn_range" or vm.config.private_mem)]
        gmem = [s_ for s_ in vm.memslots[0].ordered() if s_.has_gmem]
        if not gmem and "punch_hole" in kinds:
            kinds.remove("punch_hole")
        if not kinds:
            return None
        kind = data.draw(st.sampled_from(kinds), label="writer")
        slots = gmem if kind == "punch_hole" else vm.memslots[0].ordered()
        s = data.draw(st.sampled_from(slots), label="slot")
        step = vm.arch.geo.pages(2) if s.npages > vm.arch.geo.pages(2) else 1
        pages = sorted({s.base_gfn, min(s.base_gfn + step, s.base_gfn + s.npages - 1)})
        for g in pages:  # mapped (private, for a hole punch to zap)
            if kind == "punch_hole" and not vm.kvm_mem_is_private(g) and self._idle("vmm"):
                actor = self._actor(data, "vmm")
                self._start("set_attributes", actor, start=g, end=g + 1, private=True)
                self._run_to(actor, frozenset())
            if not self._idle("vcpu"):
                return None
            vcpu = self._actor(data, "vcpu")
            self._start("access", vcpu, gfn=g, write=True, private=vm.kvm_mem_is_private(g), exec=False)
            self._run_to(vcpu, frozenset())
        holder = self._hold_mmu_lock(data)
        if holder is None:
            return None
        if self._idle("mm", "host") and "dontneed" in self.host_ops:
            writer = self._actor(data, "mm")
            self._start("dontneed", writer, hva=s.gfn_to_hva(pages[0]) - 0x40000, npages=1)
        elif sum(not a.busy for a in vm.sched.actors if a.kind == "vmm") >= 2:
            writer = self._actor(data, "vmm")
            self._start("zap_gfn_range", writer, start=pages[0], end=pages[0] + 1)
        else:
            self._run_to(holder, frozenset())
            return None
        self._run_to(writer, frozenset({"MMU_LOCK_WRITE"}))
        if not self._idle("vmm"):
            self._run_to(holder, frozenset())
            return None
        victim = self._actor(data, "vmm")
        first, end = pages[0], pages[-1] + 1
        if kind == "attributes":
            self._start("set_attributes", victim, start=first, end=end,
                        private=not vm.kvm_mem_is_private(first))
        else:
            self._start(kind, victim, start=first, end=end)
        self._run_to(victim, frozenset({"MMU_LOCK_WRITE", "TDP_MMU_YIELD"}))
        self._run_to(holder, frozenset())
        self._run_to(victim, frozenset({"TDP_MMU_YIELD"}))
        return self._writer_done(writer, victim, first)

    def _maybe_manual_protect(self, data: st.DataObject) -> None:
        """Maybe (drawn) KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, maybe with INITIALLY_SET, run to its
        end: only while no slot logs yet (the model's restriction, see
        kvm_enable_manual_dirty_log_protect)."""
        vm = self.d.vm
        if (not vm.config.manual_protect and not any(s_.logging for s_ in vm.memslots[0].ordered())
                and data.draw(st.booleans(), label="manual")):
            actor = self._actor(data, "vmm")
            self._start("enable_manual_protect", actor,
                        initially_set=data.draw(st.booleans(), label="initially_set"))
            self._run_to(actor, frozenset())

    def _stop_before_flush(self, data: st.DataObject) -> tuple[str, int] | None:
        self._maybe_manual_protect(data)  # then CLEAR_DIRTY_LOG rather than GET
        s = self._logging_slot(data)
        if s is None or not self._idle("vmm", "dirty_log"):
            return None
        if self._idle("vcpu") and data.draw(st.booleans(), label="dirty"):
            self._ensure_mapped(data, s.base_gfn)
        actor = self._start_harvest(data, s)
        self._run_to(actor, frozenset({"DIRTY_LOG_BEFORE_FLUSH", "CLEAR_DIRTY_LOG_BEFORE_FLUSH"}))
        return self._stopped_at(actor, s.base_gfn)

    def _weave_interpose(self, data: st.DataObject) -> None:
        """While an operation is stopped (at any point, or blocked on a lock), run an operation
        of a drawn kind near the gfn it works on: every (point, kind) pair of the coverage
        universe is one such rule away from a rule that stopped an operation there."""
        for _ in range(data.draw(st.integers(1, 3), label="ops")):
            busy = self._busy_actors()
            if not busy:
                return
            # mostly an operation stopped where few set-ups stop one (the stop_at recipes' points)
            rare = [a for a in busy if (p := self.d.vm.sched.actor(a).pending) is not None
                    and p.point.name in _RARE_STOPS]
            if rare and bool(data.draw(st.booleans(), label="rare")):
                busy = rare
            victim = data.draw(st.sampled_from(busy), label="stopped")
            gfn = self._actor_gfn(victim)
            if gfn is None:
                gfn = data.draw(st.sampled_from(self._slot_gfns() or [0]), label="gfn")
            self._interpose(data, gfn)

    # A writer of mmu_lock, started over a whole slot (so that its walk makes progress before
    # it finds the lock contended): the kinds ``_weave_contended`` draws from.
    _WRITERS = ("invalidate", "memslot", "attributes", "punch_hole", "dirty_log", "zap_gfn_range")

    def _writer_kinds(self, slot: Any) -> list[str]:
        vm = self.d.vm
        out = []
        if self._idle("mm", "host") and any(op in self.host_ops for op in ("dontneed", "munmap", "mprotect")):
            out.append("invalidate")
        if self._idle("vmm", "memslot"):
            out.append("memslot")
        if vm.config.private_mem and self._idle("vmm", "attributes"):
            out.append("attributes")
        if vm.config.private_mem and slot.has_gmem and self._idle("vmm", "punch_hole"):
            out.append("punch_hole")
        if self._idle("vmm", "dirty_log") and slot.logging:
            out.append("dirty_log")
        if self._idle("vmm", "zap_gfn_range"):
            out.append("zap_gfn_range")
        return out

    def _start_writer(self, data: st.DataObject, kind: str, slot: Any) -> str | None:
        """Start a writer of ``kind`` over all of ``slot`` (see ``_WRITERS``)."""
        vm = self.d.vm
        first, end = slot.base_gfn, slot.base_gfn + slot.npages
        if kind == "invalidate":
            actor = self._actor(data, "mm")
            op = data.draw(st.sampled_from([o for o in ("dontneed", "munmap", "mprotect")
                                            if o in self.host_ops]), label="op")
            args: dict[str, Any] = {"hva": slot.userspace_addr - 0x40000, "npages": slot.npages}
            if op == "mprotect":
                args["writable"] = False
            self._start(op, actor, **args)
            return actor
        if kind == "memslot":
            actor = self._actor(data, "vmm")
            return self._race_memslot_existing(data, actor, slot)
        if kind == "dirty_log":
            return self._start_harvest(data, slot)
        actor = self._actor(data, "vmm")
        if kind == "attributes":
            self._start("set_attributes", actor, start=first, end=end,
                        private=not vm.kvm_mem_is_private(first))
        elif kind == "punch_hole":
            self._start("punch_hole", actor, start=first, end=end)
        else:
            self._start("zap_gfn_range", actor, start=first, end=end)
        return actor

    def _unmapped_slot_gfns(self) -> list[int]:
        """Where a fault likely links a table (TDP_MAP_STEP_DOWN, where it holds mmu_lock for
        read): memslot gfns no present leaf maps, and maybe one gfn with no memslot (cached per
        schedule position, as ``_mapped_leaves``: the weave preconditions ask several times)."""
        key = len(self.d.steps)
        cached = getattr(self, "_unmapped_cache", None)
        if cached is not None and cached[0] == key:
            return list(cached[1])
        geo = self.d.vm.arch.geo
        leaves = self._mapped_leaves()
        out = [g for g in self._slot_gfns() if self.d.vm.memslots[0].search(g) is not None
               and not any(lg <= g < lg + geo.pages(lvl) for lg, lvl, _ in leaves)]
        # those far from every mapped leaf first (no leaf in their 1G-level region): a fault
        # there likely links a table; then a gfn of an empty region with no memslot (an MMIO
        # fault links tables just the same)
        used = {geo.align_down(lg, 3) for lg, _, _ in leaves}
        out.sort(key=lambda g: geo.align_down(g, 3) in used)
        if not out or geo.align_down(out[0], 3) in used:
            empty = [r + 1 for r in range(0, geo.max_gfn, geo.pages(3)) if r not in used
                     and all(self.d.vm.memslots[0].search(g) is None for g in range(r, r + geo.pages(3)))]
            out = empty[:1] + out
        self._unmapped_cache = (key, out)
        return list(out)

    def _contention_possible(self) -> bool:
        if self.driver is None or self.plain or not self._idle("vcpu") or not self.d.vm.memslots[0].slots:
            return False
        writers = sum(not a.busy for a in self.d.vm.sched.actors if a.kind in ("mm", "vmm"))
        return writers >= 2 and bool(self._unmapped_slot_gfns())

    def _weave_contended(self, data: st.DataObject) -> None:
        """Writers queue on mmu_lock behind a fault that holds it for read, so that the next
        walker under mmu_lock finds it contended and yields it (tdp_mmu_iter_cond_resched():
        TDP_MMU_YIELD; an eager split drops it to allocate anyway: TDP_SPLIT_ALLOC), with an
        operation of another kind run inside that window.

        A vCPU faults on an unmapped gfn and stops at TDP_MAP_STEP_DOWN (mmu_lock held for
        read); zero to two writers over the whole slot (host invalidation, memslot update,
        attribute change, hole punch, GET/CLEAR_DIRTY_LOG, kvm_zap_gfn_range) run until they
        block at MMU_LOCK_WRITE; the victim -- the first writer, or an operation already stopped
        (a zap, split or recovery walk that will re-take the lock) -- runs until it blocks too;
        the fault ends; the victim runs to its yield; an operation of each kind that can start
        runs meanwhile (``_interpose_each``); then the victim maybe resumes."""
        vm = self.d.vm
        stopped = [a for a in self._busy_actors() if vm.sched.is_runnable(vm.sched.actor(a))]
        gfn = data.draw(st.sampled_from(self._unmapped_slot_gfns()), label="gfn")
        # the writers work on the holder's slot, or (a gfn with no memslot) on a drawn one
        slot = vm.memslots[0].search(gfn) or data.draw(st.sampled_from(vm.memslots[0].ordered()),
                                                        label="slot")
        holder = self._race_access(data, gfn)
        self._run_to(holder, frozenset({"TDP_MAP_STEP_DOWN"}))
        if not vm.sched.actor(holder).busy:
            return  # no table to link (or it retried): nobody holds mmu_lock
        writers: list[str] = []
        for label in ("writer", "contender")[:data.draw(st.integers(0 if stopped else 1, 2),
                                                         label="writers")]:
            slot = vm.memslots[0].slots.get(slot.id) or vm.memslots[0].search(gfn) or slot
            kinds = self._writer_kinds(slot)
            if not kinds:
                break
            actor = self._start_writer(data, data.draw(st.sampled_from(kinds), label=label), slot)
            if actor is None:
                break
            self._run_to(actor, frozenset({"MMU_LOCK_WRITE"}))
            writers.append(actor)
        candidates = writers + stopped
        if not candidates:
            self._run_to(holder, frozenset())
            return
        victim = data.draw(st.sampled_from(candidates), label="victim")
        self._run_to(victim, frozenset({"MMU_LOCK_WRITE", "TDP_MMU_YIELD", "TDP_SPLIT_ALLOC"}))
        self._maybe_interpose(data, gfn)  # while the writers (and maybe the victim) wait
        self._run_to(holder, frozenset())
        if not vm.sched.actor(victim).busy:
            return
        self._run_to(victim, frozenset({"TDP_MMU_YIELD", "TDP_SPLIT_ALLOC"}))
        if not vm.sched.actor(victim).busy:
            return
        if not self._interpose_each(data, victim, self._actor_gfn(victim) or gfn):
            return
        if data.draw(st.booleans(), label="resume"):
            self._run_to(victim, frozenset())

    def _free_region(self, size: int) -> tuple[int, int] | None:
        """A free slot id and the first ``size``-aligned run of ``size`` gfns no memslot
        covers, or None."""
        vm = self.d.vm
        used = {x.id for x in vm.memslots[0].ordered()}
        free = [i for i in range(4) if i not in used]
        gfn = next((g for g in range(0, vm.arch.geo.max_gfn - size + 1, size)
                    if all(vm.memslots[0].search(x) is None for x in range(g, g + size))), None)
        return None if not free or gfn is None else (free[0], gfn)

    def _create_aligned_slot(self, data: st.DataObject) -> Any:
        """KVM_SET_USER_MEMORY_REGION2 creating a slot of two huge frames at the first free
        frame-aligned gfns, hva = gfn (run to its end); the new slot, or None."""
        size = 2 * self.d.vm.arch.geo.pages(2)
        region = self._free_region(size)
        if region is None or not self._idle("vmm"):
            return None
        slot, gfn = region
        actor = self._actor(data, "vmm")
        self._start("memslot", actor, slot=slot, as_id=0, flags=0, gfn=gfn, npages=size, hva=gfn,
                    gmem_offset=-1)
        self._run_to(actor, frozenset())
        return self.d.vm.memslots[0].slots.get(slot)

    def _dirty_cycle_possible(self) -> bool:
        return (self.driver is not None and not self.plain and self._idle("vmm", "dirty_log")
                and any(not s.has_gmem for s in self.d.vm.memslots[0].ordered()))

    def _weave_dirty_log_cycle(self, data: st.DataObject) -> None:
        """A migration's dirty-log cycle on one slot, each step run to its end unless a drawn
        stop says otherwise: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (maybe INITIALLY_SET) if no slot
        logs yet, pages faulted in (huge where THP backs them), logging enabled (eager split,
        write-protect; stop at DIRTY_LOG_ENABLE_WRPROT / TDP_SPLIT_ALLOC), a guest write, then
        KVM_GET_DIRTY_LOG or KVM_CLEAR_DIRTY_LOG (with INITIALLY_SET it splits huge pages
        itself) stopped before its flush or at an allocation."""
        vm = self.d.vm
        self._maybe_manual_protect(data)
        # (guest_memfd slots cannot log dirty pages)
        pool = [s_ for s_ in vm.memslots[0].ordered() if not s_.has_gmem]
        framed = [s_ for s_ in pool if self._frames(s_)]
        if not framed and vm.config.thp and data.draw(st.booleans(), label="new_slot"):
            # no slot can hold a huge page: create one whose gfns and hvas line up
            created = self._create_aligned_slot(data)
            if created is None:
                return
            framed = [created]
        s = data.draw(st.sampled_from(framed or pool), label="slot")
        if not s.logging:  # (an enable that wraps the MMIO generation would zap the huge page)
            s = self._past_mmio_wrap(data, s, 1)
            if s is None:
                return
        # a page of one of its huge frames mapped (huge where THP backs it and logging is off)
        frames = self._frames(s) or [s.base_gfn]
        if data.draw(st.booleans(), label="fault_in") and not self._ensure_mapped(
                data, data.draw(st.sampled_from(frames), label="frame")):
            return
        if not self._idle("vmm", "dirty_log"):
            return
        if not s.logging and data.draw(st.booleans(), label="enable"):
            stop = data.draw(st.sampled_from(["DONE", "DIRTY_LOG_ENABLE_WRPROT", "TDP_SPLIT_ALLOC"]),
                             label="enable_stop")
            actor = self._set_logging(data, s, True, stop)
            if actor is not None and vm.sched.actor(actor).busy:
                self._maybe_interpose(data, s.base_gfn)
                return
            s = vm.memslots[0].slots.get(s.id, s)
        if self._idle("vcpu") and data.draw(st.booleans(), label="dirty"):
            vcpu = self._actor(data, "vcpu")
            gfn = data.draw(st.sampled_from(range(s.base_gfn, s.base_gfn + min(s.npages, 16))),
                            label="write_gfn")
            self._start("access", vcpu, gfn=gfn, write=True, private=vm.kvm_mem_is_private(gfn),
                        exec=False)
            self._run_to(vcpu, frozenset())
        if not s.logging or not self._idle("vmm", "dirty_log") or not data.draw(st.booleans(),
                                                                                  label="harvest"):
            return
        actor = self._actor(data, "vmm")
        if vm.config.manual_protect:
            all_ones = (1 << min(s.npages, 64)) - 1
            mask = data.draw(st.one_of(st.just(all_ones), st.integers(0, all_ones)), label="mask")
            self._start("clear_dirty_log", actor, slot=s.id, first=0, num=s.npages, mask=mask)
            before_flush = "CLEAR_DIRTY_LOG_BEFORE_FLUSH"
        else:
            self._start("get_dirty_log", actor, slot=s.id)
            before_flush = "DIRTY_LOG_BEFORE_FLUSH"
        stop = data.draw(st.sampled_from(["DONE", before_flush, "TDP_SPLIT_ALLOC"]), label="stop")
        self._run_to(actor, frozenset({stop}))
        if vm.sched.actor(actor).busy:
            self._maybe_interpose(data, s.base_gfn)

    # at most this many memslot updates to bring the MMIO generation round to a stamp (a narrow
    # ``mmio_gen_bits``; with the kernel's 19 bits a wrap takes 2^19 / nr_as updates)
    _MMIO_CYCLE_MAX = 16

    def _mmio_cycle(self) -> int:
        """Memslot updates (each moves the generation by ``nr_as``) per MMIO-generation wrap."""
        vm = self.d.vm
        return (vm.arch.mmio_gen_mask + 1) // vm.config.nr_as

    def _mmio_cycle_possible(self) -> bool:
        if self.driver is None or self.plain:
            return False
        vm = self.d.vm
        return (vm.arch.masks.mmio_caching and self._mmio_cycle() <= self._MMIO_CYCLE_MAX
                and self._idle("vcpu") and self._idle("vmm", "memslot")
                and not any(a.busy for a in vm.sched.actors if a.kind == "vmm")
                and len(vm.memslots[0].slots) < 4)

    def _weave_mmio_cycle(self, data: st.DataObject) -> None:
        """An MMIO SPTE that lives through a whole MMIO-generation cycle: a guest access to a
        gfn no memslot covers installs an MMIO SPTE stamped with the generation; a memslot
        CREATE then covers that gfn (the stamp no longer matches, so the next access would
        fault the memory in); dirty-logging toggles of the new slot (one memslot update each,
        run to their end) move the generation on until it is back at the stamp (or stop
        short: a drawn count), which wraps it: kvm_arch_memslots_updated() must zap all
        SPTEs there, or the stale SPTE passes check_mmio_spte() again (I15). Then maybe the
        access again."""
        vm = self.d.vm
        size = vm.arch.geo.pages(2)
        region = self._free_region(size)
        if region is None:
            return
        slot, frame = region
        gfn = frame + data.draw(st.integers(0, size - 1), label="gfn")
        vcpu = self._actor(data, "vcpu")
        self._start("access", vcpu, gfn=gfn, write=data.draw(st.booleans(), label="write"),
                    private=False, exec=False)
        self._run_to(vcpu, frozenset())
        if vm.sched.actor(vcpu).busy:
            return
        vmm = self._actor(data, "vmm")
        self._start("memslot", vmm, slot=slot, as_id=0, flags=0, gfn=frame, npages=size,
                    hva=frame, gmem_offset=-1)
        self._run_to(vmm, frozenset())
        s = vm.memslots[0].slots.get(slot)
        if s is None or vm.sched.actor(vmm).busy:
            return
        cycle = self._mmio_cycle()
        updates = (cycle - 1 if not data.draw(st.booleans(), label="short")
                   else data.draw(st.integers(1, cycle - 1), label="updates"))
        for _ in range(updates):
            if self._set_logging(data, s, not s.logging) is None:
                return
            s = vm.memslots[0].slots.get(slot)
            if s is None or any(a.busy for a in vm.sched.actors if a.kind == "vmm"):
                return
        if self._idle("vcpu") and data.draw(st.booleans(), label="again"):
            vcpu = self._actor(data, "vcpu")
            self._start("access", vcpu, gfn=gfn, write=False, private=False, exec=False)
            self._run_to(vcpu, frozenset())

    def _start(self, op: str, actor: str, **args: Any) -> None:
        self.d.start(op, actor, **args)
        if self.stats is not None:
            self.stats.starts[op] = self.stats.starts.get(op, 0) + 1

    # -- rule: advance the schedule -----------------------------------------------------------
    @precondition(lambda self: self.driver is not None and not self.d.vm.sched.quiescent())
    @rule(pick=st.integers(0, 7), steps=st.integers(1, 12), to_window=st.booleans())
    def run(self, pick: int, steps: int, to_window: bool) -> None:
        """Run one actor for up to ``steps`` atomic steps (stopping when it blocks or ends), or,
        with ``to_window``, until it stops at a race-window point (``WINDOW_POINTS``).

        ``pick`` 0: the actor that ran last keeps running (no context switch); ``pick`` k: the
        k-th actor in stable order (vcpu0.., mm0, mm1, vmm0, vmm1[, vmm2]), or the next runnable one
        after it. Naming actors by position in the fixed list keeps a step's meaning when
        Hypothesis deletes other steps while shrinking.
        """
        sched = self.d.vm.sched
        ready = [a for a in sched.actors if sched.is_runnable(a)]
        if not ready:
            sched.raise_deadlock()
        if pick == 0 and sched.last is not None and sched.last in ready:
            actor = sched.last
        else:
            start = (pick - 1) % len(sched.actors) if pick else 0
            actor = next((a for a in ready if a.order >= start), ready[0])
        if self.plain:
            to_window = False
        for _ in range(64 if to_window else steps):
            t = self.d.run_actor(actor.name)
            self._account(t.reached)
            if not sched.is_runnable(actor) or (to_window and t.reached in WINDOW_POINTS):
                break

    def _account(self, reached: str) -> None:
        events = self.d.drain_events()
        self.seen_events.update(events)
        for e in events:
            event(e)
        if self.stats is not None:
            self.stats.steps += 1
            self.stats.points[reached] = self.stats.points.get(reached, 0) + 1
            for e in events:
                self.stats.events[e] = self.stats.events.get(e, 0) + 1

    def teardown(self) -> None:
        """Run every started operation to its end (fewest switches), then note the schedule.

        (Invariants run inside the driver after every step, so the machine has no
        ``@invariant``; the schedule is noted once here rather than step by step, which costs
        Hypothesis a settings lookup per note. Hypothesis prints it for the failing example.)"""
        if self.driver is None:
            return
        before = len(self.d.steps)
        try:
            if self.d.failure is None:
                # (after a violation inside a rule, running on would only chain a second
                # exception to it: Hypothesis would see another failure and shrink less well)
                self.d.finish()
        finally:
            note("schedule:\n" + "\n".join(f"  {s}" for s in self.d.steps))
            if self.stats is not None:
                self.stats.steps += len(self.d.steps) - before


class WeavingMachine(KvmMachine):
    """``KvmMachine`` plus the ``weave`` rule, and interpositions inside its race set-ups: the
    interleavings the coverage universe asks for. Campaigns alternate rounds of the two
    (``kvmfuzz.campaign``): weaving reaches more (point, kind) pairs, but dilutes the race
    rules and gives compound schedules that shrink less well, so it is not the hunting
    machine the planted-bug tests and the benchmark measure. Its VM has a third VMM thread
    (``vmm2``), and every operation family is on in every example (no swarm)."""

    weaving = True
    # a third VMM thread: an operation stopped on one holds slots_lock, another waits for it,
    # and an operation of a third VMM kind can still run meanwhile
    nr_vmm_actors = MAX_VMM_ACTORS
    # every family in every example: a switched-off family is a kind no interposition can run
    swarm = False

    # one rule per set-up, so that together they get a fair share of the rule picks
    @precondition(lambda self: bool(self._busy_actors()) and bool(self._interpose_kinds()))
    @rule(data=st.data())
    def weave_interpose(self, data: st.DataObject) -> None:
        """Run another kind of operation near a stopped one (``_weave_interpose``)."""
        self._weave_interpose(data)

    @precondition(lambda self: self._contention_possible())
    @rule(data=st.data())
    def weave_contended(self, data: st.DataObject) -> None:
        """Writers queued on mmu_lock, so that a walk yields it (``_weave_contended``)."""
        self._weave_contended(data)

    @precondition(lambda self: self._dirty_cycle_possible())
    @rule(data=st.data())
    def weave_dirty_log_cycle(self, data: st.DataObject) -> None:
        """A migration's dirty-log cycle (``_weave_dirty_log_cycle``)."""
        self._weave_dirty_log_cycle(data)

    @precondition(lambda self: self._mmio_cycle_possible())
    @rule(data=st.data())
    def weave_mmio_cycle(self, data: st.DataObject) -> None:
        """An MMIO SPTE through a whole MMIO-generation cycle (``_weave_mmio_cycle``)."""
        self._weave_mmio_cycle(data)

    @precondition(lambda self: bool(self._stops()))
    @rule(data=st.data())
    def weave_stop_at(self, data: st.DataObject) -> None:
        """An operation stopped at a rare point, others run meanwhile (``_weave_stop_at``)."""
        self._weave_stop_at(data, self._stops())

    @precondition(lambda self: bool(self._huge_stops()))
    @rule(data=st.data())
    def weave_stop_at_huge(self, data: st.DataObject) -> None:
        """The same, at a point of a dirty-logging walk over huge pages (``HUGE_STOPS``)."""
        self._weave_stop_at(data, self._huge_stops())


def make_machine(bug: str | None = None, *, plain: bool = False, stats: Stats | None = None,
                 private_mem: bool | None = None, weaving: bool = False) -> type[KvmMachine]:
    """A machine class for ``bug`` (None: the correct model); ``weaving``: a WeavingMachine."""
    name = f"{'Weaving' if weaving else 'Kvm'}Machine_{bug or 'correct'}{'_plain' if plain else ''}"
    base = WeavingMachine if weaving else KvmMachine
    return type(name, (base,), {"bug": bug, "plain": plain, "stats": stats,
                                "private_mem": private_mem})
