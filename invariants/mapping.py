"""Invariants on what is mapped: the secondary MMU follows the primary MMU (reference §4.1).

| name | checks |
|---|---|
| I1-no-mapping-in-closed-range | after invalidate_range_start (attr PRE, gmem zap) returned and before its end, no leaf SPTE / TLB entry maps the range |
| I2-host-consistency | every present leaf SPTE and TLB entry maps the pfn its source maps now; W only if the host and the slot allow writes |
| I5-no-mapping-of-dead-slot | no SPTE / TLB entry from a slot zapped for DELETE/MOVE or freed |
| I6-private-shared-source | private gfns map only guest_memfd pages, shared gfns only host-mm pages |
| I8-huge-eligibility | a huge leaf lies in one slot, aligned, host level ≥ level, not disallowed, uniform attributes |
| I10-freed-pfn-mapped | no SPTE / TLB entry maps a freed pfn |
| I11-guest-data-coherence | a completed guest access used the pfn the guest's memory is backed by now |
"""

from __future__ import annotations

from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.virt.kvm import KVM_LPAGE_MIXED_FLAG, Vm
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tlb import TlbEntry

from .walk import Leaf, host_pfn, slot_by_serial, usable_tlb_entries


class ClosedRangeMapped(ProtocolViolation):
    title = "I1-no-mapping-in-closed-range"


class HostInconsistent(ProtocolViolation):
    title = "I2-host-consistency"


class DeadSlotMapped(ProtocolViolation):
    title = "I5-no-mapping-of-dead-slot"


class PrivateSharedMismatch(ProtocolViolation):
    title = "I6-private-shared-source"


class HugeNotEligible(ProtocolViolation):
    title = "I8-huge-eligibility"


class FreedPfnMapped(ProtocolViolation):
    title = "I10-freed-pfn-mapped"


class StaleGuestData(ProtocolViolation):
    title = "I11-guest-data-coherence"


def _closed(vm: Vm) -> list[tuple[str, int, int, int, str]]:
    """(kind, start, end, gmem file, who) of every range that must be unmapped now."""
    out = []
    for w in vm.ghost.windows:
        closed = w.phase == "returned" or (w.phase == "ending" and not w.ended)
        if not closed:
            continue
        who = f"{w.kind} window #{w.serial} of {w.actor}"
        if w.kind == "mn" and w.hvas is not None:
            out.append(("hva", w.hvas.start, w.hvas.end, -1, who))
        elif w.kind == "attr" and w.target is not None:
            out.append(("gfn", w.target.start, w.target.end, -1, who))
        elif w.kind == "gmem" and w.target is not None:
            out.append(("gmem", w.target.start, w.target.end, w.gmem, who))
    return out


def _huge_still_pmd_mapped(vm: Vm, leaf: Leaf) -> bool:
    src = leaf.source
    if leaf.level == 1 or src is None or src.kind != "hva":
        return False
    mapping = vm.mm.lookup(src.base)
    return (mapping is not None and mapping.level >= leaf.level
            and mapping.pfn == S.spte_to_pfn(leaf.spte))


def _tlb_huge_still_pmd_mapped(vm: Vm, e: TlbEntry, start: int, end: int) -> bool:
    """A TLB entry filled through a huge leaf whose frame the closed hva range [start, end)
    covers only in part, while the host still maps the whole frame, same pfn, with one PMD."""
    src = e.source
    if e.npages == 1 or e.frame < 0 or src is None or src.kind != "hva":
        return False
    base = src.base - (e.gfn - e.frame)  # the frame's first hva page
    if start <= base and base + e.npages <= end:
        return False  # the range covers the whole frame: no split needed, no exemption
    mapping = vm.mm.lookup(base)
    return (mapping is not None and mapping.pfn == e.pfn - (e.gfn - e.frame)
            and vm.arch.geo.pages(mapping.level) >= e.npages)


