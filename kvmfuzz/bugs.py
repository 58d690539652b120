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
