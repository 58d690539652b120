"""Invariants of the x86 MMU: SPTE bits, MMIO generations, roots, page-table lifetime, TLB
flushes, dirty logging (reference §3.4-3.5, §4.3 I15/I16, §4.4 I19-I22, §4.6 D1/D2/D5).

| name | checks |
|---|---|
| I15-mmio-generation | a reachable MMIO SPTE in a valid root, or a vCPU's MMIO-info cache entry, whose generation check would still pass although a memslot now covers its gfn (the next access would emulate MMIO instead of re-faulting); exempt: an SPTE stamped during a memslot update whose generation has since aliased across a wrap (a theoretical kernel hole, see below) |
| I19-obsolete-root | a fault installed a mapping in an invalid root; or, after kvm_mmu_zap_all_fast returned, a root that was valid when it started is still valid or still maps something |
| I20-pt-page-freed-early | a page-table page freed while an RCU reader that entered before its removal is still inside, a freed root still on the root list or still loaded by a vCPU, a non-leaf SPTE of a live root pointing at a freed table |
| I21-writable-trio | a present leaf with W but not MMU-writable, MMU-writable but not host-writable, or MMU-writable (so fast PF may make it writable) over a read-only host mapping or READONLY slot |
| I21-access-track-bits | an access-tracked leaf with A set or no saved R to restore; a leaf that is not tracked but carries saved R/X bits; an A/D-disabled leaf that is neither tracked nor accessed |
| I22-flush-before-release | a vCPU TLB still holds (for a valid root it runs on) a translation that was zapped, or lost MMU-writable, after the operation that changed it dropped mmu_lock (dirty-log protection: after its ioctl returned) |
| D1-huge-in-logged-slot | after the LOG_DIRTY enable returned (and no harvest in flight), a writable huge leaf of the logged slot in a valid root, or with eager split any huge leaf (READONLY slots: only writable ones); with INITIALLY_SET a writable huge leaf needs every page's dirty bit set |
| D5-harvest-lost-write | a GET reported a page clean although the guest wrote it since the previous harvest; a page written since the last harvest whose dirty bit is clear, outside a harvest in flight and a fast PF's cmpxchg-to-mark window |

The I15 exemption: an MMIO SPTE installed while a memslot update is in flight is stamped with
the pre-update generation (check_mmio_spte only rejects it until the update ends). If that update
is the one whose new generation wraps the MMIO generation to 0, the wrap's zap-all ran before
the SPTE was installed, so the SPTE survives, and once the generation has advanced by
2^width it matches again. The kernel has the same window (19-bit width: 2^18 updates with two
address spaces); the model's narrow widths reach it, so the invariant states what the kernel
guarantees: detection for any generation distance below 2^width.
"""

from __future__ import annotations

from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.virt.dirty import dirty_bit
from kvmfuzz.virt.kvm import Vm
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.fault import check_mmio_spte_gen
from kvmfuzz.x86.mmu import memslots_generation
from kvmfuzz.x86.tlb import stale_entries

from .walk import Leaf, TableWalk, active_slot, slot_by_serial


class MmioGenerationStale(ProtocolViolation):
    title = "I15-mmio-generation"


class ObsoleteRootUsed(ProtocolViolation):
    title = "I19-obsolete-root"


class PageTableFreedEarly(ProtocolViolation):
    title = "I20-pt-page-freed-early"


class WritableTrio(ProtocolViolation):
    title = "I21-writable-trio"


class AccessTrackBits(ProtocolViolation):
    title = "I21-access-track-bits"


class FlushNotDone(ProtocolViolation):
    title = "I22-flush-before-release"


class HugeInLoggedSlot(ProtocolViolation):
    title = "D1-huge-in-logged-slot"


class HarvestLostWrite(ProtocolViolation):
    title = "D5-harvest-lost-write"


