"""Invariants on the invalidation and memslot bookkeeping (reference §4.2, §4.3).

| name | checks |
|---|---|
| I3-invalidate-counters | in_progress ≥ 0 and equals begins without end; the range hull covers every open window's ranges; seq moves by one per end |
| I4-swap-while-invalidating | a memslot set was published with mn_active_invalidate_count ≠ 0 |
| I4-srcu-reader-saw-change | a memslot set or slot an SRCU reader still uses was changed or freed |
| I7-mn-active-count | mn_active_invalidate_count equals the notifier calls between their S1 and E2 |
| W0-kernel-warning | a kernel WARN_ON / KVM_BUG_ON fired |
"""

from __future__ import annotations

from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.units import INVALID_GPA
from kvmfuzz.virt.kvm import Vm


class InvalidateCounters(ProtocolViolation):
    title = "I3-invalidate-counters"


class SwapWhileInvalidating(ProtocolViolation):
    title = "I4-swap-while-invalidating"


class SrcuReaderSawChange(ProtocolViolation):
    title = "I4-srcu-reader-saw-change"


class MnActiveCount(ProtocolViolation):
    title = "I7-mn-active-count"


class KernelWarning(ProtocolViolation):
    title = "W0-kernel-warning"


def check_invalidate_counters(vm: Vm) -> None:
    n = vm.mmu_invalidate_in_progress
    if n < 0 or n != vm.ghost.begun:
        raise InvalidateCounters(f"mmu_invalidate_in_progress = {n} but {vm.ghost.begun} "
                                 f"invalidations have begun and not ended; "
                                 f"{vm.describe_invalidation()}")
    history = vm.ghost.seq_history
    if vm.mmu_invalidate_seq != len(history) or any(
            b != a + 1 for a, b in zip([0, *history], history, strict=False)):
        raise InvalidateCounters(f"mmu_invalidate_seq = {vm.mmu_invalidate_seq} after "
                                 f"{len(history)} invalidate_end calls")
    if n == 0:
        return
    rs, re_ = vm.mmu_invalidate_range_start, vm.mmu_invalidate_range_end
    for w in vm.ghost.windows:
        if not w.began or w.ended:
            continue
        for r in w.gfns:
            if rs == INVALID_GPA or not (rs <= r.start and r.end <= re_):
                raise InvalidateCounters(
                    f"{w.kind} window #{w.serial} of {w.actor} added {r} but the range is "
                    f"{'INVALID' if rs == INVALID_GPA else f'[{rs:#x}, {re_:#x})'}; "
                    f"{vm.describe_invalidation()}")


def check_mn_active_count(vm: Vm) -> None:
    open_mn = sum(1 for w in vm.ghost.windows if w.kind == "mn" and w.phase != "started")
    count = vm.mn_active_invalidate_count
    # Between S1 (count++) and E2 (count--) a window is past "started"; at "started" it may or
    # may not have incremented yet, so the count lies in [open_mn, open_mn + started].
    started = sum(1 for w in vm.ghost.windows if w.kind == "mn" and w.phase == "started")
    if not open_mn <= count <= open_mn + started:
        raise MnActiveCount(f"mn_active_invalidate_count = {count} with {open_mn} notifier "
                            f"calls between start and end (+{started} starting)")


def check_swap_while_invalidating(vm: Vm) -> None:
    count, vm.ghost.last_swap_count = vm.ghost.last_swap_count, 0
    if count:
        raise SwapWhileInvalidating(
            f"kvm_swap_active_memslots() published a memslot set with "
            f"mn_active_invalidate_count = {count}: an invalidate_range_start that found no slot "
            f"can now be followed by an end that finds one (unbalanced begin/end)")


def check_srcu_readers(vm: Vm) -> None:
    for name, views in sorted(vm.ghost.srcu_views.items()):
        for slots, version in views:
            if slots.version != version:
                raise SrcuReaderSawChange(
                    f"{name} is inside its SRCU read section using memslot set "
                    f"as{slots.as_id}/{slots.node_idx} (generation {slots.generation:#x}) that "
                    f"was modified under it (version {version} -> {slots.version}): the updater "
                    "did not wait for SRCU readers")
    for vcpu in vm.vcpus:
        fault = vcpu.fault
        if fault is not None and fault.slot is not None and fault.slot.freed:
            raise SrcuReaderSawChange(f"{vcpu.name}'s fault on gfn {fault.gfn:#x} uses "
                                      f"{fault.slot.describe()}: freed inside its SRCU section")


def check_kernel_warnings(vm: Vm) -> None:
    if vm.ghost.warnings:
        raise KernelWarning("WARN_ON fired: " + "; ".join(vm.ghost.warnings))
    if vm.killed is not None:
        raise KernelWarning(f"KVM_BUG_ON: {vm.killed}")
