"""TDP MMU aging: ``kvm_age_gfn`` / ``kvm_test_age_gfn`` (arch/x86/kvm/mmu/tdp_mmu.c).

Lockless (CONFIG_KVM_MMU_LOCKLESS_AGING, 6.15+): no mmu_lock; under RCU, for every valid root of
the slot's address space (``for_each_valid_tdp_mmu_root_rcu``, no reference taken), every
present leaf in the range that is accessed: ``test_young`` reports it and stops; otherwise
``kvm_tdp_mmu_age_spte``: with A/D bits, atomically clear A (``tdp_mmu_clear_spte_bits_atomic``,
on whatever the SPTE holds by then); without, make the SPTE access-tracked with a bare cmpxchg
(``__tdp_mmu_set_spte_atomic``; losing the race leaves it young). No TLB flush on x86 (elided).

The walk is interleavable per SPTE: ``AGE_SPTE`` sits between reading an accessed leaf and
updating it, so faults, zaps, splits and fast page faults run in between. RCU keeps the tables
it walks allocated even if they are removed meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, preempt
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import (
    TdpIter,
    __tdp_mmu_set_spte_atomic,
    for_each_tdp_pte,
    tdp_mmu_clear_spte_bits_atomic,
)

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm
    from kvmfuzz.virt.notifier import KvmGfnRange


def kvm_tdp_mmu_age_spte(vm: Vm, it: TdpIter) -> None:
    """kvm_tdp_mmu_age_spte(): clear A, or make the SPTE access-tracked (A/D disabled)."""
    m = vm.arch.masks
    if S.spte_ad_enabled(it.old_spte):
        tdp_mmu_clear_spte_bits_atomic(it, m.accessed_mask)
    else:
        new = S.mark_spte_for_access_track(m, it.old_spte)
        if not __tdp_mmu_set_spte_atomic(vm, it, new):
            vm.ghost.event("spte.age.lost")
            return  # it is safe for the cmpxchg to fail: the SPTE stays young
    vm.ghost.event("spte.age")


def __kvm_tdp_mmu_age_gfn_range(vm: Vm, actor: Actor, rng: KvmGfnRange,
                                test_only: bool) -> Op[bool]:
    """__kvm_tdp_mmu_age_gfn_range()."""
    m = vm.arch.masks
    rcu = vm.arch.rcu
    young = False
    rcu.read_lock(actor)  # guard(rcu)()
    try:
        for root in list(vm.arch.roots):  # list_for_each_entry_rcu
            if root.as_id != rng.slot.as_id or root.role_invalid:
                continue
            for it in for_each_tdp_pte(vm, root, rng.start, rng.end, 1):
                if (not S.is_shadow_present_pte(it.old_spte)
                        or not S.is_last_spte(it.old_spte, it.level)
                        or not S.is_accessed_spte(m, it.old_spte)):
                    continue
                if test_only:
                    return True
                young = True
                yield from preempt(Point.AGE_SPTE)
                kvm_tdp_mmu_age_spte(vm, it)
    finally:
        rcu.read_unlock(vm, actor)
    return young


def kvm_age_gfn(vm: Vm, actor: Actor, rng: KvmGfnRange) -> Op[bool]:
    """kvm_age_gfn() (x86, TDP MMU part)."""
    return (yield from __kvm_tdp_mmu_age_gfn_range(vm, actor, rng, False))


def kvm_test_age_gfn(vm: Vm, actor: Actor, rng: KvmGfnRange) -> Op[bool]:
    """kvm_test_age_gfn() (x86, TDP MMU part)."""
    return (yield from __kvm_tdp_mmu_age_gfn_range(vm, actor, rng, True))