def check_mmio_generation(vm: Vm, walk: TableWalk | None = None) -> None:
    m = vm.arch.masks
    if not m.mmio_caching:
        return
    walk = walk if walk is not None else TableWalk(vm)
    mask = vm.arch.mmio_gen_mask
    for root in sorted((r for r in vm.arch.roots if not r.freed and not r.role_invalid),
                       key=lambda r: r.id):
        gen = memslots_generation(vm, root.as_id)
        for sp, idx, _gfn, spte in walk.other(root):  # (an MMIO SPTE is not present)
            if not S.is_mmio_spte(m, spte) or not check_mmio_spte_gen(vm, spte, gen):
                continue
            gfn = S.get_mmio_spte_gfn(m, spte)
            slot = vm.memslots[root.as_id].search(gfn)
            if slot is None:
                continue
            stamp = sp.mmio_gen.get(idx)
            if stamp is not None and stamp[1] and gen - stamp[0] > mask:
                continue  # aliased across a wrap after an in-update stamp (module docstring)
            raise MmioGenerationStale(
                f"{root.describe()} holds {S.format_spte(m, spte)} (stamped at generation "
                f"{'?' if stamp is None else hex(stamp[0])}) for gfn {gfn:#x}, now in "
                f"{slot.describe()}, and it passes check_mmio_spte() at generation {gen:#x}: the "
                "next access emulates MMIO instead of faulting the memory in")
    gen0 = memslots_generation(vm, 0)
    for vcpu in vm.vcpus:
        if not vcpu.mmio_gfn or vcpu.mmio_gen != gen0:
            continue
        slot = vm.memslots[0].search(vcpu.mmio_gfn)
        if slot is not None:
            raise MmioGenerationStale(
                f"{vcpu.name}'s MMIO-info cache holds gfn {vcpu.mmio_gfn:#x} at the current "
                f"generation {gen0:#x}, but {slot.describe()} covers it now")


def check_obsolete_roots(vm: Vm) -> None:
    ghost = vm.arch.ghost
    if ghost.invalid_root_installs:
        raise ObsoleteRootUsed("a new mapping was installed in an obsolete root: "
                               + ghost.invalid_root_installs[0])
    m = vm.arch.masks
    for root in vm.arch.roots:
        if root.freed or root.id not in ghost.must_be_obsolete:
            continue
        if not root.role_invalid:
            raise ObsoleteRootUsed(f"{root.describe()} was valid when kvm_mmu_zap_all_fast() "
                                   "started and is still valid after it returned: vCPUs keep "
                                   "using it")
        for idx, spte in enumerate(root.spt):
            if S.is_shadow_present_pte(spte):
                raise ObsoleteRootUsed(f"{root.describe()} still maps entry {idx} "
                                       f"({S.format_spte(m, spte, root.level)}) after "
                                       "kvm_mmu_zap_all_fast() returned")


def check_pt_freed_early(vm: Vm, walk: TableWalk | None = None) -> None:
    rcu = vm.arch.rcu
    walk = walk if walk is not None else TableWalk(vm)
    for sp in rcu.freed:
        readers = rcu.readers_before(sp.removed_at)
        if readers:
            when = "without call_rcu()" if sp.removed_at is None else f"at RCU time {sp.removed_at}"
            raise PageTableFreedEarly(
                f"{sp.describe()} (removed {when}) was freed while RCU reader(s) "
                + ", ".join(f"{r.actor} (entered at {r.entered})" for r in readers)
                + " that may still walk it are inside their read-side section")
    for root in vm.arch.roots:
        if root.freed:
            raise PageTableFreedEarly(f"{root.describe()} is freed but still on tdp_mmu_roots")
    for vcpu in vm.vcpus:
        if vcpu.root is not None and vcpu.root.freed:
            raise PageTableFreedEarly(f"{vcpu.name} still uses freed {vcpu.root.describe()} "
                                      f"(refcount {vcpu.root.root_refcount})")
    for root in vm.arch.roots:
        for sp, idx, gfn, spte in walk.links(root):
            child = vm.arch.sp_by_pfn.get(S.spte_to_pfn(spte))
            if child is None or child.freed:
                raise PageTableFreedEarly(
                    f"gfn {gfn:#x} L{sp.level} entry {idx} of {sp.describe()} still points "
                    f"at freed page table pfn {S.spte_to_pfn(spte):#x}")


def check_writable_trio(vm: Vm, leaves: list[Leaf]) -> None:
    m, geo = vm.arch.masks, vm.arch.geo
    for leaf in leaves:
        why = S.check_spte_writable_invariants(m, leaf.spte)
        if why is not None:
            raise WritableTrio(f"{leaf.describe(vm)}: {why}")
        if not S.is_mmu_writable_spte(m, leaf.spte) or leaf.source is None:
            continue
        src = leaf.source
        slot = slot_by_serial(vm, src.slot_serial)
        if slot is not None and slot.readonly:
            raise WritableTrio(f"{leaf.describe(vm)} is MMU-writable in READONLY "
                               f"{slot.describe()}: fast page faults may make it writable")
        if src.kind == "hva":
            for i in range(geo.pages(leaf.level)):
                if not vm.mm.prot.get(src.base + i, False):
                    raise WritableTrio(f"{leaf.describe(vm)} is MMU-writable but the host maps "
                                       f"hva {src.base + i:#x} read-only: fast page faults may "
                                       "make it writable")


