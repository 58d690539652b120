"""Per-vCPU TLBs and the flushes KVM issues (arch/x86/kvm/mmu/mmu.c, x86.c).

The "hardware" side of the model: each vCPU caches translations gfn -> (pfn, W, X) per root,
filled by successful guest accesses and dropped only by flushes. KVM's remote flushes
(``kvm_flush_remote_tlbs``, ``kvm_flush_remote_tlbs_range``) make a request on every vCPU and
kick and wait for vCPUs in guest mode; since a guest access is one atomic step in the model,
that is the same as dropping the entries at once, which is what this module does. A flush is
therefore complete before the operation that issued it continues. Batching is the callers':
a walk accumulates "flush needed" and issues one flush before it drops mmu_lock (or yields),
and dirty-log ioctls flush the slot once, after unlocking and before returning.

Ghost: every flush drops the I22 obligations (``X86Ghost.flush_due``) whose TLB entries are
all gone.

Simplification: entries are per 4K gfn even under a huge SPTE, each remembering the huge frame
it came from (``frame``, ``npages``); a range flush drops every entry whose frame overlaps the
range, as invalidating any address of a large-page translation drops the whole translation.
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
    frame: int = -1  # first gfn of the translation (a huge SPTE's frame); -1: gfn itself
    npages: int = 1


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
        def hit(e: TlbEntry) -> bool:
            first = e.gfn if e.frame < 0 else e.frame
            return first < end and start < first + e.npages
        for key in [k for k, e in self.entries.items() if hit(e)]:
            del self.entries[key]

    def flush_root(self, root_id: int) -> None:
        # unreachable(true): a vCPU loads a root only after dropping an obsolete one (or on first use), and an
        #   invalid root never becomes valid again: no TLB entry carries the id of the root it loads
        for key in [k for k in self.entries if k[0] == root_id]:
            del self.entries[key]


def kvm_flush_remote_tlbs(vm: Vm, actor: Actor) -> None:
    """kvm_flush_remote_tlbs(): every vCPU's TLB, complete on return."""
    if vm.bug("flush_remote_tlbs_noop"):
        return
    for vcpu in vm.vcpus:
        vcpu.tlb.flush_all()
    vm.arch.stats_remote_flushes += 1
    prune_flush_due(vm)


def kvm_flush_remote_tlbs_range(vm: Vm, actor: Actor, start: int, npages: int) -> None:
    """kvm_flush_remote_tlbs_range() (and _gfn(gfn, level) with npages = pages(level))."""
    if vm.bug("flush_remote_tlbs_noop"):
        return
    for vcpu in vm.vcpus:
        vcpu.tlb.flush_range(start, start + npages)
    vm.arch.stats_remote_flushes += 1
    prune_flush_due(vm)


def stale_entries(vm: Vm, entries: tuple[tuple[int, TlbEntry], ...]) -> list[tuple[int, TlbEntry]]:
    """Those of ``entries`` (vcpu index, entry object) still cached by their vCPU."""
    out = []
    for vcpu_id, e in entries:
        cached = vm.vcpus[vcpu_id].tlb.entries.get((e.root_id, e.gfn))
        if cached is e:
            out.append((vcpu_id, e))
    return out


def prune_flush_due(vm: Vm) -> None:
    """Ghost: forget the I22 obligations a flush has met."""
    ghost = vm.arch.ghost
    if ghost.flush_due:
        ghost.flush_due = [d for d in ghost.flush_due if stale_entries(vm, d.entries)]
