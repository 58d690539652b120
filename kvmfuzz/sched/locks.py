"""Locks with real blocking semantics, for the cooperative scheduler.

Mutex (``kvm->slots_lock``, ``slots_arch_lock``), SpinLock (``kvm->mn_invalidate_lock``),
RwLock (``kvm->mmu_lock``), Srcu (``kvm->srcu``), RcuWait (``mn_memslots_update_rcuwait``).
Holders are recorded so ``assert_held`` (lockdep_assert_held) can check them and deadlock
reports can name who holds what.

Simplifications: a spinlock blocks like a mutex (the model has no preemption-disabled
state); the rwlock has no writer preference (Linux's qrwlock queues new readers behind a
waiting writer; letting them in only adds schedules that are also reachable with other
timing, so it cannot create a false finding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from kvmfuzz.errors import ModelError

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor


@attrs.define(eq=False)
class _LockWaiter:
    lock: Mutex

    def ready(self, actor: Actor) -> bool:
        return self.lock.owner is None

    def describe(self) -> str:
        return f"{self.lock.name} (held by {self.lock.owner_name()})"

    def holders(self) -> tuple[Actor, ...]:
        return (self.lock.owner,) if self.lock.owner is not None else ()


@attrs.define(eq=False)
class Mutex:
    """A sleeping mutex; ``owner`` is the holding actor."""

    name: str
    owner: Actor | None = None

    def waiter(self) -> _LockWaiter:
        return _LockWaiter(self)

    def acquire(self, actor: Actor) -> None:
        if self.owner is not None:
            raise ModelError(f"{actor.name} took {self.name} held by {self.owner.name}")
        self.owner = actor
        actor.held.append(self.name)

    def release(self, actor: Actor) -> None:
        if self.owner is not actor:
            raise ModelError(f"{actor.name} released {self.name} held by {self.owner_name()}")
        self.owner = None
        actor.held.remove(self.name)

    def is_held_by(self, actor: Actor) -> bool:
        return self.owner is actor

    def assert_held(self, actor: Actor) -> None:
        """lockdep_assert_held()."""
        if self.owner is not actor:
            raise ModelError(f"lockdep: {actor.name} does not hold {self.name}")

    def owner_name(self) -> str:
        return self.owner.name if self.owner is not None else "nobody"


class SpinLock(Mutex):
    """A spinlock; blocks like a mutex in the model."""


@attrs.define(eq=False)
class _RwWaiter:
    lock: RwLock
    write: bool

    def ready(self, actor: Actor) -> bool:
        if self.write:
            return self.lock.writer is None and not self.lock.readers
        return self.lock.writer is None

    def describe(self) -> str:
        mode = "write" if self.write else "read"
        return f"{self.lock.name} for {mode} (held by {self.lock.holder_names()})"

    def holders(self) -> tuple[Actor, ...]:
        if self.lock.writer is not None:
            return (self.lock.writer,)
        return tuple(self.lock.readers) if self.write else ()


@attrs.define(eq=False)
class RwLock:
    """A reader/writer spinlock (x86 ``kvm->mmu_lock``)."""

    name: str
    writer: Actor | None = None
    readers: list[Actor] = attrs.field(factory=list)

    def read_waiter(self) -> _RwWaiter:
        return _RwWaiter(self, False)

    def write_waiter(self) -> _RwWaiter:
        return _RwWaiter(self, True)

    def acquire_read(self, actor: Actor) -> None:
        if self.writer is not None:
            raise ModelError(f"{actor.name} read-locked {self.name} write-held")
        self.readers.append(actor)
        actor.held.append(self.name + ":R")

    def acquire_write(self, actor: Actor) -> None:
        if self.writer is not None or self.readers:
            raise ModelError(f"{actor.name} write-locked busy {self.name}")
        self.writer = actor
        actor.held.append(self.name + ":W")

    def read_unlock(self, actor: Actor) -> None:
        if actor not in self.readers:
            raise ModelError(f"{actor.name} read-unlocked {self.name} it does not hold")
        self.readers.remove(actor)
        actor.held.remove(self.name + ":R")

    def write_unlock(self, actor: Actor) -> None:
        if self.writer is not actor:
            raise ModelError(f"{actor.name} write-unlocked {self.name} it does not hold")
        self.writer = None
        actor.held.remove(self.name + ":W")

    def held_for_write(self, actor: Actor) -> bool:
        return self.writer is actor

    def held_by(self, actor: Actor) -> bool:
        return self.writer is actor or actor in self.readers

    def assert_held(self, actor: Actor) -> None:
        """lockdep_assert_held(&kvm->mmu_lock): read or write."""
        if not self.held_by(actor):
            raise ModelError(f"lockdep: {actor.name} does not hold {self.name}")

    def assert_held_write(self, actor: Actor) -> None:
        """lockdep_assert_held_write(&kvm->mmu_lock)."""
        if self.writer is not actor:
            raise ModelError(f"lockdep: {actor.name} does not hold {self.name} for write")

    def holder_names(self) -> str:
        if self.writer is not None:
            return f"{self.writer.name} (W)"
        if self.readers:
            return ", ".join(f"{r.name} (R)" for r in self.readers)
        return "nobody"


@attrs.define(eq=False)
class SrcuReader:
    """One srcu_read_lock() section: its index is what srcu_read_unlock() is given."""

    idx: int
    actor: Actor


@attrs.define(eq=False)
class GracePeriod:
    """An in-flight synchronize_srcu(): the readers it must wait for."""

    srcu: Srcu
    caller: Actor
    waits_for: tuple[int, ...]

    def ready(self, actor: Actor) -> bool:
        return not any(idx in self.srcu.readers for idx in self.waits_for)

    def describe(self) -> str:
        left = [self.srcu.readers[i].actor.name for i in self.waits_for if i in self.srcu.readers]
        return f"synchronize_srcu({self.srcu.name}) waiting for readers {', '.join(left)}"

    def holders(self) -> tuple[Actor, ...]:
        return tuple(self.srcu.readers[i].actor for i in self.waits_for if i in self.srcu.readers)


@attrs.define(eq=False)
class Srcu:
    """Sleepable RCU: readers never block; synchronize waits for the readers before it."""

    name: str
    readers: dict[int, SrcuReader] = attrs.field(factory=dict)
    next_idx: int = 0
    grace_periods_waited: int = 0

    def read_lock(self, actor: Actor) -> int:
        """srcu_read_lock(): returns the index to pass to read_unlock."""
        idx = self.next_idx
        self.next_idx += 1
        self.readers[idx] = SrcuReader(idx, actor)
        actor.srcu_idx.append(idx)
        return idx

    def read_unlock(self, actor: Actor, idx: int) -> None:
        """srcu_read_unlock()."""
        reader = self.readers.get(idx)
        if reader is None or reader.actor is not actor:
            raise ModelError(f"{actor.name}: srcu_read_unlock({idx}) without its read_lock")
        del self.readers[idx]
        actor.srcu_idx.remove(idx)

    def in_read_section(self, actor: Actor) -> bool:
        return bool(actor.srcu_idx)

    def start_grace_period(self, actor: Actor) -> GracePeriod:
        if actor.srcu_idx:
            raise ModelError(f"{actor.name}: synchronize_srcu inside its own read section")
        return GracePeriod(self, actor, tuple(sorted(self.readers)))

    def end_grace_period(self, grace: GracePeriod) -> None:
        if grace.waits_for:
            self.grace_periods_waited += 1


@attrs.define(eq=False)
class _Sleeper:
    wait: RcuWait
    actor: Actor

    def ready(self, actor: Actor) -> bool:
        return not actor.sleeping

    def describe(self) -> str:
        return f"sleeping on {self.wait.name} (no wake-up yet)"

    def holders(self) -> tuple[Actor, ...]:
        return ()


@attrs.define(eq=False)
class RcuWait:
    """``struct rcuwait``: at most one waiting task, woken by rcuwait_wake_up()."""

    name: str
    task: Actor | None = None

    def prepare(self, actor: Actor) -> None:
        """prepare_to_rcuwait()."""
        if self.task is not None:
            raise ModelError(f"{self.name}: second waiter {actor.name}")
        self.task = actor

    def set_current_state_uninterruptible(self, actor: Actor) -> None:
        """set_current_state(TASK_UNINTERRUPTIBLE)."""
        actor.sleeping = True

    def finish(self, actor: Actor) -> None:
        """finish_rcuwait(): back to TASK_RUNNING, no longer a waiter."""
        self.task = None
        actor.sleeping = False

    def wake_up(self) -> bool:
        """rcuwait_wake_up(): wake the waiter, if any. Returns whether one was there."""
        if self.task is None:
            return False
        self.task.sleeping = False
        return True

    def sleeper(self, actor: Actor) -> _Sleeper:
        return _Sleeper(self, actor)
