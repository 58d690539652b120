"""Invariants on the paging structure, dirty logging and quiescent state (§4.4, §4.6, §4.9).

| name | checks |
|---|---|
| I9-spte-format | present SPTEs have no reserved bits; non-leaves point at live tables of the next level that name this entry as parent; no table is reachable twice; no FROZEN SPTE is reachable; the root list holds only live roots |
| I7-dirty-writable-unlogged | a writable 4K leaf (or TLB entry) in a dirty-logged slot whose gfn's bit is clear (no lost dirty page); exempt: the enable or a GET/CLEAR in flight, a fast page fault between its cmpxchg and its mark_page_dirty_in_slot |
| I10-pin-leak | at quiescence a page's refcount equals its mappings (every fault's pin was released) |
| I12-quiescent-idle | at quiescence every counter, lock, window and RCU read-side section is back to idle |
"""

from __future__ import annotations

from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.virt.dirty import dirty_bit
from kvmfuzz.virt.kvm import Vm
from kvmfuzz.x86 import spte as S

from .walk import Leaf, TableWalk, active_slot, live_roots, usable_tlb_entries


class SpteFormat(ProtocolViolation):
    title = "I9-spte-format"


class DirtyNotLogged(ProtocolViolation):
    title = "I7-dirty-writable-unlogged"


class PinLeak(ProtocolViolation):
    title = "I10-pin-leak"


class NotIdle(ProtocolViolation):
    title = "I12-quiescent-idle"


_RESERVED: dict[tuple[S.SpteMasks, object, int, int], str | None] = {}


def _reserved(m: S.SpteMasks, geo: object, spte: int, level: int) -> str | None:
    """reserved_bits_violation(), memoised: it is a pure function of its arguments."""
    key = (m, geo, spte, level)
    try:
        return _RESERVED[key]
    except KeyError:
        if len(_RESERVED) > 200_000:
            _RESERVED.clear()
        why = _RESERVED[key] = S.reserved_bits_violation(m, spte, level, geo)  # type: ignore[arg-type]
        return why


def check_spte_format(vm: Vm, walk: TableWalk | None = None) -> None:
    m, geo = vm.arch.masks, vm.arch.geo
    walk = walk if walk is not None else TableWalk(vm)
    seen: set[int] = set()
    for root in live_roots(vm):
        if root.parent is not None or not root.root:
            raise SpteFormat(f"{root.describe()} on the root list is not a root")
        for sp in walk.tables(root):
            if sp.freed:
                raise SpteFormat(f"{sp.describe()} is reachable but was freed")
        for sp, _idx, gfn, spte in walk.other(root):
            if S.is_frozen_spte(spte):
                raise SpteFormat(f"FROZEN SPTE reachable at gfn {gfn:#x} in {sp.describe()}")
        for sp, _idx, gfn, spte in walk.leaf_entries(root):
            why = _reserved(m, geo, spte, sp.level)
            if why is not None:
                raise SpteFormat(f"gfn {gfn:#x} L{sp.level} {S.format_spte(m, spte, sp.level)}: {why}")
            if sp.level > geo.max_huge_level:
                raise SpteFormat(f"leaf at L{sp.level} (above the max huge level)")
        for sp, idx, gfn, spte in walk.links(root):
            why = _reserved(m, geo, spte, sp.level)
            if why is not None:
                raise SpteFormat(f"gfn {gfn:#x} L{sp.level} {S.format_spte(m, spte, sp.level)}: {why}")
            child = vm.arch.sp_by_pfn.get(S.spte_to_pfn(spte))
            if child is None or child.freed:
                raise SpteFormat(f"non-leaf at gfn {gfn:#x} L{sp.level} in {sp.describe()} points "
                                 f"to pfn {S.spte_to_pfn(spte):#x}, which is no live page table")
            if child.level != sp.level - 1 or child.gfn != gfn or child.parent != (sp, idx):
                raise SpteFormat(f"{child.describe()} linked at gfn {gfn:#x} L{sp.level} of "
                                 f"{sp.describe()} does not match its level, gfn or parent")
            if child.id in seen:
                raise SpteFormat(f"{child.describe()} is reachable twice")
            seen.add(child.id)


