"""The protocol's guarantees as checks: ``check_step(vm)`` after every scheduler step,
``check_quiescent(vm)`` whenever nothing is in flight (and at teardown).

Each check is a pure function of the model state that raises its own ProtocolViolation
subclass; ``STEP_INVARIANTS`` and ``QUIESCENT_INVARIANTS`` list them by title (reference §4).
Scheduler deadlocks (``deadlock``) and bounded-retry failures (``I12-fault-progress``) are
raised by the scheduler and the vCPU loop; a present-leaf pfn change
(``I3-present-leaf-pfn-change``) by ``handle_changed_spte``, as the kernel's BUG() is.
"""

from __future__ import annotations

from kvmfuzz.virt.kvm import Vm

from . import bookkeeping, mapping, structure, x86
from .walk import TableWalk

STEP_INVARIANTS: tuple[str, ...] = (
    "W0-kernel-warning", "I3-invalidate-counters", "I7-mn-active-count",
    "I4-swap-while-invalidating", "I4-srcu-reader-saw-change", "I9-spte-format",
    "I1-no-mapping-in-closed-range", "I2-host-consistency", "I5-no-mapping-of-dead-slot",
    "I6-private-shared-source", "I8-huge-eligibility", "I10-freed-pfn-mapped",
    "I7-dirty-writable-unlogged", "I11-guest-data-coherence",
    # x86 MMU (invariants/x86.py)
    "I20-pt-page-freed-early", "I19-obsolete-root", "I21-writable-trio", "I21-access-track-bits",
    "I15-mmio-generation", "D1-huge-in-logged-slot", "D5-harvest-lost-write",
    "I22-flush-before-release",
)
QUIESCENT_INVARIANTS: tuple[str, ...] = ("I12-quiescent-idle", "I10-pin-leak")


def check_step(vm: Vm) -> None:
    """Every invariant that holds after every atomic step."""
    bookkeeping.check_kernel_warnings(vm)
    bookkeeping.check_invalidate_counters(vm)
    bookkeeping.check_mn_active_count(vm)
    bookkeeping.check_swap_while_invalidating(vm)
    bookkeeping.check_srcu_readers(vm)
    walk = TableWalk(vm)  # the paging structure, walked once for every check that reads it
    structure.check_spte_format(vm, walk)
    x86.check_pt_freed_early(vm, walk)
    x86.check_obsolete_roots(vm)
    leaves = walk.leaves
    mapping.check_freed_pfn_mapped(vm, leaves)
    mapping.check_no_mapping_in_closed_range(vm, leaves)
    mapping.check_no_mapping_of_dead_slot(vm, leaves)
    mapping.check_host_consistency(vm, leaves)
    mapping.check_private_shared_source(vm, leaves)
    mapping.check_huge_eligibility(vm, leaves)
    structure.check_dirty_logging(vm, leaves)
    x86.check_writable_trio(vm, leaves)
    x86.check_access_track_bits(vm, leaves)
    x86.check_mmio_generation(vm, walk)
    x86.check_huge_in_logged_slot(vm, leaves)
    x86.check_harvest_lost_write(vm)
    x86.check_flush_before_release(vm)
    mapping.check_guest_data_coherence(vm)


def check_quiescent(vm: Vm) -> None:
    """Invariants that hold only when no operation is in flight."""
    structure.check_quiescent_idle(vm)
    structure.check_pins_released(vm)
