"""The x86 MMU of KVM (arch/x86/kvm/mmu/, x86.c, x86.h), TDP MMU only, as of Linux v6.18.

Followed version: **v6.18** (``KERNEL_VERSION`` in spte.py): SPTE encoding of spte.h/spte.c
6.13+ (FROZEN_SPTE, SHADOW_NONPRESENT_VALUE = bit 63, D set with W, A/D masks defined without
A/D bits, ``spte_needs_atomic_update``), in-place huge-page recovery (6.13), lockless aging
(6.15), eager page split with the allocation outside mmu_lock, the fast page fault refusing
private/shared mismatches (6.10), ``kvm_zap_gfn_range`` with begin/end (6.1+), TDP roots that
hold an MMU reference until invalidated, synchronous zap of invalidated roots in
``kvm_mmu_zap_all_fast``.

Modules: spte.py (bit-exact encoding), geometry.py (levels, fan-out), rcu.py (RCU for page-table
pages), ghost.py (invariant bookkeeping), tdp_mmu.py (pages, iterator, SPTE updates, roots, zap,
split), mmu.py (KvmArch, arch hooks, roots, dirty-log enable, zap_all_fast, zap_gfn_range),
fault.py (slow fault, MMIO path and cache), fast_pf.py (lockless fast fault), huge.py (huge-page
recovery), aging.py (lockless aging), tlb.py (per-vCPU TLBs, remote flushes), vcpu.py (guest
accesses, the exit loop, requests).

Left out, and why:
- the shadow MMU (rmaps, shadow pages, unsync, write-tracking, ``RET_PF_WRITE_PROTECTED``) and
  nested TDP: the fuzzer targets the TDP MMU (``tdp_mmu=Y``, the default on 64-bit hosts);
  ``disallow_lpage`` keeps its write-tracking slot as a plain count that nothing raises;
- NX huge pages (the iTLB multihit mitigation and its recovery worker): orthogonal to the
  invalidation protocol; ``make_spte`` / ``make_small_spte`` / ``make_huge_spte`` still take the
  flag, bit-exact;
- PML: dirty logging write-protects (``cpu_dirty_log_size`` = 0), so W, not D, is what the
  harvest clears; the dirty ring (only the bitmap is modelled);
- TDX mirror/external roots, SEV/SNP (RMP, C-bit), L1TF high-gpa mirroring in MMIO SPTEs;
- the vCPU's cache of previous roots and PCID/ASID details: a new root is flushed on load;
- async page faults, page-allocation failures (eager split never fails), the MMU page quota;
- need_resched() in TDP walks is modelled only where a walk offers an explicit point while
  holding mmu_lock (huge-page recovery); elsewhere a walk yields only when mmu_lock is contended
  (``rwlock_needbreak``).
"""
