"""The closed vocabulary of preemption points (stable names: corpus files and coverage store them).

Renaming a member needs a corpus migration. Each value says where the operation stopped.
"""

from __future__ import annotations

import enum


class Point(enum.Enum):
    """Where an operation can be preempted (a ⇄ of the reference)."""

    ATTR_STORE = "KVM_SET_MEMORY_ATTRIBUTES: before storing one gfn's attribute (no mmu_lock)"
    DIRTY_LOG_BEFORE_FLUSH = "KVM_GET_DIRTY_LOG: mmu_lock dropped, the slot's TLB flush not yet done"
    FAULT_BEFORE_MMU_LOCK = "fault: pfn resolved and pre-checked, about to take mmu_lock for read"
    FAULT_GMEM_GET_PFN = "fault: before kvm_gmem_get_pfn() (private)"
    FAULT_GUP = "fault: before hva_to_pfn() (GUP may sleep; the host races here)"
    FAULT_PFN_RESOLVED = "fault: pfn resolved, mmu_lock not yet taken (the candidate pfn may go stale)"
    FAULT_SEQ_SNAPSHOT = "fault: mmu_invalidate_seq snapshotted (smp_rmb), nothing else read yet"
    FAULT_TOPUP_CACHES = "fault: mmu_topup_memory_caches() (may sleep)"
    GMEM_INVALIDATE_LOCK = "about to take a guest_memfd filemap_invalidate_lock"
    GMEM_TRUNCATE = "punch hole: SPTEs zapped, folios not yet freed"
    HOST_PTE_CHANGE = "host mm: invalidate_range_start returned, page tables not yet changed"
    MN_START_COUNTED = "notifier start: mn_active_invalidate_count raised, memslots not yet walked"
    MMU_LOCK_READ = "about to take mmu_lock for read"
    MMU_LOCK_WRITE = "about to take mmu_lock for write"
    MN_END_BEFORE_COUNT = "notifier end: invalidate_end done and mmu_lock dropped, count not yet lowered"
    MN_INVALIDATE_LOCK = "about to take mn_invalidate_lock"
    SLOTS_ARCH_LOCK = "about to take slots_arch_lock"
    SLOTS_LOCK = "about to take slots_lock"
    SWAP_WAIT_MN_ACTIVE = "kvm_swap_active_memslots(): asleep until mn_active_invalidate_count drops to 0"
    SYNCHRONIZE_SRCU = "kvm_swap_active_memslots(): synchronize_srcu() waiting for readers"
    TDP_MAP_STEP_DOWN = "kvm_tdp_mmu_map(): a table linked or split (one cmpxchg), stepping down"
    TDP_MMU_YIELD = "a TDP MMU walk dropped mmu_lock to yield (tdp_mmu_iter_cond_resched)"
    VCPU_GUEST_ACCESS = "vCPU: about to enter the guest and perform the access"
    VCPU_REENTER = "vCPU: fault handled (FIXED/SPURIOUS/RETRY), about to re-enter the guest"
    AGE_SPTE = "lockless aging: an accessed leaf read under RCU, its A bit not yet cleared"
    CLEAR_DIRTY_LOG_BEFORE_FLUSH = "KVM_CLEAR_DIRTY_LOG: mmu_lock dropped, the slot's TLB flush not yet done"
    DIRTY_LOG_ENABLE_WRPROT = "dirty-log enable: huge pages split, mmu_lock dropped, not yet write-protected"
    FAST_PF_CMPXCHG = "fast_page_fault(): SPTE read locklessly under RCU, its cmpxchg not yet done"
    FAST_PF_MARK_DIRTY = "fast_page_fault(): W set by the cmpxchg, mark_page_dirty_in_slot() not yet called"
    TDP_RECOVER_HUGE = "huge-page recovery: mmu_lock held for read, about to build a huge SPTE"
    TDP_SPLIT_ALLOC = "eager huge-page split: mmu_lock dropped to allocate a page table"
