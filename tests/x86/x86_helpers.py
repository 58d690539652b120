"""Small helpers for the x86 model tests: run operations through the Driver, look at SPTEs."""

from __future__ import annotations

from typing import Any

from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.points import Point
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import KvmMmuPage
from kvmfuzz.x86.vcpu import AccessResult

SLOT0 = SlotSpec(0, 0, 16, 0)  # gfn [0, 16) at hva HVA_BASE + [0, 16): huge-page aligned
SLOT1 = SlotSpec(1, 16, 16, 16)
HVA = 0x40000


def run_op(d: Driver, actor: str) -> Any:
    """Run ``actor`` alone until its operation returns; its result."""
    a = d.vm.sched.actor(actor)
    assert a.busy, f"{actor} has nothing to do"
    while a.busy:
        assert d.vm.sched.is_runnable(a), f"{actor} blocked: {a.where()}"
        d.run_actor(actor)
    name, _, result = d.results[-1]
    assert name == actor
    return result


def run_until(d: Driver, actor: str, point: Point) -> None:
    """Step ``actor`` alone until it stops at ``point``."""
    a = d.vm.sched.actor(actor)
    while True:
        assert a.busy, f"{actor} finished before reaching {point.name}"
        d.run_actor(actor)
        if a.pending is not None and a.pending.point is point:
            return


def run_while_runnable(d: Driver, actor: str) -> None:
    a = d.vm.sched.actor(actor)
    while a.busy and d.vm.sched.is_runnable(a):
        d.run_actor(actor)


def do(d: Driver, op: str, actor: str, **args: Any) -> Any:
    d.start(op, actor, **args)
    return run_op(d, actor)


def access(d: Driver, vcpu: str, gfn: int, write: bool = False) -> AccessResult:
    result = do(d, "access", vcpu, gfn=gfn, write=write, private=False)
    assert isinstance(result, AccessResult)
    return result


def set_logging(d: Driver, actor: str, spec: SlotSpec, on: bool) -> Any:
    flags = (spec.flags | KVM_MEM_LOG_DIRTY_PAGES) if on else (spec.flags & ~KVM_MEM_LOG_DIRTY_PAGES)
    return do(d, "memslot", actor, slot=spec.slot, as_id=0, flags=flags, gfn=spec.base_gfn,
              npages=spec.npages, hva=spec.hva_offset, gmem_offset=spec.gmem_offset)


def leaf(d: Driver, gfn: int, vcpu: int = 0) -> tuple[int, int, KvmMmuPage | None, int]:
    """The hardware walk from ``vcpu``'s root: (spte, level, table, index)."""
    return d.vm.vcpus[vcpu].walk_leaf(gfn)


def spte_of(d: Driver, gfn: int, vcpu: int = 0) -> int:
    return leaf(d, gfn, vcpu)[0]


def level_of(d: Driver, gfn: int, vcpu: int = 0) -> int:
    spte, level, _, _ = leaf(d, gfn, vcpu)
    assert S.is_shadow_present_pte(spte)
    return level


def points(d: Driver, actor: str) -> list[str]:
    return [s.reached or "" for s in d.steps if s.do == "run" and s.actor == actor]
