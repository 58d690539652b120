"""The only places where model code yields to the scheduler.

Every interleaving point of the model goes through one of these helpers, so the preemption
points are a closed vocabulary (the ``Point`` enum of kvmfuzz.points) and the scheduler can
reject anything else. Each helper yields one small frozen message:

- ``Preempt(point)``: the operation stops at ``point``; it is runnable again at once.
- ``Block(waitable, point)``: the operation stops at ``point`` and is runnable only when
  ``waitable.ready(actor)``; on resume it takes what it waited for in the same atomic step.

Releasing a lock never yields. Taking a lock yields only when it is unavailable: an
uncontended acquisition merges with the local work before it, which loses no ordering (another
actor can still take the lock first by running at the preceding point, and then this one
blocks here). Points where the kernel has a real window between two lock sections are
explicit ``preempt`` calls. The scheduler knows nothing of KVM: a point is any enum member.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

import attrs

if TYPE_CHECKING:
    from kvmfuzz.sched.locks import Mutex, RcuWait, RwLock, Srcu
    from kvmfuzz.sched.scheduler import Actor


class Waitable(Protocol):
    """Something an actor can block on."""

    def ready(self, actor: Actor) -> bool: ...

    def describe(self) -> str: ...

    def holders(self) -> tuple[Actor, ...]: ...


@attrs.frozen
class Preempt:
    point: enum.Enum


@attrs.frozen
class Block:
    waitable: Waitable
    point: enum.Enum


Message: TypeAlias = Preempt | Block
R = TypeVar("R")
Op: TypeAlias = Generator[Message, None, R]


def preempt(point: enum.Enum) -> Op[None]:
    """Another CPU may run here (an unlocked read, a lock drop, cond_resched, ...)."""
    yield Preempt(point)


def mutex_lock(lock: Mutex, actor: Actor, point: enum.Enum) -> Op[None]:
    """mutex_lock() / spin_lock(): block until free, then own it."""
    waiter = lock.waiter()
    if not waiter.ready(actor):
        yield Block(waiter, point)
    lock.acquire(actor)


def read_lock(lock: RwLock, actor: Actor, point: enum.Enum) -> Op[None]:
    """read_lock(&kvm->mmu_lock)."""
    waiter = lock.read_waiter()
    # unreachable(true): no writer holds mmu_lock across a preemption point (every write section drops it
    #   before yielding: tdp_mmu_yield_lock, TDP_SPLIT_ALLOC), so a reader never finds it write-held
    if not waiter.ready(actor):
        yield Block(waiter, point)
    lock.acquire_read(actor)


def write_lock(lock: RwLock, actor: Actor, point: enum.Enum) -> Op[None]:
    """write_lock(&kvm->mmu_lock)."""
    waiter = lock.write_waiter()
    if not waiter.ready(actor):
        yield Block(waiter, point)
    lock.acquire_write(actor)


def synchronize_srcu(srcu: Srcu, actor: Actor, point: enum.Enum) -> Op[None]:
    """synchronize_srcu(): wait until every reader that entered before this call has left.

    Always a preemption point: a grace period takes time even with no reader to wait for.
    """
    grace = srcu.start_grace_period(actor)
    yield Block(grace, point)
    srcu.end_grace_period(grace)


def rcuwait_schedule(wait: RcuWait, actor: Actor, point: enum.Enum) -> Op[None]:
    """schedule() of a task that set TASK_UNINTERRUPTIBLE on ``wait``: sleep until woken.

    A wake-up that came between set_current_state() and here leaves the task running, so
    this returns without sleeping, as the kernel's does.
    """
    yield Block(wait.sleeper(actor), point)


def call(op: Op[R]) -> Op[R]:
    """Run a sub-operation; spelled ``yield from`` everywhere, this only documents intent."""
    return (yield from op)


def is_message(value: Any) -> bool:
    return isinstance(value, Preempt | Block)