def check_no_mapping_in_closed_range(vm: Vm, leaves: list[Leaf]) -> None:
    closed = _closed(vm)
    if not closed:
        return
    geo = vm.arch.geo
    for leaf in leaves:
        n = geo.pages(leaf.level)
        src = leaf.source
        for kind, start, end, gmem, who in closed:
            if kind == "gfn":
                hit = leaf.gfn < end and start < leaf.gfn + n
            elif src is None:
                continue
            elif kind == "hva":
                hit = src.kind == "hva" and src.base < end and start < src.base + n
            else:
                hit = src.kind == "gmem" and src.gmem_file == gmem and src.base < end and start < src.base + n
            if (hit and kind == "hva" and src is not None
                    and not (start <= src.base and src.base + n <= end)
                    and _huge_still_pmd_mapped(vm, leaf)):
                # A fault outside the range may map a huge frame the range covers only in part
                # while the host still maps the whole frame with one PMD: the host cannot change
                # part of it without a split, whose own notifier zaps the leaf first. I2 still
                # applies.
                continue
            if hit:
                raise ClosedRangeMapped(f"{leaf.describe(vm)} is mapped inside [{start:#x}, {end:#x})"
                                        f" ({kind}) closed by {who}; {vm.describe_invalidation()}")
    for vcpu in vm.vcpus:
        for e in usable_tlb_entries(vcpu):
            for kind, start, end, gmem, who in closed:
                src = e.source
                hit = (kind == "gfn" and start <= e.gfn < end) or (
                    src is not None and start <= src.base < end
                    and ((kind == "hva" and src.kind == "hva")
                         or (kind == "gmem" and src.kind == "gmem" and src.gmem_file == gmem)))
                if hit and kind == "hva" and _tlb_huge_still_pmd_mapped(vm, e, start, end):
                    continue  # a translation through such a huge leaf (above): same reason
                if hit:
                    raise ClosedRangeMapped(
                        f"{vcpu.name} TLB gfn {e.gfn:#x} -> pfn {e.pfn:#x} survives inside "
                        f"[{start:#x}, {end:#x}) ({kind}) closed by {who}")


def check_host_consistency(vm: Vm, leaves: list[Leaf]) -> None:
    geo, m = vm.arch.geo, vm.arch.masks
    for leaf in leaves:
        src = leaf.source
        if src is None:
            continue
        base_pfn = S.spte_to_pfn(leaf.spte)
        for i in range(geo.pages(leaf.level)):
            now = host_pfn(vm, src.offset(i))
            if now != base_pfn + i:
                now_s = "nothing" if now is None else f"pfn {now:#x}"
                raise HostInconsistent(
                    f"{leaf.describe(vm)}: page {i} maps pfn {base_pfn + i:#x} but its source "
                    f"now maps {now_s}; {vm.describe_invalidation()}")
        if S.is_writable_pte(leaf.spte):
            slot = slot_by_serial(vm, src.slot_serial)
            if src.kind == "hva" and not all(vm.mm.prot.get(src.base + i, False)
                                             for i in range(geo.pages(leaf.level))):
                raise HostInconsistent(f"{leaf.describe(vm)} is writable but the host mapping "
                                       "is read-only")
            if slot is not None and slot.readonly:
                raise HostInconsistent(f"{leaf.describe(vm)} is writable in READONLY "
                                       f"{slot.describe()}")
            why = S.check_spte_writable_invariants(m, leaf.spte)
            if why is not None:
                raise HostInconsistent(f"{leaf.describe(vm)}: {why}")
    for vcpu in vm.vcpus:
        for e in usable_tlb_entries(vcpu):
            if e.source is None:
                continue
            now = host_pfn(vm, e.source)
            if now != e.pfn:
                raise HostInconsistent(f"{vcpu.name} TLB gfn {e.gfn:#x} -> pfn {e.pfn:#x} but "
                                       f"its source {e.source} now maps {now}")
            if e.writable and e.source.kind == "hva" and not vm.mm.prot.get(e.source.base, False):
                raise HostInconsistent(f"{vcpu.name} TLB gfn {e.gfn:#x} writable over a "
                                       "read-only host mapping")


def check_no_mapping_of_dead_slot(vm: Vm, leaves: list[Leaf]) -> None:
    for leaf in leaves:
        if leaf.source is not None:
            state = vm.ghost.slot_state.get(leaf.source.slot_serial)
            if state in ("zapped", "dead"):
                raise DeadSlotMapped(f"{leaf.describe(vm)} survives its slot's "
                                     f"{'zap' if state == 'zapped' else 'deletion'}")
    for vcpu in vm.vcpus:
        for e in usable_tlb_entries(vcpu):
            if e.source is not None and vm.ghost.slot_state.get(e.source.slot_serial) in (
                    "zapped", "dead"):
                raise DeadSlotMapped(f"{vcpu.name} TLB gfn {e.gfn:#x} from {e.source} survives "
                                     "its slot's zap")


def _attr_window_covers(vm: Vm, gfn: int, n: int) -> bool:
    return any(w.kind == "attr" and w.target is not None and gfn < w.target.end
               and w.target.start < gfn + n for w in vm.ghost.windows)


