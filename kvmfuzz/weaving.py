"""The WeavingMachine: ``KvmMachine`` plus the coverage-driven ``weave`` rules.

What the protocol-coverage universe (``kvmfuzz.coverage``) asks for and the hunting machine
rarely produces: while an operation is stopped anywhere, operations of other kinds run near its
gfn (``weave_interpose``, and inside the hunting machine's race set-ups: ``_maybe_interpose``);
writers queued on ``mmu_lock`` behind a fault that holds it, so that a zap / split /
write-protect walk finds it contended and yields (``weave_contended``); a migration's dirty-log
cycle (``weave_dirty_log_cycle``); an MMIO SPTE through a whole MMIO-generation cycle
(``weave_mmio_cycle``); recipes that stop an operation at a rare point and run an operation of
each kind that can start meanwhile (``weave_stop_at``, ``weave_stop_at_huge``). Every part of a
rule is an ordinary start or run step of the driver, so its schedules replay without
Hypothesis. Campaigns alternate rounds of this machine and the hunting machine
(``kvmfuzz.campaign``).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule

from kvmfuzz.driver import MAX_VMM_ACTORS
from kvmfuzz.machine import WINDOW_POINTS, KvmMachine
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS

# Points few rules stop an operation at (interposition prefers them).
_RARE_STOPS = frozenset({"TDP_MMU_YIELD", "TDP_SPLIT_ALLOC", "TDP_RECOVER_HUGE", "MMU_LOCK_WRITE",
                         "GMEM_INVALIDATE_LOCK", "DIRTY_LOG_ENABLE_WRPROT", "DIRTY_LOG_BEFORE_FLUSH",
                         "CLEAR_DIRTY_LOG_BEFORE_FLUSH", "FAULT_GMEM_GET_PFN", "AGE_SPTE",
                         "FAST_PF_CMPXCHG", "FAST_PF_MARK_DIRTY", "SLOTS_LOCK", "GMEM_TRUNCATE"})


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

    # -- interleavings for coverage: another kind of operation runs while one is stopped ----------
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
    # The recipes of a walk that yields a contended mmu_lock (TDP_MMU_YIELD): the longest
    # set-ups (a held read lock, a queued writer, the walk itself), the rarest points; a rule of
    # their own as well (``weave_stop_at_yield``).
    YIELD_STOPS = ("clear_yield", "enable_yield", "writer_yield")

    def _huge_stops(self) -> list[str]:
        return [r for r in self._stops() if r in self.HUGE_STOPS]

    def _yield_stops(self) -> list[str]:
        return [r for r in self._stops() if r in self.YIELD_STOPS]

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
        return (vm.arch.masks.mmio_caching and 2 <= self._mmio_cycle() <= self._MMIO_CYCLE_MAX
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

    def _maybe_interpose(self, data: st.DataObject, gfn: int) -> None:
        """Run up to three operations (drawn kinds) one after the other while a set-up rule's
        operation is stopped (none is the simpler choice, which shrinking moves toward)."""
        done: set[str] = set()
        for _ in range(data.draw(st.integers(0, 3), label="interpose")):
            self._interpose(data, gfn, done)

    # -- rules: one per set-up, so that together they get a fair share of the rule picks --------
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

    @precondition(lambda self: bool(self._yield_stops()))
    @rule(data=st.data())
    def weave_stop_at_yield(self, data: st.DataObject) -> None:
        """The same, at a contended walk's TDP_MMU_YIELD (``YIELD_STOPS``)."""
        self._weave_stop_at(data, self._yield_stops())
