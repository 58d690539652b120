"""TDP MMU aging: ``kvm_age_gfn`` / ``kvm_test_age_gfn`` (arch/x86/kvm/mmu/tdp_mmu.c).

Lockless (CONFIG_KVM_MMU_LOCKLESS_AGING, ~6.15): under RCU, valid roots only, present leaves in
the range: with A/D bits clear A atomically; without, make the SPTE access-tracked
(``mark_spte_for_access_track``). No TLB flush on x86 (the flush is elided).
Simplification: each slot's walk is one atomic step (the RCU walk has no preemption point
in this model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmfuzz.sched.traps import Op
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import for_each_tdp_pte, tdp_mmu_set_spte_atomic

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm
    from kvmfuzz.virt.notifier import KvmGfnRange


def __kvm_tdp_mmu_age_gfn_range(vm: Vm, rng: KvmGfnRange, test_only: bool) -> bool:
    """__kvm_tdp_mmu_age_gfn_range()."""
    m = vm.arch.masks
    young = False
    for root in [r for r in vm.arch.roots if not r.role_invalid and r.as_id == rng.slot.as_id]:
        for it in for_each_tdp_pte(vm, root, rng.start, rng.end, 1):
            if (not S.is_shadow_present_pte(it.old_spte) or not S.is_last_spte(it.old_spte, it.level)
                    or not S.is_accessed_spte(m, it.old_spte)):
                continue
            if test_only:
                return True
            young = True
            new = S.mark_spte_for_access_track(m, it.old_spte)
            if new != it.old_spte:
                tdp_mmu_set_spte_atomic(vm, it, new)  # a lost race leaves it young: fine
                vm.ghost.event("spte.age")
    return young


def kvm_age_gfn(vm: Vm, actor: Actor, rng: KvmGfnRange) -> Op[bool]:
    """kvm_age_gfn() (x86, TDP MMU part)."""
    return __kvm_tdp_mmu_age_gfn_range(vm, rng, False)
    yield  # pragma: no cover  (a generator with no preemption point)


def kvm_test_age_gfn(vm: Vm, actor: Actor, rng: KvmGfnRange) -> Op[bool]:
    """kvm_test_age_gfn() (x86, TDP MMU part)."""
    return __kvm_tdp_mmu_age_gfn_range(vm, rng, True)
    yield  # pragma: no cover