def check_private_shared_source(vm: Vm, leaves: list[Leaf]) -> None:
    geo = vm.arch.geo
    for leaf in leaves:
        src = leaf.source
        if src is None:
            continue
        folio = vm.pages.folios.get(S.spte_to_pfn(leaf.spte))
        owner = folio.owner if folio is not None else "?"
        if (src.kind == "gmem") != (owner == "gmem") or src.private != (src.kind == "gmem"):
            raise PrivateSharedMismatch(f"{leaf.describe(vm)} maps a {owner} page")
        n = geo.pages(leaf.level)
        if not vm.config.private_mem or _attr_window_covers(vm, leaf.gfn, n):
            continue
        for g in range(leaf.gfn, leaf.gfn + n):
            if vm.kvm_mem_is_private(g) != src.private:
                raise PrivateSharedMismatch(
                    f"{leaf.describe(vm)}: gfn {g:#x} is "
                    f"{'private' if vm.kvm_mem_is_private(g) else 'shared'} now")


def check_huge_eligibility(vm: Vm, leaves: list[Leaf]) -> None:
    geo = vm.arch.geo
    for leaf in leaves:
        if leaf.level == 1 or leaf.source is None:
            continue
        n = geo.pages(leaf.level)
        slot = slot_by_serial(vm, leaf.source.slot_serial)
        if slot is None or slot.invalid:
            continue  # being deleted/moved: I5 and I2 speak for it
        if leaf.gfn % n or not (slot.base_gfn <= leaf.gfn and leaf.gfn + n <= slot.base_gfn + slot.npages):
            raise HugeNotEligible(f"{leaf.describe(vm)} is not an aligned frame inside "
                                  f"{slot.describe()}")
        linfo = slot.lpage_info[leaf.level]
        idx = (leaf.gfn >> (geo.level_bits * (leaf.level - 1))) - (
            slot.base_gfn >> (geo.level_bits * (leaf.level - 1)))
        if _attr_window_covers(vm, leaf.gfn, n):
            continue
        if linfo[idx]:
            mixed = " (MIXED attributes)" if linfo[idx] & KVM_LPAGE_MIXED_FLAG else ""
            raise HugeNotEligible(f"{leaf.describe(vm)} but disallow_lpage = "
                                  f"{linfo[idx]:#x}{mixed} in {slot.describe()}")
        if leaf.source.kind == "hva":
            level = vm.mm.host_pfn_mapping_level(leaf.source.base)
            if level < leaf.level:
                raise HugeNotEligible(f"{leaf.describe(vm)} but the host maps hva "
                                      f"{leaf.source.base:#x} at L{level}")
        if vm.config.private_mem and len({vm.kvm_mem_is_private(g)
                                          for g in range(leaf.gfn, leaf.gfn + n)}) > 1:
            raise HugeNotEligible(f"{leaf.describe(vm)} spans mixed private/shared gfns")


def check_freed_pfn_mapped(vm: Vm, leaves: list[Leaf]) -> None:
    geo = vm.arch.geo
    for leaf in leaves:
        base = S.spte_to_pfn(leaf.spte)
        for i in range(geo.pages(leaf.level)):
            if vm.pages.is_freed(base + i):
                raise FreedPfnMapped(f"{leaf.describe(vm)}: pfn {base + i:#x} has been freed")
    for vcpu in vm.vcpus:
        for e in usable_tlb_entries(vcpu):
            if vm.pages.is_freed(e.pfn):
                raise FreedPfnMapped(f"{vcpu.name} TLB gfn {e.gfn:#x} -> freed pfn {e.pfn:#x}")


def check_guest_data_coherence(vm: Vm) -> None:
    for vcpu in vm.vcpus:
        acc, vcpu.last_access = vcpu.last_access, None
        if acc is None:
            continue
        if vm.pages.is_freed(acc.pfn):
            kind = "wrote" if acc.write else "read"
            raise StaleGuestData(f"{acc.vcpu} {kind} gfn {acc.gfn:#x} through freed pfn "
                                 f"{acc.pfn:#x} ({'TLB' if acc.via_tlb else 'SPTE'})")
        src = acc.source
        if src is None:
            continue
        truth = host_pfn(vm, src)  # the page the translation was built from, as the host has it now
        if truth != acc.pfn:
            kind = "write to" if acc.write else "read of"
            raise StaleGuestData(
                f"{acc.vcpu} {kind} gfn {acc.gfn:#x} used pfn {acc.pfn:#x} "
                f"({'TLB' if acc.via_tlb else 'SPTE'}) but the guest's memory there is "
                f"{'unmapped' if truth is None else f'pfn {truth:#x}'}: "
                f"{'a lost write' if acc.write else 'a stale read'}")