def check_dirty_logging(vm: Vm, leaves: list[Leaf]) -> None:
    pending = vm.arch.ghost.pending_marks
    for leaf in leaves:
        if leaf.level != 1 or not S.is_writable_pte(leaf.spte) or leaf.source is None:
            continue
        slot = active_slot(vm, leaf.root.as_id, leaf.gfn)
        if (slot is None or not slot.logging or slot.serial != leaf.source.slot_serial
                or slot.serial in vm.ghost.dirty_enable_in_flight
                or slot.serial in vm.ghost.get_in_flight or (slot.serial, leaf.gfn) in pending):
            continue
        if not dirty_bit(slot, leaf.gfn):
            raise DirtyNotLogged(f"{leaf.describe(vm)} is writable in dirty-logged "
                                 f"{slot.describe()} but gfn {leaf.gfn:#x}'s dirty bit is clear: "
                                 "a write through it would be lost to the next harvest")
    for vcpu in vm.vcpus:
        for e in usable_tlb_entries(vcpu):
            if not e.writable or e.source is None:
                continue
            slot = active_slot(vm, vcpu.as_id, e.gfn)
            if (slot is None or not slot.logging or slot.serial != e.source.slot_serial
                    or slot.serial in vm.ghost.dirty_enable_in_flight
                    or slot.serial in vm.ghost.get_in_flight or (slot.serial, e.gfn) in pending):
                continue
            if not dirty_bit(slot, e.gfn):
                raise DirtyNotLogged(f"{vcpu.name} TLB holds a writable entry for gfn "
                                     f"{e.gfn:#x} in dirty-logged {slot.describe()} whose dirty "
                                     "bit is clear")


def check_pins_released(vm: Vm) -> None:
    mapped: dict[int, int] = {}
    for folio in vm.mm.pmds.values():
        mapped[folio.head] = mapped.get(folio.head, 0) + 1
    for folio in vm.mm.ptes.values():
        mapped[folio.head] = mapped.get(folio.head, 0) + 1
    for f in vm.gmem_files:
        for folio in f.folios.values():
            mapped[folio.head] = mapped.get(folio.head, 0) + 1
    seen: set[int] = set()
    for pfn in sorted(vm.pages.folios):
        folio = vm.pages.folios[pfn]
        if folio.freed or folio.head in seen or folio.owner == "pt":
            continue
        seen.add(folio.head)
        if folio.refcount != mapped.get(folio.head, 0):
            raise PinLeak(f"{folio.owner} folio pfn {folio.head:#x} has refcount "
                          f"{folio.refcount} but {mapped.get(folio.head, 0)} mappings at quiescence:"
                          " a fault's page reference was not released")


def check_quiescent_idle(vm: Vm) -> None:
    problems = []
    if vm.mmu_invalidate_in_progress:
        problems.append(f"in_progress = {vm.mmu_invalidate_in_progress}")
    if vm.mn_active_invalidate_count:
        problems.append(f"mn_active_invalidate_count = {vm.mn_active_invalidate_count}")
    if vm.ghost.windows:
        problems.append(f"{len(vm.ghost.windows)} invalidation windows open")
    if vm.srcu.readers:
        problems.append(f"{len(vm.srcu.readers)} SRCU readers")
    if vm.arch.rcu.readers:
        problems.append("RCU readers " + ", ".join(sorted(vm.arch.rcu.readers)))
    if vm.arch.rcu.callbacks:
        problems.append(f"{len(vm.arch.rcu.callbacks)} RCU callbacks not run with no reader left")
    for lock in (vm.slots_lock, vm.slots_arch_lock, vm.mn_invalidate_lock):
        if lock.owner is not None:
            problems.append(f"{lock.name} held by {lock.owner.name}")
    for f in vm.gmem_files:
        if f.invalidate_lock.owner is not None:
            problems.append(f"gmem{f.id} filemap_invalidate_lock held by "
                            f"{f.invalidate_lock.owner.name}")
    if vm.mmu_lock.writer is not None or vm.mmu_lock.readers:
        problems.append(f"mmu_lock held by {vm.mmu_lock.holder_names()}")
    if vm.mn_memslots_update_rcuwait.task is not None:
        problems.append("a memslot updater still waits")
    if problems:
        raise NotIdle("at quiescence: " + "; ".join(problems))
