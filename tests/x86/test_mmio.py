"""MMIO SPTEs, memslot generations and the vCPU MMIO-info cache (kvmfuzz/x86/fault.py, mmu.py;
reference §2.5, §2.8 W7, §3.3)."""

from __future__ import annotations

import pytest
from x86_helpers import SLOT0, access, do, spte_of

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.x86 import spte as S

NEW = SlotSpec(2, 0x20, 4, 0x20)


def create(d: Driver, spec: SlotSpec) -> int:
    result = do(d, "memslot", "vmm0", slot=spec.slot, as_id=0, flags=spec.flags,
                gfn=spec.base_gfn, npages=spec.npages, hva=spec.hva_offset, gmem_offset=-1)
    assert isinstance(result, int)
    return result


def test_mmio_spte_and_cache() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    gen = d.vm.memslots[0].generation
    assert access(d, "vcpu0", 0x20).outcome == "mmio"
    spte = spte_of(d, 0x20)
    m = d.vm.arch.masks
    assert S.is_mmio_spte(m, spte) and S.get_mmio_spte_gfn(m, spte) == 0x20
    assert S.get_mmio_spte_generation(spte) == gen & S.MMIO_SPTE_GEN_MASK
    vcpu = d.vm.vcpus[0]
    assert (vcpu.mmio_gfn, vcpu.mmio_gen) == (0x20, gen)  # cached by the no-slot fault
    events: list[str] = []
    d.start("access", "vcpu0", gfn=0x20, write=True, private=False)
    while d.vm.sched.actor("vcpu0").busy:
        d.run_actor("vcpu0")
        events += d.drain_events()
    assert d.results[-1][2].outcome == "mmio" and "fault.mmio_cache_hit" in events


def test_new_slot_makes_mmio_spte_stale() -> None:
    d = Driver(VmConfig(), (SLOT0,))
    access(d, "vcpu0", 0x20)
    assert create(d, NEW) == 0
    stale = spte_of(d, 0x20)
    assert S.is_mmio_spte(d.vm.arch.masks, stale)  # still there, but its generation is old
    assert d.vm.vcpus[0].mmio_gen != d.vm.memslots[0].generation
    events: list[str] = []
    d.start("access", "vcpu0", gfn=0x20, write=True, private=False)
    while d.vm.sched.actor("vcpu0").busy:
        d.run_actor("vcpu0")
        events += d.drain_events()
    assert d.results[-1][2].outcome == "ok" and "fault.mmio_gen_miss" in events
    assert S.is_shadow_present_pte(spte_of(d, 0x20))


def test_generation_wrap_zaps_everything() -> None:
    """With a 2-bit MMIO generation the 4th memslot update wraps it: kvm_mmu_zap_all_fast()."""
    d = Driver(VmConfig(mmio_gen_bits=2), (SLOT0,))
    access(d, "vcpu0", 0x20)
    root = d.vm.vcpus[0].root
    events: list[str] = []
    for i in range(4):
        spec = SlotSpec(2 + i % 2, 0x40 + 8 * i, 4, 0x40 + 8 * i)
        create(d, spec)
        events += d.drain_events()
        if "mmio_gen.wrap" in events:
            break
        do(d, "memslot", "vmm0", slot=spec.slot, as_id=0, flags=0, gfn=spec.base_gfn, npages=0,
           hva=spec.hva_offset, gmem_offset=-1)
        events += d.drain_events()
        if "mmio_gen.wrap" in events:
            break
    assert "mmio_gen.wrap" in events
    assert root is not None and root.role_invalid
    assert not any(S.is_shadow_present_pte(s) for s in root.spt)


def test_planted_mmio_spte_without_generation_is_caught() -> None:
    d = Driver(VmConfig(bug="mmio_spte_without_generation"), (SLOT0,))
    access(d, "vcpu0", 0x20)
    with pytest.raises(ProtocolViolation) as info:
        create(d, NEW)
    assert info.value.title == "I15-mmio-generation"
