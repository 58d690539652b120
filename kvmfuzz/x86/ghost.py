"""Ghost bookkeeping of the x86 MMU: what the invariants of invariants/x86.py need to know.

The kernel keeps none of this. The model writes it at the step it describes and never reads it
back in modelled kernel code (``Vm.ghost`` is the generic counterpart).

- ``flush_due`` (I22): translations a TLB may still cache after a present leaf in a valid root
  was zapped or lost MMU-writable; each names the actor that must flush them before it drops
  mmu_lock (or, for dirty-log protection, before its ioctl returns).
- ``pending_marks`` (D3/D5): a fast page fault between its cmpxchg that set W and its
  ``mark_page_dirty_in_slot`` (the legitimate window of reference §2.4).
- ``invalid_root_installs`` / ``must_be_obsolete`` (I19): new mappings installed in an invalid
  root, and the roots every completed ``kvm_mmu_zap_all_fast`` had to invalidate.
- ``written`` / ``lost_writes`` (D5): "written since harvest" per logged slot, and harvests
  that reported a page clean although it was written since the previous harvest.
- ``recovering``: the frame an in-flight huge-page recovery is about to rebuild (for messages
  and for the machine's protocol-aware choice of what to race against it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from kvmfuzz.x86.tlb import TlbEntry


@attrs.frozen
class FlushDue:
    """TLB entries that must be gone once ``actor`` releases mmu_lock (or its op returns)."""

    actor: str
    ops_done: int  # the actor's Actor.ops_done when recorded: "this operation"
    at_return: bool  # dirty-log protection: the ioctl flushes after unlocking, before returning
    root_id: int
    gfn: int
    level: int
    what: str
    entries: tuple[tuple[int, TlbEntry], ...]  # (vcpu index, the entry object)


@attrs.define(eq=False)
class X86Ghost:
    flush_due: list[FlushDue] = attrs.field(factory=list)
    pending_marks: set[tuple[int, int]] = attrs.field(factory=set)  # (slot serial, gfn)
    invalid_root_installs: list[str] = attrs.field(factory=list)
    must_be_obsolete: set[int] = attrs.field(factory=set)  # root ids
    written: dict[int, set[int]] = attrs.field(factory=dict)  # slot serial -> gfns
    lost_writes: list[str] = attrs.field(factory=list)
    recovering: dict[str, tuple[int, int, int]] = attrs.field(factory=dict)  # actor -> (as, gfn, L)
