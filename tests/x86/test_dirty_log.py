"""Dirty logging on x86: enable (split, write-protect, flush), GET, CLEAR with manual protect and
INITIALLY_SET, disable (huge-page recovery) (kvmfuzz/x86/mmu.py, huge.py, virt/dirty.py;
reference §2.9, §2.10, §2.15)."""

from __future__ import annotations

import errno

import pytest
from x86_helpers import SLOT0, access, do, leaf, level_of, set_logging, spte_of

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.virt.dirty import dirty_bit
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES
from kvmfuzz.x86 import spte as S

LOGGED0 = SlotSpec(0, 0, 16, 0, flags=KVM_MEM_LOG_DIRTY_PAGES)


def mapped(config: VmConfig) -> Driver:
    """vcpu0 writes gfn 5 and reads gfn 9: two writable 2M leaves (THP-backed)."""
    d = Driver(config, (SLOT0,))
    access(d, "vcpu0", 5, write=True)
    access(d, "vcpu0", 9)
    assert level_of(d, 5) == 2 and level_of(d, 9) == 2
    return d


def test_enable_splits_write_protects_and_flushes() -> None:
    d = mapped(VmConfig())
    flushes = d.vm.arch.stats_remote_flushes
    assert set_logging(d, "vmm0", SLOT0, True) == 0
    m = d.vm.arch.masks
    for gfn in range(4, 12):
        spte = spte_of(d, gfn)
        assert level_of(d, gfn) == 1
        assert not S.is_writable_pte(spte) and S.is_mmu_writable_spte(m, spte)
    assert d.vm.arch.stats_remote_flushes > flushes and not d.vm.vcpus[0].tlb.entries
    assert set_logging(d, "vmm0", SLOT0, False) == 0  # disable: recovery makes them huge again
    assert level_of(d, 5) == 2 and level_of(d, 9) == 2


def test_get_dirty_log_harvests_and_protects() -> None:
    d = Driver(VmConfig(), (LOGGED0,))
    access(d, "vcpu0", 3, write=True)
    access(d, "vcpu1", 7, write=True)
    harvested = do(d, "get_dirty_log", "vmm0", slot=0)
    assert harvested[0] == (1 << 3) | (1 << 7)
    assert not S.is_writable_pte(spte_of(d, 3)) and not d.vm.vcpus[0].tlb.entries
    assert do(d, "get_dirty_log", "vmm0", slot=0)[0] == 0
    access(d, "vcpu0", 3, write=True)  # fast page fault: W again, bit again
    assert do(d, "get_dirty_log", "vmm0", slot=0)[0] == 1 << 3


def test_manual_protect_clear() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    assert do(d, "enable_manual_protect", "vmm0", initially_set=False) == 0
    assert do(d, "enable_manual_protect", "vmm0", initially_set=True) == -errno.EBUSY
    assert set_logging(d, "vmm0", SLOT0, True) == 0
    access(d, "vcpu0", 3, write=True)
    access(d, "vcpu0", 4, write=True)
    slot = d.vm.memslots[0].slots[0]
    assert do(d, "get_dirty_log", "vmm0", slot=0)[0] == 0b11000  # a copy: nothing cleared
    assert dirty_bit(slot, 3) and S.is_writable_pte(spte_of(d, 3))
    clear = {"slot": 0, "first": 0, "num": 16}
    assert do(d, "clear_dirty_log", "vmm0", mask=1 << 3, **clear) == 0
    assert not dirty_bit(slot, 3) and dirty_bit(slot, 4)
    assert not S.is_writable_pte(spte_of(d, 3)) and S.is_writable_pte(spte_of(d, 4))
    assert do(d, "clear_dirty_log", "vmm0", mask=1 << 3, **clear) == 0  # nothing set: no-op


@pytest.mark.parametrize(("first", "num", "slot", "manual", "expected"), [
    (0, 16, 0, False, -errno.EINVAL),   # needs manual protect
    (8, 8, 0, True, -errno.EINVAL),     # first not 64-aligned
    (0, 8, 0, True, -errno.EINVAL),     # short of the slot's end and not a multiple of 64
    (0, 32, 0, True, -errno.EINVAL),    # past the slot's end
    (0, 16, 3, True, -errno.ENOENT),    # no such slot
    (0, 16, 0, True, 0),
])
def test_clear_dirty_log_arguments(first: int, num: int, slot: int, manual: bool,
                                   expected: int) -> None:
    d = Driver(VmConfig(), (SLOT0,))
    if manual:
        do(d, "enable_manual_protect", "vmm0", initially_set=False)
    set_logging(d, "vmm0", SLOT0, True)
    assert do(d, "clear_dirty_log", "vmm0", slot=slot, first=first, num=num, mask=1) == expected


def test_initially_set_protects_huge_pages_on_clear() -> None:
    d = mapped(VmConfig())
    do(d, "enable_manual_protect", "vmm0", initially_set=True)
    assert set_logging(d, "vmm0", SLOT0, True) == 0
    slot = d.vm.memslots[0].slots[0]
    assert slot.dirty_bitmap == [(1 << 16) - 1]  # every page counts as dirty
    assert level_of(d, 5) == 2 and S.is_writable_pte(spte_of(d, 5))  # enable did nothing
    assert do(d, "clear_dirty_log", "vmm0", slot=0, first=0, num=16, mask=1 << 6) == 0
    m = d.vm.arch.masks
    spte = spte_of(d, 6)  # eager split of the masked range, then 4K write-protected
    assert level_of(d, 6) == 1 and not S.is_writable_pte(spte)
    assert level_of(d, 9) == 2 and S.is_writable_pte(spte_of(d, 9))  # untouched frame
    access(d, "vcpu1", 6, write=True)
    assert dirty_bit(slot, 6) and S.is_writable_pte(spte_of(d, 6, vcpu=1))
    assert S.is_mmu_writable_spte(m, spte_of(d, 6, vcpu=1))


def test_initially_set_without_eager_split_write_protects_the_huge_leaf() -> None:
    d = mapped(VmConfig(eager_split=False))
    do(d, "enable_manual_protect", "vmm0", initially_set=True)
    set_logging(d, "vmm0", SLOT0, True)
    assert do(d, "clear_dirty_log", "vmm0", slot=0, first=0, num=16, mask=1 << 6) == 0
    spte, level, _, _ = leaf(d, 6)
    m = d.vm.arch.masks
    assert level == 2 and not S.is_writable_pte(spte) and not S.is_mmu_writable_spte(m, spte)
    access(d, "vcpu1", 6, write=True)  # the slow path splits and maps 4K
    assert level_of(d, 6, vcpu=1) == 1


def test_planted_enable_skips_wrprot_is_caught() -> None:
    d = mapped(VmConfig(bug="dirty_log_enable_skips_wrprot"))
    with pytest.raises(ProtocolViolation) as info:
        set_logging(d, "vmm0", SLOT0, True)
    assert info.value.title == "I7-dirty-writable-unlogged"
