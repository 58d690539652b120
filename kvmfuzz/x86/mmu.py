"""x86 MMU state and the arch hooks generic KVM calls (arch/x86/kvm/mmu/mmu.c, x86.c).

``KvmArch`` is the part of ``kvm->arch`` the protocol touches: the TDP MMU root list,
``mmu_valid_gen``, the SPTE masks, the paging geometry, RCU for page tables, and the x86 ghost.
The hooks: ``kvm_unmap_gfn_range``, ``kvm_arch_flush_shadow_memslot`` (``kvm_mmu_zap_all_fast``
with the SLOT_ZAP_ALL quirk, else ``kvm_mmu_zap_memslot``), ``kvm_arch_memslots_updated`` (MMIO
generation wrap), ``kvm_arch_prepare/commit_memory_region`` (lpage_info and
``kvm_mmu_slot_apply_flags``: eager split, write-protect and flush on dirty-log enable, huge-page
recovery on disable), huge-page eligibility (``__kvm_mmu_max_mapping_level``,
``host_pfn_mapping_level``), the memory-attribute hooks (``kvm_arch_pre/post_set_memory_attributes``
with MIXED tracking), ``kvm_zap_gfn_range`` (begin/end around a zap of every valid root), and
root management (``kvm_tdp_mmu_alloc_root``, ``kvm_mmu_free_obsolete_roots``).

Left out: the shadow MMU (rmaps, shadow pages, write-tracking; ``tdp_mmu=Y`` only), NX huge
pages, PML (so dirty logging write-protects; ``cpu_dirty_log_size`` is 0), SEV/TDX, the MMU page
quota, the vCPU's cache of previous roots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt, read_lock, write_lock
from kvmfuzz.virt.kvm import (
    KVM_LPAGE_MIXED_FLAG,
    KVM_MEM_LOG_DIRTY_PAGES,
    KVM_MEM_READONLY,
    KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS,
    Memslot,
)
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.geometry import Geometry
from kvmfuzz.x86.ghost import X86Ghost
from kvmfuzz.x86.rcu import Rcu
from kvmfuzz.x86.tdp_mmu import (
    KvmMmuPage,
    TdpWalk,
    kvm_tdp_mmu_get_root,
    kvm_tdp_mmu_put_root,
    kvm_tdp_mmu_try_split_huge_pages,
    kvm_tdp_mmu_unmap_gfn_range,
    kvm_tdp_mmu_zap_leafs,
    tdp_mmu_alloc_sp,
    tdp_mmu_roots,
    tdp_mmu_set_spte_atomic,
    tdp_mmu_zap_root,
)
from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs, kvm_flush_remote_tlbs_range

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm
    from kvmfuzz.virt.notifier import KvmGfnRange
    from kvmfuzz.x86.vcpu import Vcpu

KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = "MMU_FREE_OBSOLETE_ROOTS"
KVM_REQ_TLB_FLUSH = "TLB_FLUSH"


@attrs.define(eq=False)
class KvmArch:
    """The MMU part of ``struct kvm_arch``."""

    geo: Geometry
    masks: S.SpteMasks
    roots: list[KvmMmuPage] = attrs.field(factory=list)  # tdp_mmu_roots
    sp_by_pfn: dict[int, KvmMmuPage] = attrs.field(factory=dict)
    next_sp_id: int = 0
    mmu_valid_gen: int = 0
    stats_remote_flushes: int = 0
    mmio_gen_mask: int = S.MMIO_SPTE_GEN_MASK
    rcu: Rcu = attrs.field(factory=Rcu)
    ghost: X86Ghost = attrs.field(factory=X86Ghost)
    flush_at_return: bool = False  # ghost: inside dirty-log protection (flushed before return)


# -- roots --------------------------------------------------------------------------------

def kvm_tdp_mmu_alloc_root(vm: Vm, vcpu: Vcpu, actor: Actor) -> Op[KvmMmuPage]:
    """kvm_tdp_mmu_alloc_root(): reuse a valid root of the role, or make one (refcount 2)."""
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    root = next((r for r in tdp_mmu_roots(vm, vcpu.as_id, True)
                 if r.level == vm.arch.geo.root_level and kvm_tdp_mmu_get_root(r)), None)
    if root is None:
        root = tdp_mmu_alloc_sp(vm, vm.arch.geo.root_level, 0, vcpu.as_id)
        root.root = True
        root.root_refcount = 2  # the vCPU's reference and the MMU's until invalidated
        root.published = True
        vm.arch.roots.append(root)  # list_add_rcu()
        vm.ghost.event("root.alloc")
    vm.mmu_lock.read_unlock(actor)
    return root


def is_obsolete_sp(vm: Vm, sp: KvmMmuPage) -> bool:
    """is_obsolete_sp(): TDP MMU pages are obsolete only through role.invalid."""
    return sp.role_invalid


def kvm_mmu_free_obsolete_roots(vm: Vm, vcpu: Vcpu, actor: Actor) -> Op[None]:
    """kvm_mmu_free_obsolete_roots() -> kvm_mmu_free_roots(): put the vCPU's root if it is
    obsolete (TDP MMU: under mmu_lock for read)."""
    if vcpu.root is None or not is_obsolete_sp(vm, vcpu.root):
        return
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    root, vcpu.root = vcpu.root, None
    kvm_tdp_mmu_put_root(vm, root)
    vm.mmu_lock.read_unlock(actor)


def kvm_mmu_reload(vm: Vm, vcpu: Vcpu, actor: Actor) -> Op[None]:
    """kvm_mmu_reload() -> kvm_mmu_load(): get a root, then flush the TLB for it."""
    if vcpu.root is not None:
        return
    vcpu.root = yield from kvm_tdp_mmu_alloc_root(vm, vcpu, actor)
    vcpu.tlb.flush_root(vcpu.root.id)  # kvm_mmu_load(): flush_tlb_current


# -- zapping ------------------------------------------------------------------------------

def kvm_unmap_gfn_range(vm: Vm, actor: Actor, rng: KvmGfnRange) -> Op[bool]:
    """kvm_unmap_gfn_range(): lockdep says in_progress or slots_lock; zap the TDP MMU."""
    if not vm.mmu_invalidate_in_progress and not vm.slots_lock.is_held_by(actor):
        from kvmfuzz.virt.notifier import warn
        warn(vm, "kvm_unmap_gfn_range outside an invalidation and without slots_lock (I11)")
    return (yield from kvm_tdp_mmu_unmap_gfn_range(
        vm, actor, rng.slot.as_id, rng.start, rng.end, rng.may_block, False))


def kvm_tdp_mmu_invalidate_roots(vm: Vm, actor: Actor) -> None:
    """kvm_tdp_mmu_invalidate_roots(): mark every valid root invalid and scheduled to zap."""
    vm.mmu_lock.assert_held_write(actor)
    for root in vm.arch.roots:
        if not root.role_invalid:
            root.role_invalid = True
            root.scheduled_root_to_zap = True


def kvm_tdp_mmu_zap_invalidated_roots(vm: Vm, actor: Actor) -> Op[None]:
    """kvm_tdp_mmu_zap_invalidated_roots(): zap each scheduled root under mmu_lock (R), then put
    the MMU's reference (the root must stay reachable by notifiers while it is zapped)."""
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    for root in tdp_mmu_roots(vm, -1, False):
        # unreachable(true): the roots are listed in the atomic step that invalidated the only valid root, the
        #   newest; the older ones before it are visited without yielding, so none can lose its last reference
        #   first
        if not kvm_tdp_mmu_get_root(root):  # the yield-safe iterator's reference
            continue
        if root.scheduled_root_to_zap:
            root.scheduled_root_to_zap = False
            if not root.role_invalid:
                vm.kvm_bug(f"scheduled {root.describe()} is valid")
            yield from tdp_mmu_zap_root(vm, actor, root, True)
            kvm_tdp_mmu_put_root(vm, root)  # the MMU's reference, dropped after the zap
        kvm_tdp_mmu_put_root(vm, root)
    vm.mmu_lock.read_unlock(actor)


