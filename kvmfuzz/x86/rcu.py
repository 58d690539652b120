"""RCU for TDP MMU page-table pages (kernel/rcu, as arch/x86/kvm/mmu/tdp_mmu.c uses it).

The TDP MMU frees a page table that ``handle_removed_pt`` (or ``kvm_tdp_mmu_put_root``) took out
of the paging structure with ``call_rcu(tdp_mmu_free_sp_rcu_callback)``: only after every
``rcu_read_lock`` section that could have seen it has ended. Lockless walkers (fast page fault,
lockless aging) and every TDP walk under mmu_lock hold ``rcu_read_lock`` while they look at
SPTEs, and the model lets them span preemption points, so a removed table must stay allocated
while such a walker may still read or cmpxchg its entries.

Model: a ghost clock orders events. ``read_lock`` records when the outermost section of an actor
began; ``call_rcu`` stamps the page with the clock (``removed_at``) and queues it; ``reclaim``
frees every queued page whose grace period is over (no reader that entered before its removal
is still inside). Reclaim runs as soon as it may: at ``call_rcu`` and at every outermost
``read_unlock`` (the latest reader of a grace period leaving ends it). Freeing as early as the
rules allow is the adversarial choice: a later free can only hide a use-after-free, never
create one. ``freed`` keeps the recently freed pages for the invariant
``I20-pt-page-freed-early`` (pruned once no reader predates them).

Simplifications: one global RCU flavour, no callbacks other than page-table frees, no
``rcu_barrier``; the read-side sections nest per actor (``rcu_read_lock`` inside a section
is a counter, as in the kernel).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from kvmfuzz.errors import ModelError

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor
    from kvmfuzz.virt.kvm import Vm
    from kvmfuzz.x86.tdp_mmu import KvmMmuPage


@attrs.define(eq=False)
class RcuReader:
    """One actor's (possibly nested) read-side critical section."""

    actor: str
    depth: int
    entered: int  # ghost clock at the outermost rcu_read_lock()


@attrs.define(eq=False)
class Rcu:
    """The RCU state the TDP MMU relies on: readers and pending page-table frees."""

    clock: int = 0
    readers: dict[str, RcuReader] = attrs.field(factory=dict)
    callbacks: list[KvmMmuPage] = attrs.field(factory=list)  # call_rcu()'d, not yet freed
    freed: list[KvmMmuPage] = attrs.field(factory=list)  # ghost: recently freed, for I20

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def read_lock(self, actor: Actor) -> None:
        """rcu_read_lock()."""
        reader = self.readers.get(actor.name)
        # unreachable(false): no model path nests rcu_read_lock(): each read-side section (fast PF, map, zap,
        #   split, recovery, aging, dirty-log protection) is opened and closed in one function
        if reader is None:
            self.readers[actor.name] = RcuReader(actor.name, 1, self.tick())
        else:
            reader.depth += 1

    def read_unlock(self, vm: Vm, actor: Actor) -> None:
        """rcu_read_unlock(); the outermost one may end grace periods (reclaim)."""
        reader = self.readers.get(actor.name)
        if reader is None:
            raise ModelError(f"{actor.name}: rcu_read_unlock() outside a read-side section")
        reader.depth -= 1
        # unreachable(false): no model path nests rcu_read_lock(): each read-side section (fast PF, map, zap,
        #   split, recovery, aging, dirty-log protection) is opened and closed in one function
        if reader.depth == 0:
            del self.readers[actor.name]
            self.reclaim(vm)

    def in_read_section(self, actor: Actor) -> bool:
        return actor.name in self.readers

    def readers_before(self, when: int | None) -> list[RcuReader]:
        """Readers still inside a section that began before ``when`` (None: any reader)."""
        return [r for _, r in sorted(self.readers.items())
                if when is None or r.entered < when]

    def call_rcu(self, vm: Vm, sp: KvmMmuPage) -> None:
        """call_rcu(&sp->rcu_head, tdp_mmu_free_sp_rcu_callback)."""
        if sp.removed_at is not None or sp.freed:
            raise ModelError(f"call_rcu twice on {sp.describe()}")
        sp.removed_at = self.tick()
        self.callbacks.append(sp)
        self.reclaim(vm)

    def reclaim(self, vm: Vm) -> None:
        """Run every callback whose grace period has elapsed (the RCU core's softirq)."""
        done = [sp for sp in self.callbacks if not self.readers_before(sp.removed_at)]
        if done:
            from kvmfuzz.x86.tdp_mmu import tdp_mmu_free_sp
            self.callbacks = [sp for sp in self.callbacks if sp not in done]
            for sp in done:
                tdp_mmu_free_sp(vm, sp)  # tdp_mmu_free_sp_rcu_callback()
        self.freed = [sp for sp in self.freed if self.readers_before(sp.removed_at)]

    def note_freed(self, sp: KvmMmuPage) -> None:
        """Ghost: ``sp`` was just freed (by reclaim, or directly if it was never published)."""
        # unreachable(true): a published table is freed only by reclaim(), once no reader predates its
        #   removal; direct frees (a lost link, an unused split table) are of tables never published
        if sp.published and self.readers_before(sp.removed_at):
            self.freed.append(sp)
