"""Per-vCPU TLBs and the flushes KVM issues (arch/x86/kvm/mmu/mmu.c, x86.c).

The "hardware" side of the model: each vCPU caches translations gfn -> (pfn, W, X) per root,
filled by successful guest accesses and dropped only by flushes. KVM's remote flushes
(``kvm_flush_remote_tlbs``, ``kvm_flush_remote_tlbs_range``) make a request on every vCPU and
kick and wait for vCPUs in guest mode; since a guest access is one atomic step in the model,
that is the same as dropping the entries at once, which is what this module does. A flush is
therefore complete before the operation that issued it continues.

Simplification: entries are per 4K gfn even under a huge SPTE (a huge TLB entry is equivalent
to its 4K pieces for every invariant: flushes drop any entry overlapping their range).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm
    from kvmfuzz.x86.tdp_mmu import Source


@attrs.frozen
class TlbEntry:
    root_id: int
    gfn: int
    pfn: int
    writable: bool
    executable: bool
    source: Source | None


@attrs.define(eq=False)
class Tlb:
    entries: dict[tuple[int, int], TlbEntry] = attrs.field(factory=dict)  # (root id, gfn)

    def lookup(self, root_id: int, gfn: int) -> TlbEntry | None:
        return self.entries.get((root_id, gfn))

    def fill(self, entry: TlbEntry) -> None:
        self.entries[(entry.root_id, entry.gfn)] = entry

    def flush_all(self) -> None:
        self.entries.clear()

    def flush_range(self, start: int, end: int) -> None:
        for key in [k for k in self.entries if start <= k[1] < end]:
            del self.entries[key]

    def flush_root(self, root_id: int) -> None:
        for key in [k for k in self.entries if k[0] == root_id]:
            del self.entries[key]


def kvm_flush_remote_tlbs(vm: Vm, actor: Actor) -> None:
    """kvm_flush_remote_tlbs(): every vCPU's TLB, complete on return."""
    if vm.bug("flush_remote_tlbs_noop"):
        return
    for vcpu in vm.vcpus:
        vcpu.tlb.flush_all()
    vm.arch.stats_remote_flushes += 1


def kvm_flush_remote_tlbs_range(vm: Vm, actor: Actor, start: int, npages: int) -> None:
    """kvm_flush_remote_tlbs_range() (and _gfn(gfn, level) with npages = pages(level))."""
    if vm.bug("flush_remote_tlbs_noop"):
        return
    for vcpu in vm.vcpus:
        vcpu.tlb.flush_range(start, start + npages)
    vm.arch.stats_remote_flushes += 1
