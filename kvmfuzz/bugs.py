"""The catalogue of planted bugs: named variants of the model, each one wrong step.

Select one with ``VmConfig(bug=NAME)`` (pytest ``--kvmfuzz-bug``, ``python -m kvmfuzz replay
--bug``, the machine's ``make_machine``). The model tests ``vm.bug(NAME)`` at exactly the step
the variant changes, and every such hook has an entry here (tests/test_bugs_catalogue.py checks
both directions).

Each entry says what is wrong (``summary``), the kernel fix or rule it mirrors (``mirrors``:
the commit title, and its id where one is known; ids marked "per the reference" come from the
project's kernel-protocol reference §5 and were not re-checked; a variant that mirrors no
known fix says it is a plausible mistake), and the invariant titles expected to catch it
(``caught_by``, separated by " / ", as raised by kvmfuzz.invariants, the scheduler and the vCPU
loop). ``interleaving`` is False for the few variants that a plain sequence of operations
already exposes (no concurrency needed). ``calibration`` variants are *safe* changes of
behaviour: a campaign against them must find nothing, or an invariant has a false positive.
"""

from __future__ import annotations

from typing import Final

import attrs

from kvmfuzz.errors import InvalidArgument


@attrs.frozen
class PlantedBug:
    name: str
    summary: str
    mirrors: str  # the kernel fix (title, id where known) or the plausible mistake
    caught_by: str  # the invariant(s) expected to fire, " / "-separated
    calibration: bool = False
    interleaving: bool = True  # False: a sequential schedule exposes it

    @property
    def titles(self) -> tuple[str, ...]:
        """The invariant titles of ``caught_by`` (empty for a calibration variant)."""
        if self.calibration:
            return ()
        return tuple(t.strip() for t in self.caught_by.split("/"))


_MAPPING = "I1-no-mapping-in-closed-range / I2-host-consistency / I10-freed-pfn-mapped"