def kvm_mmu_zap_all_fast(vm: Vm, actor: Actor) -> Op[None]:
    """kvm_mmu_zap_all_fast(): obsolete every root, make vCPUs reload, zap them (Z1-Z7).

    Ghost (I19): the roots valid at Z1 must be invalid and empty when this returns.
    """
    vm.slots_lock.assert_held(actor)
    yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
    valid_at_z1 = {r.id for r in vm.arch.roots if not r.role_invalid}
    vm.arch.mmu_valid_gen ^= 1
    if not vm.bug("zap_all_fast_forgets_invalidate"):
        kvm_tdp_mmu_invalidate_roots(vm, actor)
    for vcpu in vm.vcpus:  # kvm_make_all_cpus_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
        vcpu.requests.add(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
    vm.mmu_lock.write_unlock(actor)
    vm.ghost.event("zap_all_fast")
    yield from kvm_tdp_mmu_zap_invalidated_roots(vm, actor)
    vm.arch.ghost.must_be_obsolete |= valid_at_z1


def kvm_zap_gfn_range(vm: Vm, actor: Actor, gfn_start: int, gfn_end: int) -> Op[None]:
    """kvm_zap_gfn_range() (x86, §2.13): begin + range_add, zap every valid root, flush, end,
    all in one mmu_lock (W) section that the zap may yield."""
    from kvmfuzz.virt.notifier import (
        kvm_mmu_invalidate_begin,
        kvm_mmu_invalidate_end,
        kvm_mmu_invalidate_range_add,
        warn,
    )
    if gfn_end <= gfn_start:
        warn(vm, f"kvm_zap_gfn_range [{gfn_start:#x}, {gfn_end:#x})")
        return
    window = vm.ghost.open("zap", actor)
    yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
    kvm_mmu_invalidate_begin(vm, actor, window)
    kvm_mmu_invalidate_range_add(vm, window, gfn_start, gfn_end)
    flush = yield from kvm_tdp_mmu_zap_leafs(vm, actor, gfn_start, gfn_end, False)
    if flush:
        kvm_flush_remote_tlbs_range(vm, actor, gfn_start, gfn_end - gfn_start)
    kvm_mmu_invalidate_end(vm, actor, window)
    vm.mmu_lock.write_unlock(actor)
    vm.ghost.close(window)
    vm.ghost.event("zap_gfn_range")


def kvm_mmu_zap_memslot(vm: Vm, actor: Actor, slot: Memslot) -> Op[None]:
    """kvm_mmu_zap_memslot(): zap only the slot's gfns in all roots; no begin/end."""
    yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
    flush = yield from kvm_tdp_mmu_unmap_gfn_range(vm, actor, slot.as_id, slot.base_gfn,
                                                    slot.base_gfn + slot.npages, True, False)
    if flush:
        kvm_flush_remote_tlbs_range(vm, actor, slot.base_gfn, slot.npages)
    vm.mmu_lock.write_unlock(actor)


def kvm_mmu_zap_all_leafs(vm: Vm, actor: Actor) -> Op[None]:
    """Calibration ``calib_zap_all_on_delete``: kvm_mmu_zap_all() done as an in-place zap of
    every leaf in every root of every address space under mmu_lock (W), flushed before the
    lock is dropped (the walk may yield, flushing first); no begin/end, as for the slot zap."""
    vm.slots_lock.assert_held(actor)
    yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
    flush = False
    # unreachable: kvm_mmu_zap_all_leafs() runs only with the calibration bug calib_zap_all_on_delete
    for as_id in range(vm.config.nr_as):
        flush = yield from kvm_tdp_mmu_unmap_gfn_range(vm, actor, as_id, 0, vm.arch.geo.max_gfn,
                                                        True, flush)
    # unreachable: kvm_mmu_zap_all_leafs() runs only with the calibration bug calib_zap_all_on_delete
    if flush:
        kvm_flush_remote_tlbs(vm, actor)
    vm.mmu_lock.write_unlock(actor)
    vm.ghost.event("zap_all_leafs")


def kvm_arch_flush_shadow_memslot(vm: Vm, actor: Actor, slot: Memslot) -> Op[None]:
    """kvm_arch_flush_shadow_memslot(): zap-all with the SLOT_ZAP_ALL quirk, else the slot."""
    if vm.bug("calib_zap_all_on_delete"):
        # Calibration: zap every leaf SPTE of every root in place (kvm_mmu_zap_all() under
        # mmu_lock, flushed), whatever the quirk says -- more than the slot, no root reload.
        yield from kvm_mmu_zap_all_leafs(vm, actor)
        return
    if vm.config.slot_zap_all:
        yield from kvm_mmu_zap_all_fast(vm, actor)
    else:
        yield from kvm_mmu_zap_memslot(vm, actor, slot)


def kvm_arch_memslots_updated(vm: Vm, actor: Actor, gen: int) -> Op[None]:
    """kvm_arch_memslots_updated() -> kvm_mmu_invalidate_mmio_sptes(): zap all on a wrap."""
    if vm.bug("mmio_spte_without_generation"):
        return  # planted: the generation never moves (see memslots_generation), so never wraps
    gen &= vm.arch.mmio_gen_mask
    gen &= ~(vm.config.nr_as - 1)
    if gen == 0 and not vm.bug("mmio_gen_wrap_not_handled"):
        vm.ghost.event("mmio_gen.wrap")
        yield from kvm_mmu_zap_all_fast(vm, actor)


def memslots_generation(vm: Vm, as_id: int) -> int:
    """``__kvm_memslots(kvm, as_id)->generation`` as the x86 MMU reads it (MMIO SPTEs, the vCPU
    MMIO cache, check_mmio_spte).

    Planted ``mmio_spte_without_generation``: memslot changes do not bump the generation the
    MMU sees (as before MMIO SPTEs carried a generation, 3.x): it stays at its initial value
    ``as_id``, with no update-in-progress bit.
    """
    if vm.bug("mmio_spte_without_generation"):
        return as_id
    return vm.memslots[as_id].generation


def mmio_generation_stable(gen: int) -> bool:
    return not gen & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS


# -- huge pages ---------------------------------------------------------------------------

def gfn_to_index(geo: Geometry, gfn: int, base_gfn: int, level: int) -> int:
    """gfn_to_index()."""
    shift = geo.level_bits * (level - 1)
    return (gfn >> shift) - (base_gfn >> shift)


def lpage_info_slot(vm: Vm, gfn: int, slot: Memslot, level: int) -> tuple[list[int], int]:
    """lpage_info_slot(): the disallow_lpage array and index for gfn at level."""
    return slot.lpage_info[level], gfn_to_index(vm.arch.geo, gfn, slot.base_gfn, level)


def kvm_alloc_memslot_metadata(vm: Vm, slot: Memslot) -> None:
    """kvm_alloc_memslot_metadata(): disallow_lpage for unaligned heads, tails, hva skew."""
    geo = vm.arch.geo
    slot.lpage_info = {}
    for level in range(2, geo.max_huge_level + 1):
        pages = geo.pages(level)
        lpages = gfn_to_index(geo, slot.base_gfn + slot.npages - 1, slot.base_gfn, level) + 1
        linfo = [0] * lpages
        if slot.base_gfn & (pages - 1):
            linfo[0] = 1
        if (slot.base_gfn + slot.npages) & (pages - 1):
            linfo[lpages - 1] = 1
        if (slot.base_gfn ^ slot.userspace_addr) & (pages - 1):
            linfo = [1] * lpages
        slot.lpage_info[level] = linfo
    if vm.config.private_mem:
        kvm_mmu_init_memslot_memory_attributes(vm, slot)


def __kvm_mmu_max_mapping_level(vm: Vm, slot: Memslot, gfn: int, max_level: int,
                                is_private: bool) -> int:
    """__kvm_mmu_max_mapping_level(): lpage_info, then (shared) the host mapping level."""
    max_level = min(max_level, vm.arch.geo.max_huge_level)
    while max_level > 1:
        linfo, idx = lpage_info_slot(vm, gfn, slot, max_level)
        if not linfo[idx]:
            break
        max_level -= 1
    # unreachable(true): private faults have max_level 1 (order-0 guest_memfd folios) and return early in
    #   kvm_mmu_hugepage_adjust(); huge-page recovery passes is_private=False
    if is_private:
        return max_level
    if max_level == 1:
        return 1
    host_level = host_pfn_mapping_level(vm, gfn, slot)
    return min(host_level, max_level)


def host_pfn_mapping_level(vm: Vm, gfn: int, slot: Memslot) -> int:
    """host_pfn_mapping_level(): walk the host page tables for the gfn's hva (lockless)."""
    return vm.mm.host_pfn_mapping_level(slot.gfn_to_hva(gfn))


# -- memory attributes --------------------------------------------------------------------

def hugepage_test_mixed(vm: Vm, slot: Memslot, gfn: int, level: int) -> bool:
    linfo, idx = lpage_info_slot(vm, gfn, slot, level)
    return bool(linfo[idx] & KVM_LPAGE_MIXED_FLAG)


def hugepage_set_mixed(vm: Vm, slot: Memslot, gfn: int, level: int, mixed: bool) -> None:
    """hugepage_set_mixed() / hugepage_clear_mixed()."""
    linfo, idx = lpage_info_slot(vm, gfn, slot, level)
    linfo[idx] = linfo[idx] | KVM_LPAGE_MIXED_FLAG if mixed else linfo[idx] & ~KVM_LPAGE_MIXED_FLAG


def hugepage_has_attrs(vm: Vm, slot: Memslot, gfn: int, level: int, attrs_: int) -> bool:
    """hugepage_has_attrs(): 2M scans gfns; 1G uses the 2M MIXED flags and first gfns."""
    geo = vm.arch.geo
    end = gfn + geo.pages(level)
    if level == 2:
        return all(vm.mem_attr_array.get(g, 0) == attrs_ for g in range(gfn, end))
    for g in range(gfn, end, geo.pages(level - 1)):
        if hugepage_test_mixed(vm, slot, g, level - 1) or vm.mem_attr_array.get(g, 0) != attrs_:
            return False
    return True


def kvm_mmu_init_memslot_memory_attributes(vm: Vm, slot: Memslot) -> None:
    """kvm_mmu_init_memslot_memory_attributes(): MIXED for every frame wholly in the slot."""
    geo = vm.arch.geo
    for level in range(2, geo.max_huge_level + 1):
        pages = geo.pages(level)
        start = geo.align_down(slot.base_gfn, level)
        end = geo.align_down(slot.base_gfn + slot.npages, level)
        if start < slot.base_gfn:
            start += pages
        for gfn in range(start, end, pages):
            attrs_ = vm.mem_attr_array.get(gfn, 0)
            hugepage_set_mixed(vm, slot, gfn, level,
                               not hugepage_has_attrs(vm, slot, gfn, level, attrs_))


def kvm_arch_pre_set_memory_attributes(vm: Vm, actor: Actor, rng: KvmGfnRange,
                                       window: object) -> Op[bool]:
    """kvm_arch_pre_set_memory_attributes(): add head/tail huge frames, then unmap."""
    from kvmfuzz.virt.notifier import kvm_mmu_invalidate_range_add
    geo, slot = vm.arch.geo, rng.slot
    if not vm.bug("attr_pre_skips_head_tail"):
        for level in range(2, geo.max_huge_level + 1):
            pages = geo.pages(level)
            start = geo.align_down(rng.start, level)
            end = geo.align_down(rng.end - 1, level)
            if ((start != rng.start or start + pages > rng.end) and start >= slot.base_gfn
                    and start + pages <= slot.base_gfn + slot.npages
                    and not hugepage_test_mixed(vm, slot, start, level)):
                kvm_mmu_invalidate_range_add(vm, window, start, start + pages)  # type: ignore[arg-type]
            if end == start:
                continue
            if (end + pages > rng.end and end + pages <= slot.base_gfn + slot.npages
                    and not hugepage_test_mixed(vm, slot, end, level)):
                kvm_mmu_invalidate_range_add(vm, window, end, end + pages)  # type: ignore[arg-type]
    return (yield from kvm_unmap_gfn_range(vm, actor, rng))


def kvm_arch_post_set_memory_attributes(vm: Vm, actor: Actor, rng: KvmGfnRange,
                                        attrs_: int) -> None:
    """kvm_arch_post_set_memory_attributes(): recompute MIXED for head, body, tail frames."""
    vm.mmu_lock.assert_held_write(actor)
    vm.slots_lock.assert_held(actor)
    geo, slot = vm.arch.geo, rng.slot
    for level in range(2, geo.max_huge_level + 1):
        pages = geo.pages(level)
        gfn = geo.align_down(rng.start, level)
        if gfn != rng.start or gfn + pages > rng.end:
            if gfn >= slot.base_gfn and gfn + pages <= slot.base_gfn + slot.npages:
                hugepage_set_mixed(vm, slot, gfn, level,
                                   not hugepage_has_attrs(vm, slot, gfn, level, attrs_))
            gfn += pages
        while gfn + pages <= rng.end:
            hugepage_set_mixed(vm, slot, gfn, level, False)
            gfn += pages
        if gfn < rng.end and gfn + pages <= slot.base_gfn + slot.npages:
            hugepage_set_mixed(vm, slot, gfn, level,
                               not hugepage_has_attrs(vm, slot, gfn, level, attrs_))


# -- memslot prepare / commit ---------------------------------------------------------------

def kvm_arch_prepare_memory_region(vm: Vm, old: Memslot | None, new: Memslot | None,
                                   change: str) -> int:
    """kvm_arch_prepare_memory_region(): lpage_info for CREATE/MOVE; FLAGS_ONLY shares it."""
    if change in ("CREATE", "MOVE"):
        assert new is not None
        kvm_alloc_memslot_metadata(vm, new)
    elif change == "FLAGS_ONLY":
        assert new is not None and old is not None
        new.lpage_info = old.lpage_info
    return 0


def kvm_arch_commit_memory_region(vm: Vm, actor: Actor, old: Memslot | None,
                                  new: Memslot | None, change: str) -> Op[None]:
    """kvm_arch_commit_memory_region() -> kvm_mmu_slot_apply_flags() (not on DELETE)."""
    if (new is not None and new.logging
            and (old is None or not old.logging or old.serial != new.serial)):
        vm.arch.ghost.written[new.serial] = set()  # ghost (D5): a new logging period
    if old is not None and change in ("DELETE", "MOVE"):
        vm.arch.ghost.written.pop(old.serial, None)
    if change != "DELETE":
        assert new is not None
        yield from kvm_mmu_slot_apply_flags(vm, actor, old, new, change)


def kvm_mmu_slot_apply_flags(vm: Vm, actor: Actor, old: Memslot | None, new: Memslot,
                             change: str) -> Op[None]:
    """kvm_mmu_slot_apply_flags(): dirty logging on -> split + write-protect + flush; off ->
    recover huge pages."""
    old_flags = old.flags if old is not None else 0
    log_dirty_toggled = (old_flags ^ new.flags) & KVM_MEM_LOG_DIRTY_PAGES
    if change != "FLAGS_ONLY" or new.flags & KVM_MEM_READONLY:
        return
    if not log_dirty_toggled:
        from kvmfuzz.virt.notifier import warn
        warn(vm, "FLAGS_ONLY without a LOG_DIRTY toggle")
        return
    if not new.flags & KVM_MEM_LOG_DIRTY_PAGES:
        vm.ghost.event("dirty_log.disable")
        vm.arch.ghost.written.pop(new.serial, None)
        from kvmfuzz.x86.huge import kvm_mmu_recover_huge_pages
        yield from kvm_mmu_recover_huge_pages(vm, actor, new)
        return
    vm.ghost.event("dirty_log.enable")
    if vm.config.manual_protect and vm.config.initially_set:
        return  # kvm_dirty_log_manual_protect_and_init_set(): every page counts as dirty
    if vm.config.eager_split:
        yield from kvm_mmu_slot_try_split_huge_pages(vm, actor, new)
        yield from preempt(Point.DIRTY_LOG_ENABLE_WRPROT)  # mmu_lock dropped in between
    if not vm.bug("dirty_log_enable_skips_wrprot"):
        yield from kvm_mmu_slot_remove_write_access(vm, actor, new, 1)
    kvm_flush_remote_tlbs_range(vm, actor, new.base_gfn, new.npages)  # unconditionally


def kvm_mmu_slot_try_split_huge_pages(vm: Vm, actor: Actor, slot: Memslot) -> Op[None]:
    """kvm_mmu_slot_try_split_huge_pages(): eager split of the slot down to 4K (mmu_lock R)."""
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    yield from kvm_tdp_mmu_try_split_huge_pages(vm, actor, slot.as_id, slot.base_gfn,
                                                slot.base_gfn + slot.npages, 1, True)
    vm.mmu_lock.read_unlock(actor)


def wrprot_gfn_range(vm: Vm, actor: Actor, root: KvmMmuPage, start: int, end: int,
                     min_level: int) -> Op[bool]:
    """wrprot_gfn_range(): clear W (only) of every writable leaf at >= min_level (mmu_lock R)."""
    rcu = vm.arch.rcu
    spte_set = False
    rcu.read_lock(actor)
    walk = TdpWalk(vm, root, start, end, min_level)
    for it in walk:
        while True:  # retry:
            if (yield from walk.cond_resched(actor, False, True)):
                break
            if (not S.is_shadow_present_pte(it.old_spte) or not S.is_last_spte(it.old_spte, it.level)
                    or not S.is_writable_pte(it.old_spte)):
                break
            # unreachable(false): the walk reads the SPTE and cmpxchgs it in one atomic step (cond_resched()
            #   restarts the walk when it yields), so the cmpxchg cannot fail
            if tdp_mmu_set_spte_atomic(vm, it, it.old_spte & ~S.PT_WRITABLE_MASK):
                vm.ghost.event("spte.wrprot")
                spte_set = True
                break
    rcu.read_unlock(vm, actor)
    return spte_set


def kvm_mmu_slot_remove_write_access(vm: Vm, actor: Actor, slot: Memslot,
                                     min_level: int) -> Op[None]:
    """kvm_mmu_slot_remove_write_access() -> kvm_tdp_mmu_wrprot_slot() (mmu_lock R).

    Clears W only: MMU-writable stays, so the fast path may set W again (and mark dirty).
    """
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    for root in tdp_mmu_roots(vm, slot.as_id, True):
        # unreachable(true): at most one valid root exists (every vCPU uses address space 0 and
        #   kvm_tdp_mmu_alloc_root() reuses the valid root), and its reference is taken in the atomic step
        #   that listed it, while it still holds the MMU's reference
        if not kvm_tdp_mmu_get_root(root):
            continue
        yield from wrprot_gfn_range(vm, actor, root, slot.base_gfn, slot.base_gfn + slot.npages,
                                    min_level)
        kvm_tdp_mmu_put_root(vm, root)
    vm.mmu_lock.read_unlock(actor)


def kvm_zap_all_roots_now(vm: Vm, actor: Actor) -> Op[None]:
    """Test helper: kvm_mmu_zap_all() under mmu_lock (W)."""
    yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
    flush = yield from kvm_tdp_mmu_unmap_gfn_range(vm, actor, 0, 0, vm.arch.geo.max_gfn,
                                                    False, False)
    # unreachable: kvm_zap_all_roots_now() has no caller (a test helper that no test uses)
    if flush:
        kvm_flush_remote_tlbs(vm, actor)
    vm.mmu_lock.write_unlock(actor)
