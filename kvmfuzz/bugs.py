"""The catalogue of planted bugs: named variants of the model, each one wrong step.

Select one with ``VmConfig(bug=NAME)`` (pytest ``--kvmfuzz-bug``, the machine's ``make_machine``).
The model tests ``vm.bug(NAME)`` at exactly the step the variant changes. ``calibration``
variants are *safe* changes: a campaign against them must find nothing.
"""

from __future__ import annotations

import attrs

from kvmfuzz.errors import InvalidArgument


@attrs.frozen
class PlantedBug:
    name: str
    summary: str
    mirrors: str  # the kernel fix (title, id where known) or the plausible mistake
    caught_by: str  # the invariant expected to fire
    calibration: bool = False


CATALOGUE: tuple[PlantedBug, ...] = (
    PlantedBug("skip_is_page_fault_stale",
               "the fault installs its SPTE without is_page_fault_stale() under mmu_lock",
               "the mmu_notifier_retry() check every fault path has had since 2.6.27-era KVM "
               "(e.g. 'KVM: MMU: fix race in ... mmu_notifier_retry', and direct_page_fault's "
               "locking fix 47b0c2e4c220)",
               "I1-no-mapping-in-closed-range / I2-host-consistency"),
    PlantedBug("retry_ignores_in_progress",
               "mmu_invalidate_retry_gfn() compares the seq but ignores in_progress and the range",
               "the in-progress half of mmu_invalidate_retry_gfn(); 'KVM: Use gfn instead of hva "
               "for mmu_notifier_retry' (8569992d64b8) and the original mmu_notifier_count test",
               "I1-no-mapping-in-closed-range"),
    PlantedBug("swap_ignores_mn_active_count",
               "kvm_swap_active_memslots() publishes without waiting for mn_active_invalidate_count",
               "'KVM: Block memslot updates across range_start() and range_end()' (52ac8b358b0c)",
               "W0-kernel-warning (in_progress underflow) / I4-swap-while-invalidating"),
    PlantedBug("notifier_always_lockless",
               "invalidate_range_start walks slots and zaps without taking mmu_lock or beginning",
               "the no-memslot optimisation applied to every range ('KVM: Take mmu_lock when "
               "handling MMU notifier iff the hva hits a memslot', 071064f14d87, done wrong)",
               "I1-no-mapping-in-closed-range"),
    PlantedBug("swap_skips_synchronize_srcu",
               "the memslot updater modifies the old set without waiting for SRCU readers",
               "synchronize_srcu_expedited() in kvm_swap_active_memslots()",
               "I4-srcu-reader-saw-change"),
    PlantedBug("fault_leaks_page_ref",
               "the fault does not release its page reference (kvm_release_faultin_page)",
               "'KVM: x86/mmu: Put refcounted pages instead of blindly releasing pfns' series (6.13)",
               "I10-pin-leak"),
    # -- x86 MMU (issue 3) --
    PlantedBug("fast_pf_without_cmpxchg",
               "fast_page_fault() installs the fixed SPTE with a plain store instead of cmpxchg, so "
               "a zap (or any change) made since its lockless read is overwritten",
               "the cmpxchg of fast_pf_fix_direct_spte() since the lockless fast page fault ('KVM: "
               "MMU: fast path of handling guest page fault', X. Guangrong, 3.6) and its rule in "
               "locking.rst (every SPTE change fast PF must not undo is a cmpxchg/xchg)",
               "I1-no-mapping-in-closed-range / I2-host-consistency / I10-freed-pfn-mapped / "
               "I11-guest-data-coherence / I5-no-mapping-of-dead-slot"),
    PlantedBug("dirty_log_enable_skips_wrprot",
               "enabling dirty logging splits huge pages and flushes, but does not write-protect "
               "the slot's SPTEs: pages already writable are written without being logged",
               "a plausible omission of kvm_mmu_slot_remove_write_access() in "
               "kvm_mmu_slot_apply_flags() (the flush kept after it is b64d740ea7dd, 'Always flush "
               "TLBs when enabling dirty logging')",
               "I7-dirty-writable-unlogged / D1-huge-in-logged-slot / D5-harvest-lost-write"),
    PlantedBug("recovery_ignores_invalidation",
               "huge-page recovery builds the huge SPTE from a present child, yields mmu_lock, and "
               "installs it after re-taking the lock, ignoring the invalidation that zapped the "
               "children (and let the host change the pages) meanwhile",
               "the -EAGAIN of tdp_mmu_make_huge_spte() before building (13e2e4f62a4b, 6.13 'Recover "
               "TDP MMU huge page mappings in-place') and host_pfn_mapping_level()'s rule: hold "
               "mmu_lock and know no invalidation is in progress for the hva",
               "I1-no-mapping-in-closed-range / I2-host-consistency / I10-freed-pfn-mapped / "
               "I11-guest-data-coherence / I8-huge-eligibility"),
    PlantedBug("zap_all_fast_forgets_invalidate",
               "kvm_mmu_zap_all_fast() toggles mmu_valid_gen and requests a reload but does not mark "
               "the TDP MMU roots invalid: vCPUs keep their roots and faults install into roots "
               "that should be obsolete (and nothing is zapped)",
               "kvm_tdp_mmu_invalidate_roots() in kvm_mmu_zap_all_fast() ('KVM: x86/mmu: Add TDP "
               "MMU support for fast zapping of all SPTEs' b7cccd397f31, and 'Zap invalidated "
               "roots ... before returning' 4c6654bd160d)",
               "I19-obsolete-root / I5-no-mapping-of-dead-slot"),
    PlantedBug("mmio_spte_without_generation",
               "a memslot change does not bump the generation the MMU stamps into MMIO SPTEs and "
               "the MMIO-info cache (and never wraps): a gfn that gets a slot keeps emulating MMIO",
               "MMIO SPTE generations ('KVM: MMU: fast invalidate all mmio sptes' f8f559422b6c, "
               "3.11; 'KVM: Explicitly define the memslot update-in-progress bit', 5.1)",
               "I15-mmio-generation"),
    PlantedBug("calib_no_unsafe_prechecks",
               "calibration: drop the lockless mmu_invalidate_retry_gfn_unsafe() pre-checks",
               "safe: they are only an optimisation before the locked check", "(none)", True),
    PlantedBug("calib_aging_always_flushes",
               "calibration: clear_flush_young flushes TLBs (x86 elides it)",
               "safe: CONFIG_KVM_ELIDE_TLB_FLUSH_IF_YOUNG only saves work", "(none)", True),
)

BY_NAME = {b.name: b for b in CATALOGUE}


def lookup(name: str | None) -> PlantedBug | None:
    """The bug called ``name`` (None for the correct model); a clear error for a typo."""
    if name is None or name in ("", "none"):
        return None
    try:
        return BY_NAME[name]
    except KeyError:
        raise InvalidArgument(f"unknown planted bug {name!r}; known: "
                              f"{', '.join(sorted(BY_NAME))}") from None
