"""The configuration of one modelled VM (drawn by the machine's @initialize, stored in corpus files)."""

from __future__ import annotations

from typing import Any

import attrs

from kvmfuzz.errors import InvalidArgument
from kvmfuzz.x86.geometry import Geometry


@attrs.frozen
class VmConfig:
    """What a VM looks like: vCPUs, paging geometry, knobs, and the planted bug (None = correct).

    ``level_bits``: fan-out of the paging tree (9 in the kernel; small in campaigns, see
    x86/geometry.py). ``ad_bits``: EPT A/D bits enabled (kvm_ad_enabled). ``thp``: the host
    backs aligned ranges with transparent huge pages on first touch. ``private_mem``: the VM
    type supports private memory (KVM_X86_SW_PROTECTED_VM: attributes + guest_memfd).
    ``nr_as``: memslot address spaces (2 with SMM). ``slot_zap_all``: the
    KVM_X86_QUIRK_SLOT_ZAP_ALL quirk (memslot DELETE/MOVE zaps everything via zap_all_fast).
    ``mmio_gen_bits``: width of the MMIO SPTE generation (19 in the kernel; narrower to reach
    the wrap, the reference's width knob).
    """

    nr_vcpus: int = 2
    nr_as: int = 1
    level_bits: int = 2
    root_level: int = 4
    ad_bits: bool = True
    thp: bool = True
    private_mem: bool = False
    slot_zap_all: bool = True
    eager_split: bool = True
    manual_protect: bool = False
    initially_set: bool = False
    mmio_gen_bits: int = 19
    max_fault_retries: int = 64
    bug: str | None = None

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.nr_vcpus <= 4:
            raise InvalidArgument(f"nr_vcpus {self.nr_vcpus}: expected 1..4")
        if self.nr_as not in (1, 2):
            raise InvalidArgument(f"nr_as {self.nr_as}: expected 1 or 2")
        if not 1 <= self.mmio_gen_bits <= 19:
            raise InvalidArgument(f"mmio_gen_bits {self.mmio_gen_bits}: expected 1..19")
        Geometry(self.level_bits, self.root_level)  # validates

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.level_bits, self.root_level)

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VmConfig:
        names = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidArgument(f"unknown config keys {unknown}; known: {sorted(names)}")
        return cls(**data)
