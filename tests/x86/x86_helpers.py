"""Small helpers for the x86 model tests: run operations through the Driver, look at SPTEs."""

from __future__ import annotations

from typing import Any

# re-exported for the x86 tests
from driving import SLOT0 as SLOT0
from driving import SLOT1 as SLOT1
from driving import run_op as run_op
from driving import run_until as run_until
from driving import run_while_runnable as run_while_runnable

from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.virt.kvm import KVM_MEM_LOG_DIRTY_PAGES
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import KvmMmuPage
from kvmfuzz.x86.vcpu import AccessResult

HVA = 0x40000


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
