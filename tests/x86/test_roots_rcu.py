"""Roots (4- and 5-level, refcounts, kvm_mmu_zap_all_fast, obsolete roots) and RCU freeing of
page tables (kvmfuzz/x86/tdp_mmu.py, mmu.py, rcu.py; reference §2.14, §2.16)."""

from __future__ import annotations

import pytest
from x86_helpers import SLOT0, SLOT1, access, do, run_until, spte_of

from kvmfuzz import invariants
from kvmfuzz.config import VmConfig
from kvmfuzz.driver import Driver
from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, mutex_lock
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.mmu import KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, kvm_mmu_zap_all_fast


def zap_all_fast(d: Driver, actor: str) -> None:
    """Run kvm_mmu_zap_all_fast() (under slots_lock) on an idle actor, to completion."""
    vm = d.vm
    a = vm.sched.actor(actor)

    def op() -> Op[None]:
        yield from mutex_lock(vm.slots_lock, a, Point.SLOTS_LOCK)
        yield from kvm_mmu_zap_all_fast(vm, a)
        vm.slots_lock.release(a)
    vm.sched.start(a, "zap_all_fast", op())
    while a.busy:
        d.run_actor(actor)


@pytest.mark.parametrize("root_level", [4, 5])
def test_root_levels_map_and_zap(root_level: int) -> None:
    d = Driver(VmConfig(root_level=root_level), (SLOT0, SLOT1))
    access(d, "vcpu0", 5, write=True)
    access(d, "vcpu1", 0x15)
    root = d.vm.vcpus[0].root
    assert root is not None and root.level == root_level and d.vm.vcpus[1].root is root
    _, level, _, _ = d.vm.vcpus[0].walk_leaf(5)
    assert level == 2
    assert root.root_refcount == 3  # two vCPUs and the MMU
    memslot = {"slot": 1, "as_id": 0, "flags": 0, "gfn": 16, "npages": 0, "hva": 16,
               "gmem_offset": -1}
    assert do(d, "memslot", "vmm0", **memslot) == 0  # DELETE: zap_all_fast
    assert root.role_invalid and not root.freed and root.root_refcount == 2
    assert not any(S.is_shadow_present_pte(s) for s in root.spt)
    access(d, "vcpu0", 5)  # reloads: puts the old root, gets a new one
    assert d.vm.vcpus[0].root is not root and root.root_refcount == 1
    access(d, "vcpu1", 5)
    assert root.freed and root not in d.vm.arch.roots  # freed (through RCU) when unreferenced
    d.finish()


def test_fault_on_obsolete_root_is_stale() -> None:
    """A fault that takes mmu_lock after zap_all_fast invalidated its root retries, reloads."""
    d = Driver(VmConfig(), (SLOT0,))
    access(d, "vcpu0", 5)
    old = d.vm.vcpus[0].root
    d.start("access", "vcpu0", gfn=9, write=False, private=False)
    run_until(d, "vcpu0", Point.FAULT_BEFORE_MMU_LOCK)
    zap_all_fast(d, "vmm1")
    assert KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in d.vm.vcpus[0].requests
    events: list[str] = []
    while d.vm.sched.actor("vcpu0").busy:
        d.run_actor("vcpu0")
        events += d.drain_events()
    assert "fault.retry.obsolete_root" in events
    assert d.vm.vcpus[0].root is not old and old is not None and old.freed
    assert S.is_shadow_present_pte(spte_of(d, 9))


def test_removed_tables_wait_for_rcu_readers() -> None:
    """A fast page fault (an RCU reader) sits between its read and its cmpxchg while
    zap_all_fast removes every table of its root: they are freed only when it leaves."""
    d = Driver(VmConfig(ad_bits=False), (SLOT0,))
    access(d, "vcpu0", 5)
    do(d, "clear_young", "mm0", hva=4, npages=4)
    d.start("access", "vcpu1", gfn=5, write=False, private=False)
    run_until(d, "vcpu1", Point.FAST_PF_CMPXCHG)
    rcu = d.vm.arch.rcu
    assert "vcpu1" in rcu.readers
    zap_all_fast(d, "vmm1")
    removed = list(rcu.callbacks)
    assert removed and not any(sp.freed for sp in removed)
    assert all(sp.removed_at is not None and sp.removed_at > rcu.readers["vcpu1"].entered
               for sp in removed)
    invariants.check_step(d.vm)
    while d.vm.sched.actor("vcpu1").busy:
        d.run_actor("vcpu1")
    assert all(sp.freed for sp in removed) and not rcu.callbacks
    d.finish()


def test_removed_table_without_readers_is_freed_at_once() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    access(d, "vcpu0", 5)
    zap_all_fast(d, "vmm1")
    rcu = d.vm.arch.rcu
    assert not rcu.readers and not rcu.callbacks
