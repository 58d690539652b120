"""Driving the model step by step in tests (no Hypothesis): the slots most tests use, and
running one actor alone to the end of its operation, to a point, or while it can run.
Shared by tests/test_invariants.py and tests/x86 (``pythonpath = ["tests"]`` in pyproject)."""

from __future__ import annotations

from typing import Any

from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.points import Point

SLOT0 = SlotSpec(0, 0, 16, 0)  # gfn [0, 16) at hva HVA_BASE + [0, 16): huge-page aligned
SLOT1 = SlotSpec(1, 16, 16, 16)  # gfn [16, 32)


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
