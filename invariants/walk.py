"""Read-only views of the model for invariants: present leaves, host truth, slot lookup."""

from __future__ import annotations

from collections.abc import Iterator

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


def entries(vm: Vm, sp: KvmMmuPage) -> Iterator[tuple[KvmMmuPage, int, int, int]]:
    """Every (table, index, gfn, spte) reachable from ``sp``, pre-order."""
    geo = vm.arch.geo
    span = geo.pages(sp.level)
    for idx, spte in enumerate(sp.spt):
        gfn = sp.gfn + idx * span
        yield sp, idx, gfn, spte
        if S.is_shadow_present_pte(spte) and not S.is_last_spte(spte, sp.level):
            child = vm.arch.sp_by_pfn.get(S.spte_to_pfn(spte))
            if child is not None and child.level == sp.level - 1:
                yield from entries(vm, child)


def present_leaves(vm: Vm) -> list[Leaf]:
    out = []
    for root in live_roots(vm):
        for sp, idx, gfn, spte in entries(vm, root):
            if S.is_shadow_present_pte(spte) and S.is_last_spte(spte, sp.level):
                out.append(Leaf(root, sp, idx, sp.level, gfn, spte, sp.src.get(idx)))
    return out


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
