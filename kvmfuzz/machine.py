"""The Hypothesis stateful machine: a thin adapter over ``kvmfuzz.driver.Driver``.

Rules only start operations on idle actors or advance the schedule with ``run(pick)`` (pick
0 = the last actor keeps running, so shrinking minimises context switches). Invariants run
inside the driver after every step; teardown runs every actor to completion.
``make_machine(bug=..., plain=...)`` builds a machine class for a planted bug; ``plain=True``
gives the baseline machine with uniform arguments and no protocol-aware biasing;
``weaving=True`` the ``WeavingMachine`` of ``kvmfuzz.weaving`` (this machine plus the
coverage-driven ``weave_*`` rules; campaigns alternate the two).
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import NR_VMM_ACTORS, Driver, SlotSpec
from kvmfuzz.points import Point
from kvmfuzz.strategies import draw_near, memslot_layouts, vm_configs
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY


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

    # -- what is in flight ------------------------------------------------------------------
    def _busy_actors(self) -> list[str]:
        return [a.name for a in self.d.vm.sched.actors if a.busy]


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


    def _maybe_interpose(self, data: st.DataObject, gfn: int) -> None:
        """Where a race set-up leaves an operation stopped: nothing here; the WeavingMachine
        (``kvmfuzz.weaving``) runs other kinds of operation there."""

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


def make_machine(bug: str | None = None, *, plain: bool = False, stats: Stats | None = None,
                 private_mem: bool | None = None, weaving: bool = False) -> type[KvmMachine]:
    """A machine class for ``bug`` (None: the correct model); ``weaving``: a WeavingMachine."""
    from kvmfuzz.weaving import WeavingMachine  # (it builds on this module's KvmMachine)
    name = f"{'Weaving' if weaving else 'Kvm'}Machine_{bug or 'correct'}{'_plain' if plain else ''}"
    base: type[KvmMachine] = WeavingMachine if weaving else KvmMachine
    return type(name, (base,), {"bug": bug, "plain": plain, "stats": stats,
                                "private_mem": private_mem})
