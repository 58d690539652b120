"""The TDP page-fault path (arch/x86/kvm/mmu/mmu.c, tdp_mmu.c, x86.h; reference §2.3, §2.5).

``kvm_mmu_page_fault`` -> (RSVD: ``handle_mmio_page_fault``: the vCPU MMIO-info cache, then the
MMIO SPTE and its generation) -> ``kvm_tdp_mmu_page_fault``: ``fast_page_fault`` (x86/fast_pf.py),
``kvm_mmu_faultin_pfn`` (snapshot ``mmu_invalidate_seq``, then every read it guards:
attributes, slot, host page tables / guest_memfd; unsafe pre-checks), then ``mmu_lock`` for
read, ``is_page_fault_stale``, ``kvm_tdp_mmu_map`` under RCU (hugepage adjust, walk, link /
split, ``tdp_mmu_map_handle_target_level``), then ``kvm_mmu_finish_page_fault`` (release the
page reference).

Every ⇄ of the reference is a preemption point. MMIO SPTEs and the MMIO cache use the memslot
generation as the MMU reads it (``memslots_generation``). Ghost: each MMIO SPTE records the full
generation it was stamped with (I15); a mapping installed in an invalid root is recorded (I19).
Left out: async page faults (GUP never needs I/O), write-tracking (RET_PF_WRITE_PROTECTED is
never returned), NX huge pages, the page-track hook (F3), the APIC-access page (F6e).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import attrs

from kvmfuzz.host.pages import Folio
from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt, read_lock
from kvmfuzz.virt.kvm import Memslot
from kvmfuzz.virt.notifier import mmu_invalidate_retry_gfn, mmu_invalidate_retry_gfn_unsafe
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import (
    KvmMmuPage,
    Source,
    TdpIter,
    for_each_tdp_pte,
    tdp_mmu_alloc_sp,
    tdp_mmu_free_sp,
    tdp_mmu_link_sp,
    tdp_mmu_set_spte_atomic,
    tdp_mmu_split_huge_page,
)
from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs_range

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm
    from kvmfuzz.x86.vcpu import Vcpu

RET_PF_CONTINUE = 0
RET_PF_RETRY = 1
RET_PF_EMULATE = 2
RET_PF_WRITE_PROTECTED = 3
RET_PF_INVALID = 4
RET_PF_FIXED = 5
RET_PF_SPURIOUS = 6
RET_PF_NAMES = {0: "CONTINUE", 1: "RETRY", 2: "EMULATE", 3: "WRITE_PROTECTED", 4: "INVALID",
                5: "FIXED", 6: "SPURIOUS", -errno.EFAULT: "EFAULT"}

KVM_PFN_NOSLOT = 1 << 63
KVM_PFN_ERR_FAULT = 0x7FF << 52
KVM_PFN_ERR_RO_FAULT = KVM_PFN_ERR_FAULT + 2


def is_error_noslot_pfn(pfn: int) -> bool:
    return pfn >= KVM_PFN_ERR_FAULT


@attrs.define(eq=False)
class PageFault:
    """``struct kvm_page_fault`` plus ghost fields (``why``, ``source``, ``stage``)."""

    gfn: int
    write: bool
    exec: bool
    present: bool
    rsvd: bool
    is_private: bool
    prefetch: bool = False
    slot: Memslot | None = None
    mmu_seq: int | None = None
    pfn: int = 0
    map_writable: bool = False
    max_level: int = 3
    req_level: int = 1
    goal_level: int = 1
    huge_page_disallowed: bool = False
    refcounted_page: Folio | None = None
    source: Source | None = None  # ghost: what the pfn was resolved from
    why: str = ""  # ghost: why the fault ended as it did (coverage, messages)
    stage: str = "start"  # ghost


def kvm_mmu_page_fault(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault) -> Op[int]:
    """kvm_mmu_page_fault(): MMIO fast path for RSVD faults, else the TDP fault."""
    r = RET_PF_INVALID
    if fault.rsvd:
        r = handle_mmio_page_fault(vm, vcpu, fault)
        if r in (RET_PF_EMULATE, RET_PF_RETRY):
            return r
    return (yield from kvm_tdp_mmu_page_fault(vm, vcpu, actor, fault))


def vcpu_cache_mmio_info(vm: Vm, vcpu: Vcpu, gfn: int, access: int) -> None:
    """vcpu_cache_mmio_info(): remember "gfn is MMIO" with kvm_memslots(kvm)->generation, unless
    a memslot update is in progress (the generation is about to change)."""
    from kvmfuzz.x86.mmu import memslots_generation, mmio_generation_stable
    gen = memslots_generation(vm, 0)  # kvm_memslots(): address space 0
    if not mmio_generation_stable(gen):
        return
    vcpu.mmio_gfn, vcpu.mmio_access, vcpu.mmio_gen = gfn, access, gen


def mmio_info_in_cache(vm: Vm, vcpu: Vcpu, gfn: int) -> bool:
    """mmio_info_in_cache() -> vcpu_match_mmio_gpa(): same generation and gfn (gfn 0: never)."""
    from kvmfuzz.x86.mmu import memslots_generation
    return (vcpu.mmio_gen == memslots_generation(vm, 0) and vcpu.mmio_gfn != 0
            and vcpu.mmio_gfn == gfn)


def handle_mmio_page_fault(vm: Vm, vcpu: Vcpu, fault: PageFault) -> int:
    """handle_mmio_page_fault(): the MMIO cache or a current-generation MMIO SPTE emulates."""
    if mmio_info_in_cache(vm, vcpu, fault.gfn):
        fault.why = "mmio-cache"
        vm.ghost.event("fault.mmio_cache_hit")
        return RET_PF_EMULATE
    spte = vcpu.walk_leaf(fault.gfn)[0]  # get_mmio_spte(): a lockless walk
    m = vm.arch.masks
    # unreachable(false): the hardware walk that found the MMIO SPTE and this lockless walk run in one atomic
    #   step (kvm_check_requests() between them never yields), so it is still there
    if S.is_mmio_spte(m, spte):
        if not check_mmio_spte(vm, vcpu, spte):
            fault.why = "mmio-gen-stale"
            vm.ghost.event("fault.mmio_gen_miss")
            return RET_PF_INVALID
        vcpu_cache_mmio_info(vm, vcpu, S.get_mmio_spte_gfn(m, spte), S.get_mmio_spte_access(m, spte))
        fault.why = "mmio-spte"
        return RET_PF_EMULATE
    fault.why = "mmio-spte-zapped"
    vm.ghost.event("fault.retry.mmio_spte_zapped")
    return RET_PF_RETRY


def check_mmio_spte(vm: Vm, vcpu: Vcpu, spte: int) -> bool:
    """check_mmio_spte(): fails while an update is in progress or on a generation mismatch."""
    from kvmfuzz.x86.mmu import memslots_generation
    return check_mmio_spte_gen(vm, spte, memslots_generation(vm, vcpu.as_id))


def check_mmio_spte_gen(vm: Vm, spte: int, gen: int) -> bool:
    """check_mmio_spte() against the generation ``gen`` (with the model's MMIO generation width)."""
    if gen & S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        return False
    return (gen & vm.arch.mmio_gen_mask) == S.get_mmio_spte_generation(spte)


def kvm_tdp_mmu_page_fault(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault) -> Op[int]:
    """kvm_tdp_mmu_page_fault()."""
    from kvmfuzz.x86.fast_pf import fast_page_fault
    r = yield from fast_page_fault(vm, vcpu, actor, fault)
    if r != RET_PF_INVALID:
        return r
    fault.stage = "slow"
    yield from preempt(Point.FAULT_TOPUP_CACHES)  # mmu_topup_memory_caches() may sleep
    r = yield from kvm_mmu_faultin_pfn(vm, vcpu, actor, fault)
    if r != RET_PF_CONTINUE:
        return r
    r = RET_PF_RETRY
    yield from preempt(Point.FAULT_BEFORE_MMU_LOCK)  # F6i ⇄: pre-checked, lock not yet taken
    yield from read_lock(vm.mmu_lock, actor, Point.MMU_LOCK_READ)
    fault.stage = "locked"
    if vm.bug("skip_is_page_fault_stale") or not is_page_fault_stale(vm, vcpu, actor, fault):
        r = yield from kvm_tdp_mmu_map(vm, vcpu, actor, fault)
    kvm_mmu_finish_page_fault(vm, fault, r)
    vm.mmu_lock.read_unlock(actor)
    return r


def is_page_fault_stale(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault) -> bool:
    """is_page_fault_stale(): obsolete root, or (with a slot) mmu_invalidate_retry_gfn()."""
    from kvmfuzz.x86.mmu import is_obsolete_sp
    root = vcpu.root
    if root is not None and is_obsolete_sp(vm, root) and not vm.bug("stale_check_ignores_obsolete_root"):
        fault.why = "obsolete-root"
        vm.ghost.event("fault.retry.obsolete_root")
        return True
    assert fault.mmu_seq is not None
    if fault.slot is not None and mmu_invalidate_retry_gfn(vm, actor, fault.mmu_seq, fault.gfn):
        in_range = (vm.mmu_invalidate_in_progress
                    and vm.mmu_invalidate_range_start <= fault.gfn < vm.mmu_invalidate_range_end)
        fault.why = "in-progress" if in_range else "seq-changed"
        vm.ghost.event("fault.retry." + fault.why)
        return True
    return False


def kvm_mmu_finish_page_fault(vm: Vm, fault: PageFault, r: int) -> None:
    """kvm_mmu_finish_page_fault() -> kvm_release_faultin_page(): drop the page reference."""
    page, fault.refcounted_page = fault.refcounted_page, None
    if page is not None and not vm.bug("fault_leaks_page_ref"):
        vm.pages.put(page)


def kvm_mmu_faultin_pfn(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault) -> Op[int]:
    """kvm_mmu_faultin_pfn(): seq snapshot first, then attributes, slot, pfn; pre-checks."""
    if not vm.bug("seq_snapshot_after_pfn"):
        fault.mmu_seq = vm.mmu_invalidate_seq  # then smp_rmb()
        yield from preempt(Point.FAULT_SEQ_SNAPSHOT)
    fault.stage = "faultin"
    if fault.is_private != vm.kvm_mem_is_private(fault.gfn):
        fault.why = "private-mismatch"
        vm.ghost.event("fault.exit.memory_fault")
        return -errno.EFAULT  # kvm_mmu_prepare_memory_fault_exit()
    slot = fault.slot
    if slot is None:
        if vm.bug("seq_snapshot_after_pfn"):
            fault.mmu_seq = vm.mmu_invalidate_seq  # planted: after the (no-)slot lookup
        return kvm_handle_noslot_fault(vm, vcpu, fault)
    if slot.invalid:
        if vm.bug("invalid_slot_treated_as_noslot"):
            return kvm_handle_noslot_fault(vm, vcpu, fault)  # planted: as before e0c378684b65
        fault.why = "invalid-slot"
        vm.ghost.event("fault.retry.invalid_slot")
        return RET_PF_RETRY
    if (not vm.bug("calib_no_unsafe_prechecks") and fault.mmu_seq is not None
            and mmu_invalidate_retry_gfn_unsafe(vm, fault.mmu_seq, fault.gfn)):
        fault.why = "unsafe-precheck-1"
        vm.ghost.event("fault.retry.precheck1")
        return RET_PF_RETRY
    r = yield from __kvm_mmu_faultin_pfn(vm, vcpu, actor, fault)
    if r != RET_PF_CONTINUE:
        return r
    if vm.bug("seq_snapshot_after_pfn"):
        fault.mmu_seq = vm.mmu_invalidate_seq
    if is_error_noslot_pfn(fault.pfn):
        return kvm_handle_error_pfn(vm, fault)
    if (not vm.bug("calib_no_unsafe_prechecks")
            and mmu_invalidate_retry_gfn_unsafe(vm, fault.mmu_seq or 0, fault.gfn)):
        if vm.bug("precheck_retry_leaks_page_ref"):
            fault.refcounted_page = None  # planted: returns RETRY without releasing the page
        kvm_mmu_finish_page_fault(vm, fault, RET_PF_RETRY)
        fault.why = "unsafe-precheck-2"
        vm.ghost.event("fault.retry.precheck2")
        return RET_PF_RETRY
    return RET_PF_CONTINUE


def kvm_handle_noslot_fault(vm: Vm, vcpu: Vcpu, fault: PageFault) -> int:
    """kvm_handle_noslot_fault(): private -> memory-fault exit; else an MMIO SPTE will do."""
    if fault.is_private:
        fault.why = "private-noslot"
        return -errno.EFAULT
    vcpu_cache_mmio_info(vm, vcpu, fault.gfn, 0)  # access & shadow_mmio_access_mask (EPT: 0)
    fault.slot = None
    fault.pfn = KVM_PFN_NOSLOT
    fault.map_writable = False
    fault.why = "noslot"
    if not vm.arch.masks.mmio_caching or fault.gfn >= vm.arch.geo.max_gfn:
        return RET_PF_EMULATE
    return RET_PF_CONTINUE


def kvm_handle_error_pfn(vm: Vm, fault: PageFault) -> int:
    """kvm_handle_error_pfn(): RO_FAULT emulates (MMIO exit); anything else is -EFAULT."""
    if fault.pfn == KVM_PFN_ERR_RO_FAULT:
        fault.why = "readonly-slot-write"
        vm.ghost.event("fault.emulate.ro_slot")
        return RET_PF_EMULATE
    fault.why = "gup-efault"
    vm.ghost.event("fault.exit.efault")
    return -errno.EFAULT


def __kvm_mmu_faultin_pfn(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault) -> Op[int]:
    """__kvm_mmu_faultin_pfn(): guest_memfd for private faults, else GUP on the hva."""
    slot = fault.slot
    assert slot is not None
    if fault.is_private:
        from kvmfuzz.virt.guest_memfd import kvm_mmu_faultin_pfn_private
        return (yield from kvm_mmu_faultin_pfn_private(vm, actor, fault))
    yield from preempt(Point.FAULT_GUP)  # hva_to_pfn(): GUP may sleep; the host races here
    if fault.write and slot.readonly:
        fault.pfn = KVM_PFN_ERR_RO_FAULT  # __gfn_to_hva_many(): KVM_HVA_ERR_RO_BAD
        return RET_PF_CONTINUE
    hva = slot.gfn_to_hva(fault.gfn)
    mapping = vm.mm.get_user_page(hva, fault.write)
    if mapping is None:
        fault.pfn = KVM_PFN_ERR_FAULT
        return RET_PF_CONTINUE
    fault.pfn = mapping.pfn
    fault.map_writable = mapping.writable and not slot.readonly
    fault.refcounted_page = mapping.folio
    fault.source = Source("hva", slot.serial, slot.id, hva, False)
    fault.stage = "pfn-resolved"
    yield from preempt(Point.FAULT_PFN_RESOLVED)
    return RET_PF_CONTINUE


def kvm_mmu_hugepage_adjust(vm: Vm, fault: PageFault) -> None:
    """kvm_mmu_hugepage_adjust(): how large a mapping the slot, attributes and host allow."""
    from kvmfuzz.x86.mmu import __kvm_mmu_max_mapping_level
    slot = fault.slot
    fault.huge_page_disallowed = False
    if fault.max_level == 1 or is_error_noslot_pfn(fault.pfn) or slot is None or slot.logging:
        return
    fault.req_level = __kvm_mmu_max_mapping_level(vm, slot, fault.gfn, fault.max_level,
                                                  fault.is_private)
    if fault.req_level == 1 or fault.huge_page_disallowed:
        return
    fault.goal_level = fault.req_level
    pages = vm.arch.geo.pages(fault.goal_level)
    if (fault.gfn & (pages - 1)) != (fault.pfn & (pages - 1)):
        from kvmfuzz.errors import ModelError
        raise ModelError(f"VM_BUG_ON: gfn {fault.gfn:#x} and pfn {fault.pfn:#x} disagree "
                         f"modulo L{fault.goal_level}")
    fault.pfn &= ~(pages - 1)
    # unreachable(false): a fault that gets here resolved its pfn from an hva, which sets fault.source
    #   (private faults have max_level 1 and returned above)
    if fault.source is not None:
        fault.source = fault.source.offset(-(fault.gfn & (pages - 1)))


def kvm_tdp_mmu_map(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault) -> Op[int]:
    """kvm_tdp_mmu_map(): walk to goal_level, linking or splitting tables on the way."""
    kvm_mmu_hugepage_adjust(vm, fault)
    root = vcpu.root
    assert root is not None
    rcu = vm.arch.rcu
    rcu.read_lock(actor)
    try:
        return (yield from _tdp_mmu_map_walk(vm, vcpu, actor, fault, root))
    finally:
        rcu.read_unlock(vm, actor)


def _tdp_mmu_map_walk(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault,
                      root: KvmMmuPage) -> Op[int]:
    """The for_each_tdp_pte() loop of kvm_tdp_mmu_map() (under rcu_read_lock)."""
    geo = vm.arch.geo
    level = root.level
    sp = root
    while True:
        idx = geo.index(fault.gfn, level)
        it = TdpIter(sp, idx, level, geo.align_down(fault.gfn, level), sp.spt[idx])
        if S.is_frozen_spte(it.old_spte):
            fault.why = "frozen-spte"
            vm.ghost.event("fault.retry.frozen_spte")
            return RET_PF_RETRY
        if level == fault.goal_level:
            return tdp_mmu_map_handle_target_level(vm, vcpu, actor, fault, it)
        if S.is_shadow_present_pte(it.old_spte) and not S.is_large_pte(it.old_spte):
            sp = vm.arch.sp_by_pfn[S.spte_to_pfn(it.old_spte)]
            level -= 1
            continue
        child = tdp_mmu_alloc_sp(vm, level - 1, it.gfn, root.as_id, root)
        if S.is_shadow_present_pte(it.old_spte):
            ok = tdp_mmu_split_huge_page(vm, it, child)
        else:
            ok = tdp_mmu_link_sp(vm, it, child)
        # unreachable(true): the SPTE was read in this atomic step (no preemption point between the read and
        #   the cmpxchg), so the cmpxchg cannot fail (link or split)
        if not ok:
            tdp_mmu_free_sp(vm, child)
            fault.why = "cmpxchg-lost-link"
            vm.ghost.event("fault.retry.cmpxchg_link")
            return RET_PF_RETRY
        yield from preempt(Point.TDP_MAP_STEP_DOWN)  # each cmpxchg is its own atomic step
        # Step down through the table just linked, as the iterator does; if another CPU has
        # zapped it meanwhile its entries are FROZEN and the next level retries.
        sp, level = child, level - 1


def tdp_mmu_map_handle_target_level(vm: Vm, vcpu: Vcpu, actor: Actor, fault: PageFault,
                                    it: TdpIter) -> int:
    """tdp_mmu_map_handle_target_level(): build the SPTE, cmpxchg it in, flush if needed."""
    from kvmfuzz.x86.mmu import memslots_generation, mmio_generation_stable
    m = vm.arch.masks
    ret = RET_PF_FIXED
    old = it.old_spte
    if (S.is_shadow_present_pte(old) and S.is_last_spte(old, it.level)
            and (fault.prefetch or S.is_access_allowed(m, old, write=fault.write, exec=fault.exec))):
        fault.why = "already-mapped"
        return RET_PF_SPURIOUS
    wrprot = False
    full_gen = memslots_generation(vm, vcpu.as_id)  # kvm_vcpu_memslots(vcpu)->generation
    if fault.slot is None:
        new = S.make_mmio_spte(m, it.gfn, S.ACC_ALL, full_gen & vm.arch.mmio_gen_mask)
    else:
        made = S.make_spte(m, level=it.level, gfn=it.gfn, pfn=fault.pfn, old_spte=old,
                           access=S.ACC_ALL, prefetch=fault.prefetch,
                           host_writable=fault.map_writable, ad_disabled=not vm.config.ad_bits)
        new, wrprot = made.spte, made.wrprot
        if S.is_writable_pte(new) and fault.slot.logging:
            from kvmfuzz.virt.dirty import mark_page_dirty_in_slot
            mark_page_dirty_in_slot(vm, fault.slot, it.gfn)  # make_spte(): before the cmpxchg
    if new == old:
        ret = RET_PF_SPURIOUS
    else:
        sp, idx = it.sp, it.idx
        # unreachable(true): the SPTE was read in this atomic step (no preemption point between the read and
        #   the cmpxchg), so the cmpxchg cannot fail
        if not tdp_mmu_set_spte_atomic(vm, it, new):
            fault.why = "cmpxchg-lost"
            vm.ghost.event("fault.retry.cmpxchg")
            return RET_PF_RETRY
        if fault.source is not None:
            sp.src[idx] = fault.source
        if fault.slot is None:  # ghost (I15): the generation this MMIO SPTE was stamped with
            stable = mmio_generation_stable(full_gen)
            sp.mmio_gen[idx] = (full_gen & ~S.KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS, not stable)
        # unreachable(true): an I19 violation: is_page_fault_stale() rejected an invalid root under mmu_lock
        #   (R), held since, and roots are invalidated only under mmu_lock (W)
        if sp.root_sp.role_invalid:  # ghost (I19)
            vm.arch.ghost.invalid_root_installs.append(
                f"{vcpu.name} installed {S.format_spte(m, new, it.level)} for gfn {it.gfn:#x} "
                f"in {sp.root_sp.describe()}")
        vm.ghost.event("spte.install.mmio" if fault.slot is None else f"spte.install.L{it.level}")
        if S.is_shadow_present_pte(old) and (
                not S.is_last_spte(old, it.level)
                or S.leaf_spte_change_needs_tlb_flush(m, old, new)):
            kvm_flush_remote_tlbs_range(vm, actor, it.gfn, vm.arch.geo.pages(it.level))
    # unreachable(true): write-tracking is not modelled: make_spte() is never passed write_tracked, so wrprot
    #   is always false
    if wrprot and fault.write:
        ret = RET_PF_WRITE_PROTECTED
    if S.is_mmio_spte(m, new):
        ret = RET_PF_EMULATE
    return ret


def walk_for_gfn(vm: Vm, root_level_sp: object, gfn: int) -> list[TdpIter]:
    """All SPTEs on the path to ``gfn`` (for messages and tests)."""
    from kvmfuzz.x86.tdp_mmu import KvmMmuPage
    assert isinstance(root_level_sp, KvmMmuPage)
    return [it for it in for_each_tdp_pte(vm, root_level_sp, gfn, gfn + 1)]
