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
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import Driver, SlotSpec
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

HOST_OPS = ("dontneed", "munmap", "mmap", "mprotect", "migrate", "thp_split", "thp_collapse",
            "age", "host_write")
FAMILIES = ("host", "memslot", "attributes", "punch_hole", "dirty_log", "zap_gfn_range")


class KvmMachine(RuleBasedStateMachine):
    bug: str | None = None
    plain: bool = False
    private_mem: bool | None = None
    stats: Stats | None = None

    def __init__(self) -> None:
        super().__init__()
        self.driver: Driver | None = None
        self.families: frozenset[str] = frozenset()
        self.host_ops: tuple[str, ...] = ()

    # -- setup ----------------------------------------------------------------------------
    @initialize(data=st.data())
    def init_vm(self, data: st.DataObject) -> None:
        config: VmConfig = data.draw(vm_configs(self.bug, self.private_mem), label="config")
        layout: tuple[SlotSpec, ...] = data.draw(memslot_layouts(config.private_mem), label="slots")
        self.driver = Driver(config, layout)
        if self.plain:
            self.families, self.host_ops = frozenset(FAMILIES), HOST_OPS
        else:
            # Swarm testing: each example runs a drawn subset of the operation families.
            self.families = frozenset(data.draw(
                st.sets(st.sampled_from(FAMILIES), min_size=1), label="families"))
            self.host_ops = tuple(sorted(data.draw(
                st.sets(st.sampled_from(HOST_OPS), min_size=1), label="host_ops")))
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
    def _hot_gfns(self) -> list[int]:
        vm = self.d.vm
        pts: set[int] = set()
        four = vm.arch.geo.pages(2)
        for slots in vm.memslots:
            for s in slots.ordered():
                pts.update((s.base_gfn, s.base_gfn + s.npages - 1, s.base_gfn + s.npages))
                pts.update(range(-(-s.base_gfn // four) * four, s.base_gfn + s.npages, four * 4))
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
        private = self.d.vm.config.private_mem and data.draw(st.booleans(), label="private")
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
            gfn = draw_near(data, [100, 112, 128, 144], 0, 200, "gfn")
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

    def _fixable_gfns(self) -> list[int]:
        """gfns whose leaf a fast page fault may fix: write-protected but MMU-writable, or
        access-tracked."""
        from kvmfuzz.x86 import spte as S
        vm = self.d.vm
        m, geo = vm.arch.masks, vm.arch.geo
        out: set[int] = set()
        for gfn, level, spte in self._mapped_leaves():
            if S.is_access_track_spte(m, spte) or (
                    not S.is_writable_pte(spte) and S.is_mmu_writable_spte(m, spte)):
                out.update(range(gfn, gfn + min(geo.pages(level), 4)))
        return sorted(out)

    def _x86_kinds(self) -> list[str]:
        """The x86 operations that can start now (one rule for all of them, so that adding
        them does not dilute the other rules, ``run`` above all)."""
        if self.driver is None:
            return []
        vm = self.d.vm
        kinds = []
        # Race opportunities are rare and short-lived: when one is there, favour it.
        if self._idle("vcpu") and self._fixable_gfns():
            kinds += ["access_fixable"] * 4
        if self._idle("mm", "host"):
            if self._race_targets() and any(op in self.host_ops for op in self._INVALIDATING):
                kinds += ["racing_host_op"] * 4
            if "age" in self.host_ops:
                kinds.append("young")
        if self._idle("vmm", "zap_gfn_range"):
            kinds.append("zap_gfn_range")
        if self._idle("vmm", "dirty_log"):
            kinds.append("clear_dirty_log")
            if vm.memslots[0].slots:
                kinds += ["toggle_dirty_logging"] * (2 if self._mapped_leaves() else 1)
            if not vm.config.manual_protect and not any(s.logging for s in vm.memslots[0].ordered()):
                kinds.append("enable_manual_protect")
        return kinds

    @precondition(lambda self: bool(self._x86_kinds()))
    @rule(data=st.data())
    def start_x86_op(self, data: st.DataObject) -> None:
        """Start an x86 operation: a guest access the fast page fault may fix, a host
        invalidation racing an in-flight fault or huge-page recovery, clear_young/test_young,
        kvm_zap_gfn_range, KVM_CLEAR_DIRTY_LOG, a dirty-logging toggle, or
        KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2."""
        kind = data.draw(st.sampled_from(self._x86_kinds()), label="x86")
        getattr(self, f"_x86_{kind}")(data)

    def _x86_access_fixable(self, data: st.DataObject) -> None:
        """A guest access to a page whose SPTE the fast page fault may fix (dirty-log
        write-protected or access-tracked)."""
        actor = self._actor(data, "vcpu")
        gfn = data.draw(st.sampled_from(self._fixable_gfns()), label="gfn")
        self._start("access", actor, gfn=gfn, write=data.draw(st.booleans(), label="write"),
                    private=self.d.vm.kvm_mem_is_private(gfn), exec=False)

    def _x86_racing_host_op(self, data: st.DataObject) -> None:
        """A host invalidation of the page (or huge frame) an in-flight fault or huge-page
        recovery is working on."""
        actor = self._actor(data, "mm")
        gfn = data.draw(st.sampled_from(self._race_targets()), label="target")
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

    def _x86_young(self, data: st.DataObject) -> None:
        """mmu_notifier_clear_young / test_young (lockless TDP MMU aging), mostly of mapped pages."""
        actor = self._actor(data, "mm")
        op = data.draw(st.sampled_from(["clear_young", "test_young"]), label="op")
        mapped = sorted({g for g, _, _ in self._mapped_leaves()})
        slots = self.d.vm.memslots[0]
        hvas = [s_.gfn_to_hva(g) - 0x40000 for g in mapped if (s_ := slots.search(g)) is not None]
        if hvas and data.draw(st.booleans(), label="mapped"):
            hva = data.draw(st.sampled_from(hvas), label="hva")
        else:
            hva = self._hva(data)
        self._start(op, actor, hva=hva, npages=data.draw(st.integers(1, 8), label="npages"))

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
        if slots and data.draw(st.booleans(), label="existing"):
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
        mapped = [s_ for s_ in slots if any(g in s_.gfns for g, _, _ in self._mapped_leaves())]
        s = data.draw(st.sampled_from(mapped if mapped and data.draw(st.booleans(), label="mapped")
                                      else slots), label="slot")
        self._start("memslot", actor, slot=s.id, as_id=0,
                    flags=(s.flags & ~(1 << 16)) ^ KVM_MEM_LOG_DIRTY_PAGES, gfn=s.base_gfn,
                    npages=s.npages, hva=s.userspace_addr - 0x40000,
                    gmem_offset=s.gmem_pgoff if s.has_gmem else -1)

    def _x86_enable_manual_protect(self, data: st.DataObject) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), with or without INITIALLY_SET."""
        actor = self._actor(data, "vmm")
        self._start("enable_manual_protect", actor,
                    initially_set=data.draw(st.booleans(), label="initially_set"))

    def _start(self, op: str, actor: str, **args: Any) -> None:
        self.d.start(op, actor, **args)
        note(str(self.d.steps[-1]))
        if self.stats is not None:
            self.stats.starts[op] = self.stats.starts.get(op, 0) + 1

    # -- rule: advance the schedule -----------------------------------------------------------
    @precondition(lambda self: self.driver is not None and not self.d.vm.sched.quiescent())
    @rule(pick=st.integers(0, 7), steps=st.integers(1, 12), to_window=st.booleans())
    def run(self, pick: int, steps: int, to_window: bool) -> None:
        """Run one actor for up to ``steps`` atomic steps (stopping when it blocks or ends), or,
        with ``to_window``, until it stops at a race-window point (``WINDOW_POINTS``).

        ``pick`` 0: the actor that ran last keeps running (no context switch); ``pick`` k: the
        k-th actor in stable order (vcpu0.., mm0, mm1, vmm0, vmm1), or the next runnable one
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
            note(f"  {t.actor} {t.op} → {t.reached}")
            self._account(t.reached)
            if not sched.is_runnable(actor) or (to_window and t.reached in WINDOW_POINTS):
                break

    def _account(self, reached: str) -> None:
        events = self.d.drain_events()
        for e in events:
            event(e)
        if self.stats is not None:
            self.stats.steps += 1
            self.stats.points[reached] = self.stats.points.get(reached, 0) + 1
            for e in events:
                self.stats.events[e] = self.stats.events.get(e, 0) + 1

    @invariant()
    def no_pending_warning(self) -> None:
        """Invariants run inside the driver after every step; this only keeps Hypothesis honest."""

    def teardown(self) -> None:
        if self.driver is None:
            return
        before = len(self.d.steps)
        self.d.finish()
        if self.stats is not None:
            self.stats.steps += len(self.d.steps) - before


def make_machine(bug: str | None = None, *, plain: bool = False, stats: Stats | None = None,
                 private_mem: bool | None = None) -> type[KvmMachine]:
    """A machine class for ``bug`` (None: the correct model)."""
    name = f"KvmMachine_{bug or 'correct'}{'_plain' if plain else ''}"
    return type(name, (KvmMachine,), {"bug": bug, "plain": plain, "stats": stats,
                                      "private_mem": private_mem})