CATALOGUE: Final[tuple[PlantedBug, ...]] = (
    # -- the retry check: mmu_invalidate_retry_gfn(), its state and the seq snapshot -------------
    PlantedBug("skip_is_page_fault_stale",
               "the fault installs its SPTE without is_page_fault_stale() under mmu_lock",
               "the locked mmu_notifier_retry() check the fault path has had since KVM got MMU "
               "notifiers (2.6.27), today is_page_fault_stale() (F7a)",
               _MAPPING + " / I11-guest-data-coherence / I6-private-shared-source / "
               "I19-obsolete-root"),
    PlantedBug("retry_ignores_in_progress",
               "mmu_invalidate_retry_gfn() compares the seq but ignores in_progress and the range",
               "the in-progress half of mmu_invalidate_retry_gfn() ('KVM: Use gfn instead of hva "
               "for mmu_notifier_retry', 6.8; id not verified) and the original "
               "mmu_notifier_count test",
               _MAPPING + " / I11-guest-data-coherence / I6-private-shared-source"),
    PlantedBug("retry_ignores_seq",
               "mmu_invalidate_retry_gfn() tests only the in-progress range, not whether "
               "mmu_invalidate_seq moved since the fault's snapshot: an invalidation that started "
               "and ended while the fault held a candidate pfn goes unnoticed",
               "the seq comparison of mmu_notifier_retry() (2.6.27; plausible omission)",
               _MAPPING + " / I11-guest-data-coherence / I6-private-shared-source"),
    PlantedBug("retry_range_end_off_by_one",
               "mmu_invalidate_retry_gfn() treats range_end as the last gfn (compares gfn < "
               "range_end - 1): a fault on the last gfn of an in-progress range does not retry",
               "plausible mistake in the half-open [range_start, range_end) test of "
               "mmu_invalidate_retry_gfn() (gfn-based since 6.8)",
               _MAPPING + " / I11-guest-data-coherence / I6-private-shared-source"),
    PlantedBug("begin_resets_nested_range",
               "kvm_mmu_invalidate_begin() resets range_start/end on every begin, not only when "
               "in_progress goes 0 -> 1: a nested invalidation forgets the ranges of those "
               "still in progress",
               "plausible mistake in the range tracking added when the retry check started to "
               "compare the faulting address (hva, 5.13; gfn since 6.8): the hull of concurrent "
               "ranges, reset only by the first begin",
               "I3-invalidate-counters / " + _MAPPING),
    PlantedBug("range_add_keeps_end",
               "kvm_mmu_invalidate_range_add() widens range_start but keeps range_end: a second "
               "range (another slot, a nested invalidation) is only partly covered",
               "plausible mistake in kvm_mmu_invalidate_range_add()'s min/max hull",
               "I3-invalidate-counters / " + _MAPPING, interleaving=False),
    PlantedBug("unmap_before_range_add",
               "kvm_mmu_unmap_gfn_range() zaps first and adds the range after: a fault that takes "
               "mmu_lock while the zap yields sees in_progress without its range",
               "the order range_add-then-unmap of kvm_mmu_unmap_gfn_range() (begin/range_add "
               "split for gfn ranges in 6.8; plausible mistake)",
               "W0-kernel-warning / " + _MAPPING),
    PlantedBug("seq_snapshot_after_pfn",
               "the fault snapshots mmu_invalidate_seq after resolving the pfn, not before: an "
               "invalidation that completes between GUP and the snapshot is missed",
               "the snapshot-then-smp_rmb() before every read it guards, in kvm_faultin_pfn() "
               "since ba6e3fe25543 (6.3, per the reference); plausible reordering",
               _MAPPING + " / I11-guest-data-coherence / I6-private-shared-source"),
    # -- the no-memslot optimisation and mn_active_invalidate_count -----------------------------
    PlantedBug("notifier_always_lockless",
               "invalidate_range_start/end elide mmu_lock for every range, as if no memslot "
               "overlapped: no begin/end and no zap, the SPTEs outlive the host mapping",
               "the no-memslot optimisation applied to every range ('KVM: Don't take mmu_lock "
               "for range invalidation unless necessary', 071064f14d87, done wrong)",
               _MAPPING + " / I11-guest-data-coherence / I3-present-leaf-pfn-change",
               interleaving=False),
    PlantedBug("swap_ignores_mn_active_count",
               "kvm_swap_active_memslots() publishes without waiting for mn_active_invalidate_count",
               "'KVM: Block memslot updates across range_start() and range_end()' (52ac8b358b0c)",
               "W0-kernel-warning / I4-swap-while-invalidating / I3-invalidate-counters"),
    PlantedBug("end_forgets_wakeup",
               "invalidate_range_end drops mn_active_invalidate_count to 0 without waking the "
               "memslot update asleep in kvm_swap_active_memslots(): it never publishes",
               "the rcuwait_wake_up() of 52ac8b358b0c ('KVM: Block memslot updates across "
               "range_start() and range_end()'); a lost wake-up",
               "deadlock / I12-fault-progress"),
    # -- SRCU ---------------------------------------------------------------------------------
    PlantedBug("swap_skips_synchronize_srcu",
               "the memslot updater modifies the old set without waiting for SRCU readers",
               "synchronize_srcu_expedited() in kvm_swap_active_memslots() (install_new_memslots "
               "before 5.17)",
               "I4-srcu-reader-saw-change / I5-no-mapping-of-dead-slot"),
    PlantedBug("memslot_lookup_outside_srcu",
               "the vCPU looks up the memslot before entering the guest, outside kvm->srcu, and "
               "its fault handler uses that pointer: a DELETE/MOVE does not wait for it",
               "the rule that memslots are dereferenced only inside kvm->srcu (or under "
               "slots_lock), checked by rcu_dereference_check() in __kvm_memslots(); plausible "
               "mistake of the kind those lockdep checks catch",
               "I4-srcu-reader-saw-change / I5-no-mapping-of-dead-slot"),
    # -- memslot DELETE / MOVE windows, roots ---------------------------------------------------
    PlantedBug("delete_zaps_before_invalid_swap",
               "DELETE/MOVE zaps the slot's SPTEs before publishing the KVM_MEMSLOT_INVALID copy: "
               "a fault that still sees the valid slot maps it again after the zap",
               "the order of kvm_invalidate_memslot(): publish the INVALID slot, wait for SRCU, "
               "then kvm_arch_flush_shadow_memslot() ('From this point no new shadow pages "
               "pointing to a deleted, or moved, memslot will be created'); plausible reordering",
               "I5-no-mapping-of-dead-slot / I4-srcu-reader-saw-change"),
    PlantedBug("invalid_slot_treated_as_noslot",
               "a fault on a KVM_MEMSLOT_INVALID slot is handled as MMIO (no slot) instead of "
               "retried: an MMIO SPTE for a gfn a memslot still covers, possibly replacing a "
               "present SPTE without a TLB flush",
               "'KVM: x86/mmu: Retry page faults that hit an invalid memslot' (e0c378684b65, 5.12)",
               "I15-mmio-generation / I22-flush-before-release"),
    PlantedBug("zap_all_fast_forgets_invalidate",
               "kvm_mmu_zap_all_fast() toggles mmu_valid_gen and requests a reload but does not mark "
               "the TDP MMU roots invalid: vCPUs keep their roots and faults install into roots "
               "that should be obsolete (and nothing is zapped)",
               "kvm_tdp_mmu_invalidate_roots() in kvm_mmu_zap_all_fast() ('KVM: x86/mmu: Fast "
               "invalidation for TDP MMU', b7cccd397f31, and the zap of invalidated roots before "
               "returning, 4c6654bd160d per the reference)",
               "I19-obsolete-root / I5-no-mapping-of-dead-slot", interleaving=False),
    PlantedBug("stale_check_ignores_obsolete_root",
               "is_page_fault_stale() does not retry when the vCPU's root became obsolete after "
               "the fault started: it installs into a root kvm_mmu_zap_all_fast() invalidated",
               "the stale-root retry of is_page_fault_stale() (a955cad84cda per the reference, "
               "5.16)",
               "I19-obsolete-root / I5-no-mapping-of-dead-slot"),
    # -- memory attributes and guest_memfd -----------------------------------------------------
    PlantedBug("attr_pre_skips_head_tail",
               "KVM_SET_MEMORY_ATTRIBUTES does not add the huge frames straddling the range's head "
               "and tail to the invalidation range: a fault on such a frame's other gfns does not "
               "retry and maps it huge over the changing gfns (MIXED is only set by the POST walk)",
               "the head/tail huge frames added to the attribute invalidation range by "
               "kvm_arch_pre_set_memory_attributes() (9129633d568e per the reference, 6.15)",
               "I8-huge-eligibility / I6-private-shared-source / I1-no-mapping-in-closed-range"),
    PlantedBug("gmem_end_before_truncate",
               "guest_memfd PUNCH_HOLE ends the invalidation before truncating the folios: a fault "
               "that snapshots mmu_invalidate_seq after the end maps a folio that is then freed",
               "the begin/zap, truncate, end order of kvm_gmem_punch_hole() (guest_memfd, 6.8); "
               "plausible reordering",
               "I10-freed-pfn-mapped / I2-host-consistency / I11-guest-data-coherence"),
    # -- huge-page level lookups racing invalidations -------------------------------------------
    PlantedBug("recovery_ignores_invalidation",
               "huge-page recovery builds the huge SPTE from a present child, yields mmu_lock, and "
               "installs it after re-taking the lock, ignoring the invalidation that zapped the "
               "children (and let the host change the pages) meanwhile",
               "the -EAGAIN of tdp_mmu_make_huge_spte() before building ('KVM: x86/mmu: Recover "
               "TDP MMU huge page mappings in-place', 13e2e4f62a4b per the reference, 6.13) and "
               "host_pfn_mapping_level()'s rule: hold mmu_lock and know no invalidation is in "
               "progress for the hva",
               _MAPPING + " / I11-guest-data-coherence / I8-huge-eligibility"),
    # -- TLB flushing -------------------------------------------------------------------------
    PlantedBug("zap_yield_without_flush",
               "a TDP MMU zap that yields mmu_lock (tdp_mmu_iter_cond_resched) does not flush the "
               "TLBs first: a vCPU keeps using a zapped translation while the lock is dropped",
               "the flush before yielding in the TDP MMU zap walks (a835429cda91 per the "
               "reference, 5.12)",
               "I22-flush-before-release"),
    PlantedBug("flush_remote_tlbs_noop",
               "kvm_flush_remote_tlbs() and _range() flush nothing (a test device for I22: every "
               "flush is lost, not one)",
               "not a kernel fix: the whole remote-flush primitive removed, for the invariant tests",
               "I22-flush-before-release / I1-no-mapping-in-closed-range / "
               "I5-no-mapping-of-dead-slot", interleaving=False),
    # -- PFN pin release ----------------------------------------------------------------------
    PlantedBug("fault_leaks_page_ref",
               "the fault does not release its page reference (kvm_release_faultin_page)",
               "'KVM: x86/mmu: Put refcounted pages instead of blindly releasing pfns' series (6.13)",
               "I10-pin-leak", interleaving=False),
    PlantedBug("precheck_retry_leaks_page_ref",
               "the unsafe pre-check after resolving the pfn returns RETRY without releasing the "
               "page: every fault that loses that race to an invalidation leaks a reference",
               "kvm_mmu_finish_page_fault(RET_PF_RETRY) on the second "
               "mmu_invalidate_retry_gfn_unsafe() pre-check (6.10+, 6.13 form); plausible omission",
               "I10-pin-leak"),
    # -- lockless fast page fault and dirty logging ---------------------------------------------
    PlantedBug("fast_pf_without_cmpxchg",
               "fast_page_fault() installs the fixed SPTE with a plain store instead of cmpxchg, so "
               "a zap (or any change) made since its lockless read is overwritten",
               "the cmpxchg of fast_pf_fix_direct_spte() since the lockless fast page fault ('KVM: "
               "MMU: fast path of handling guest page fault', X. Guangrong, 3.6) and its rule in "
               "locking.rst (every SPTE change fast PF must not undo is a cmpxchg/xchg)",
               # the overwrite resurrects whatever mapping the change removed: after an attribute
               # conversion a shared page at a now-private gfn (I6), over a frame recovery or a
               # split changed, a leaf the frame no longer allows (I8)
               _MAPPING + " / I11-guest-data-coherence / I5-no-mapping-of-dead-slot / "
               "I6-private-shared-source / I8-huge-eligibility"),
    PlantedBug("fast_pf_marks_dirty_before_cmpxchg",
               "fast_page_fault() marks the gfn dirty before its cmpxchg sets W: a harvest in "
               "between collects the bit and protects nothing, then W is set with the bit clear",
               "mark_page_dirty_in_slot() after the cmpxchg in fast_pf_fix_direct_spte() (fast "
               "page fault, 3.6); plausible reordering",
               "I7-dirty-writable-unlogged / D5-harvest-lost-write"),
    PlantedBug("dirty_log_enable_skips_wrprot",
               "enabling dirty logging splits huge pages and flushes, but does not write-protect "
               "the slot's SPTEs: pages already writable are written without being logged",
               "a plausible omission of kvm_mmu_slot_remove_write_access() in "
               "kvm_mmu_slot_apply_flags() (the flush kept after it is b64d740ea7dd, 'Always flush "
               "TLBs when enabling dirty logging')",
               "I7-dirty-writable-unlogged / D1-huge-in-logged-slot / D5-harvest-lost-write",
               interleaving=False),
    PlantedBug("get_dirty_log_skips_protect",
               "KVM_GET_DIRTY_LOG (and KVM_CLEAR_DIRTY_LOG, through the same arch hook) harvests "
               "the bitmap but does not write-protect the harvested pages, nor split or "
               "write-protect huge ones with INITIALLY_SET (a test device for D5: the next "
               "write is not logged)",
               "plausible omission of kvm_arch_mmu_enable_log_dirty_pt_masked() in "
               "kvm_get_dirty_log_protect()",
               "I7-dirty-writable-unlogged / D5-harvest-lost-write / D1-huge-in-logged-slot",
               interleaving=False),
    # -- MMIO generation ----------------------------------------------------------------------
    PlantedBug("mmio_spte_without_generation",
               "a memslot change does not bump the generation the MMU stamps into MMIO SPTEs and "
               "the MMIO-info cache (and never wraps): a gfn that gets a slot keeps emulating MMIO",
               "MMIO SPTE generations ('KVM: MMU: fast invalidate all mmio sptes', f8f559422b6c "
               "per the previous catalogue, 3.11; 'KVM: Explicitly define the memslot "
               "update-in-progress bit', 5.1)",
               "I15-mmio-generation", interleaving=False),
    PlantedBug("mmio_gen_wrap_not_handled",
               "kvm_arch_memslots_updated() does not zap all SPTEs when the MMIO generation wraps: "
               "an MMIO SPTE stamped before the wrap passes check_mmio_spte() again",
               "the zap-all on a generation wrap in kvm_mmu_invalidate_mmio_sptes() (since MMIO "
               "SPTE generations, 3.11; reworked in the 5.1 MMIO-generation series per the "
               "reference; plausible omission)",
               "I15-mmio-generation", interleaving=False),
    # -- calibration: safe changes, a campaign must find nothing --------------------------------
    PlantedBug("calib_no_unsafe_prechecks",
               "calibration: drop the lockless mmu_invalidate_retry_gfn_unsafe() pre-checks",
               "safe: they are only an optimisation before the locked check", "(none)", True),
    PlantedBug("calib_aging_always_flushes",
               "calibration: clear_flush_young flushes TLBs (x86 elides it)",
               "safe: CONFIG_KVM_ELIDE_TLB_FLUSH_IF_YOUNG only saves work", "(none)", True),
    PlantedBug("calib_no_memslot_optimisation",
               "calibration: every MMU-notifier start/end takes mmu_lock and begins/ends even when "
               "no memslot overlaps (a slot-less start adds an empty gfn range)",
               "safe: the behaviour before 071064f14d87 ('KVM: Don't take mmu_lock for range "
               "invalidation unless necessary'); begin/end stay balanced whatever the slots do",
               "(none)", True),
    PlantedBug("calib_zap_all_on_delete",
               "calibration: memslot DELETE/MOVE zaps every leaf SPTE of every root in place "
               "(kvm_mmu_zap_all(), flushed) instead of the slot's range or kvm_mmu_zap_all_fast()",
               "safe: zapping more than needed under mmu_lock only costs refaults", "(none)",
               True),
)

BY_NAME: Final[dict[str, PlantedBug]] = {b.name: b for b in CATALOGUE}


def lookup(name: str | None) -> PlantedBug | None:
    """The bug called ``name`` (None for the correct model); a clear error for a typo."""
    if name is None or name in ("", "none"):
        return None
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidArgument(f"unknown planted bug {name!r}; known: "
                              f"{', '.join(sorted(BY_NAME))}") from None