def check_access_track_bits(vm: Vm, leaves: list[Leaf]) -> None:
    m = vm.arch.masks
    saved_r = S.SPTE_EPT_READABLE_MASK << S.SHADOW_ACC_TRACK_SAVED_BITS_SHIFT
    for leaf in leaves:
        spte = leaf.spte
        saved = spte & S.SHADOW_ACC_TRACK_SAVED_MASK
        if S.is_access_track_spte(m, spte):
            if spte & m.accessed_mask:
                raise AccessTrackBits(f"{leaf.describe(vm)} is access-tracked but Accessed")
            if m.ept and not saved & saved_r:
                raise AccessTrackBits(f"{leaf.describe(vm)} is access-tracked with no saved R: "
                                      "restoring it would leave it unreadable")
        elif saved:
            raise AccessTrackBits(f"{leaf.describe(vm)} is not access-tracked but carries saved "
                                  f"bits {saved:#x}")
        elif not S.spte_ad_enabled(spte) and not spte & m.accessed_mask:
            raise AccessTrackBits(f"{leaf.describe(vm)} has A/D disabled and is neither "
                                  "access-tracked nor Accessed")


def check_flush_before_release(vm: Vm) -> None:
    for due in vm.arch.ghost.flush_due:
        actor = vm.sched.actor(due.actor)
        returned = actor.ops_done != due.ops_done
        if not returned and (due.at_return or vm.mmu_lock.held_by(actor)):
            continue
        for vcpu_id, e in stale_entries(vm, due.entries):
            vcpu = vm.vcpus[vcpu_id]
            root = vcpu.root
            if root is None or root.id != due.root_id or root.role_invalid:
                continue  # an abandoned or invalid root's entries cannot be used any more
            state = "returned" if returned else "dropped mmu_lock"
            raise FlushNotDone(
                f"{vcpu.name} TLB still maps gfn {e.gfn:#x} -> pfn {e.pfn:#x}"
                f"{' writable' if e.writable else ''} through root#{due.root_id}, whose L{due.level} "
                f"SPTE at gfn {due.gfn:#x} was {due.what} by {due.actor}, which {state} without a "
                "TLB flush")


def check_huge_in_logged_slot(vm: Vm, leaves: list[Leaf]) -> None:
    cfg = vm.config
    initially_set = cfg.manual_protect and cfg.initially_set
    geo = vm.arch.geo
    for leaf in leaves:
        if leaf.level == 1 or leaf.source is None or leaf.root.role_invalid:
            continue
        slot = active_slot(vm, leaf.root.as_id, leaf.gfn)
        if (slot is None or not slot.logging or slot.serial != leaf.source.slot_serial
                or slot.serial in vm.ghost.dirty_enable_in_flight
                or slot.serial in vm.ghost.get_in_flight or slot.invalid):
            continue
        writable = S.is_writable_pte(leaf.spte)
        if slot.readonly and not writable:
            continue  # kvm_mmu_slot_apply_flags() leaves READONLY slots alone: nothing to log
        if initially_set:
            clean = [g for g in range(leaf.gfn, leaf.gfn + geo.pages(leaf.level))
                     if slot.base_gfn <= g < slot.base_gfn + slot.npages and not dirty_bit(slot, g)]
            if writable and clean:
                raise HugeInLoggedSlot(f"{leaf.describe(vm)} is writable in dirty-logged "
                                       f"{slot.describe()} (INITIALLY_SET) although gfn "
                                       f"{clean[0]:#x}'s dirty bit was cleared")
        elif writable:
            raise HugeInLoggedSlot(f"{leaf.describe(vm)} is a writable huge leaf in dirty-logged "
                                   f"{slot.describe()}: writes through it are not logged per page")
        elif cfg.eager_split:
            raise HugeInLoggedSlot(f"{leaf.describe(vm)} is a huge leaf in dirty-logged "
                                   f"{slot.describe()} after the enable (with eager split) "
                                   "returned")


def check_harvest_lost_write(vm: Vm) -> None:
    ghost = vm.arch.ghost
    if ghost.lost_writes:
        raise HarvestLostWrite(ghost.lost_writes[0])
    for serial, gfns in sorted(ghost.written.items()):
        slot = slot_by_serial(vm, serial)
        if (slot is None or not slot.logging or serial in vm.ghost.dirty_enable_in_flight
                or serial in vm.ghost.get_in_flight):
            continue
        for gfn in sorted(gfns):
            if not dirty_bit(slot, gfn) and (serial, gfn) not in ghost.pending_marks:
                raise HarvestLostWrite(f"the guest wrote gfn {gfn:#x} of {slot.describe()} since "
                                       "the last harvest but its dirty bit is clear: the next "
                                       "harvest will report it clean")
