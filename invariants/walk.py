"""Read-only views of the model for invariants: present leaves, host truth, slot lookup."""

from __future__ import annotations

import attrs

from kvmfuzz.virt.kvm import Memslot, Vm
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import KvmMmuPage, Source
from kvmfuzz.x86.tlb import TlbEntry
from kvmfuzz.x86.vcpu import Vcpu


@attrs.frozen
class Leaf:
    root: KvmMmuPage
    sp: KvmMmuPage
    idx: int
    level: int
    gfn: int
    spte: int
    source: Source | None

    def describe(self, vm: Vm) -> str:
        where = f"{self.root.describe()} gfn {self.gfn:#x} L{self.level}"
        return f"{where} spte {S.format_spte(vm.arch.masks, self.spte, self.level)}" + (
            f" from {self.source}" if self.source else "")


def live_roots(vm: Vm) -> list[KvmMmuPage]:
    return [r for r in vm.arch.roots if not r.freed]


Entry = tuple[KvmMmuPage, int, int, int]  # (table, index, gfn, spte)


@attrs.define
class _RootWalk:
    """One root's paging structure, classified in one pass (pre-order within each list)."""

    tables: list[KvmMmuPage] = attrs.field(factory=list)  # every table reached
    links: list[Entry] = attrs.field(factory=list)  # present non-leaf entries
    leaves: list[Entry] = attrs.field(factory=list)  # present leaf entries
    other: list[Entry] = attrs.field(factory=list)  # not present, not SHADOW_NONPRESENT_VALUE

    def walk(self, vm: Vm, sp: KvmMmuPage) -> None:
        self.tables.append(sp)
        level = sp.level
        span = vm.arch.geo.pages(level)
        by_pfn = vm.arch.sp_by_pfn
        gfn = sp.gfn
        leaf_level = level == S.PG_LEVEL_4K
        # is_shadow_present_pte() / is_last_spte() inlined: this runs for every entry of every
        # table after every step; most entries are SHADOW_NONPRESENT_VALUE and pass every check
        for idx, spte in enumerate(sp.spt):
            if spte != S.SHADOW_NONPRESENT_VALUE:
                if not spte & S.SPTE_MMU_PRESENT_MASK:
                    self.other.append((sp, idx, gfn, spte))
                elif leaf_level or spte & S.PT_PAGE_SIZE_MASK:
                    self.leaves.append((sp, idx, gfn, spte))
                else:
                    self.links.append((sp, idx, gfn, spte))
                    child = by_pfn.get(S.spte_to_pfn(spte))
                    if child is not None and child.level == level - 1:
                        self.walk(vm, child)
            gfn += span


class TableWalk:
    """The paging structure below every root on the root list, walked once per step and shared
    by the checks that read it (``check_step``; a check called alone takes its own). Per root,
    the entries reachable from it (following a present non-leaf only into the live table of the
    next level it points at) that are not SHADOW_NONPRESENT_VALUE (most are; they pass every
    check), by kind: ``links(root)`` (present non-leaf), ``leaf_entries(root)``
    (present leaves), ``other(root)`` (set but not present: MMIO, FROZEN, ...); and
    ``tables(root)``, the tables reached. ``leaves``: the present leaves of the live roots
    (``present_leaves``). Valid only for the state it was taken from; nothing keeps it across
    steps."""

    def __init__(self, vm: Vm) -> None:
        self._roots: dict[int, _RootWalk] = {}
        for root in vm.arch.roots:
            w = self._roots[root.id] = _RootWalk()
            w.walk(vm, root)
        self.leaves = [Leaf(root, sp, idx, sp.level, gfn, spte, sp.src.get(idx))
                       for root in live_roots(vm)
                       for sp, idx, gfn, spte in self._roots[root.id].leaves]

    def tables(self, root: KvmMmuPage) -> list[KvmMmuPage]:
        return self._roots[root.id].tables

    def links(self, root: KvmMmuPage) -> list[Entry]:
        return self._roots[root.id].links

    def leaf_entries(self, root: KvmMmuPage) -> list[Entry]:
        return self._roots[root.id].leaves

    def other(self, root: KvmMmuPage) -> list[Entry]:
        return self._roots[root.id].other


def present_leaves(vm: Vm) -> list[Leaf]:
    """The present leaves below the live roots, in root-list and pre-order."""
    return TableWalk(vm).leaves


def usable_tlb_entries(vcpu: Vcpu) -> list[TlbEntry]:
    """TLB entries the vCPU can still hit: tagged with its current root, while that root is
    valid. (Entries of an abandoned root are unreachable: kvm_mmu_load() flushes the current
    root's tag before use; an invalid root is never entered again after the reload request.)"""
    root = vcpu.root
    if root is None or root.role_invalid:
        return []
    return sorted((e for e in vcpu.tlb.entries.values() if e.root_id == root.id),
                  key=lambda e: e.gfn)


def host_pfn(vm: Vm, src: Source) -> int | None:
    """The pfn the source maps *now*: the host page table, or the guest_memfd page cache."""
    if src.kind == "hva":
        mapping = vm.mm.lookup(src.base)
        return mapping.pfn if mapping is not None else None
    for f in vm.gmem_files:
        if f.id == src.gmem_file:
            folio = f.folios.get(src.base)
            return folio.head if folio is not None else None
    return None


def slot_by_serial(vm: Vm, serial: int) -> Memslot | None:
    """The slot (as the guest knows it) with this serial in the active sets, if any."""
    for slots in vm.memslots:
        for slot in slots.ordered():
            if slot.serial == serial:
                return slot
    return None


def active_slot(vm: Vm, as_id: int, gfn: int) -> Memslot | None:
    return vm.memslots[as_id].search(gfn)
