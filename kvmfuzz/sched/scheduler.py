"""A cooperative scheduler of generator actors (the "CPUs" of the model).

An actor is a named thread of control (``vcpu0``, ``mm0``, ``vmm0``) that runs one operation
at a time: a generator built from the helpers of ``traps``. One *step* resumes one runnable
actor until its next yield; steps are atomic. The trace records (actor, operation, point
reached) for every step.

``step(pick)``: the runnable actors, the actor that ran last first (if it is runnable), the
rest in their stable order; ``pick`` indexes that list modulo its length. So pick 0 means
"the last actor keeps running", and a schedule of zeros has no context switches: Hypothesis,
which shrinks integers toward 0, thereby shrinks toward the fewest preemptions.

When no actor can run while some are busy, ``step`` raises ``Deadlock`` with the waits-for
description of every blocked actor (a cycle through lock holders, or a sleeper nobody wakes).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import attrs

from kvmfuzz.errors import Deadlock, InvalidArgument, ModelError
from kvmfuzz.sched.traps import Block, Message, Op, Preempt


@attrs.define(eq=False)
class Actor:
    """A thread of control. ``held`` / ``srcu_idx`` are lock bookkeeping kept by sched.locks."""

    name: str
    order: int
    kind: str
    op_name: str | None = None
    gen: Op[Any] | None = None
    pending: Message | None = None
    started: bool = False
    sleeping: bool = False
    held: list[str] = attrs.field(factory=list)
    srcu_idx: list[int] = attrs.field(factory=list)
    on_done: Callable[[Any], None] | None = None
    ops_done: int = 0

    @property
    def busy(self) -> bool:
        return self.gen is not None

    def where(self) -> str:
        if self.gen is None:
            return "idle"
        if self.pending is None:
            return f"{self.op_name} (not started)"
        return f"{self.op_name} @ {self.pending.point.name}"


@attrs.frozen
class TraceStep:
    """One scheduler step: who ran, in which operation, and where it stopped ("DONE" at the end)."""

    actor: str
    op: str
    reached: str
    preempted: str | None  # the actor that was switched away from, if this was a switch

    def __str__(self) -> str:
        return f"{self.actor} {self.op} → {self.reached}"


@attrs.define(eq=False)
class Scheduler:
    actors: list[Actor] = attrs.field(factory=list)
    last: Actor | None = None
    trace: list[TraceStep] = attrs.field(factory=list)
    steps: int = 0
    switches: int = 0

    def add_actor(self, name: str, kind: str) -> Actor:
        if any(a.name == name for a in self.actors):
            raise InvalidArgument(f"actor {name!r} exists already")
        actor = Actor(name=name, order=len(self.actors), kind=kind)
        self.actors.append(actor)
        return actor

    def actor(self, name: str) -> Actor:
        for a in self.actors:
            if a.name == name:
                return a
        raise InvalidArgument(f"no actor {name!r}; actors: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [a.name for a in self.actors]

    def start(self, actor: Actor, op_name: str, gen: Op[Any],
              on_done: Callable[[Any], None] | None = None) -> None:
        """Give an idle actor an operation; it runs only when picked."""
        if actor.gen is not None:
            raise InvalidArgument(f"{actor.name} is busy with {actor.where()}")
        actor.op_name, actor.gen, actor.pending, actor.started = op_name, gen, None, False
        actor.on_done = on_done

    @staticmethod
    def is_runnable(actor: Actor) -> bool:
        if actor.gen is None:
            return False
        msg = actor.pending
        if msg is None or isinstance(msg, Preempt):
            return True
        return msg.waitable.ready(actor)

    def runnable(self) -> list[Actor]:
        """Runnable actors: the last one first (if runnable), then by stable order."""
        ready = [a for a in self.actors if self.is_runnable(a)]
        if self.last is not None and self.last in ready:
            ready.remove(self.last)
            ready.insert(0, self.last)
        return ready

    def contended(self, lock: object) -> bool:
        """Is some actor blocked waiting for ``lock``? (rwlock_needbreak / spin_needbreak)."""
        return any(isinstance(a.pending, Block) and getattr(a.pending.waitable, "lock", None) is lock
                   for a in self.actors if a.gen is not None)

    def busy(self) -> list[Actor]:
        return [a for a in self.actors if a.gen is not None]

    def quiescent(self) -> bool:
        return not any(a.gen is not None for a in self.actors)

    def choose(self, pick: int) -> Actor:
        ready = self.runnable()
        if not ready:
            self.raise_deadlock()
        return ready[pick % len(ready)]

    def step(self, pick: int = 0) -> TraceStep:
        return self.step_actor(self.choose(pick))

    def step_actor(self, actor: Actor) -> TraceStep:
        """Resume ``actor`` until its next yield (one atomic step)."""
        if not self.is_runnable(actor):
            raise InvalidArgument(f"{actor.name} is not runnable ({actor.where()})")
        assert actor.gen is not None and actor.op_name is not None
        preempted = None
        if self.last is not None and self.last is not actor and self.last.gen is not None:
            preempted = self.last.name
            self.switches += 1
        self.last = actor
        self.steps += 1
        op_name = actor.op_name
        actor.pending = None  # consumed: a running actor waits for nothing (contended())
        try:
            msg = next(actor.gen)
        except StopIteration as stop:
            self._finish(actor, stop.value)
            step = TraceStep(actor.name, op_name, "DONE", preempted)
        else:
            if not isinstance(msg, Preempt | Block):
                raise ModelError(
                    f"{actor.name}: operation {op_name} yielded {msg!r}; model code must "
                    "yield only through sched.traps (a missing 'yield from'?)")
            actor.pending, actor.started = msg, True
            step = TraceStep(actor.name, op_name, msg.point.name, preempted)
        self.trace.append(step)
        return step

    def _finish(self, actor: Actor, result: Any) -> None:
        if actor.held or actor.srcu_idx or actor.sleeping:
            raise ModelError(
                f"{actor.name}: {actor.op_name} returned holding {actor.held or ''} "
                f"srcu {actor.srcu_idx or ''}{' (sleeping)' if actor.sleeping else ''}")
        on_done = actor.on_done
        actor.gen, actor.pending, actor.op_name, actor.on_done = None, None, None, None
        actor.ops_done += 1
        # unreachable(false): every caller (Driver.start, Driver._setup_slot, real/model_backend) passes an
        #   on_done callback
        if on_done is not None:
            on_done(result)

    def raise_deadlock(self) -> None:
        lines = []
        for a in self.busy():
            msg = a.pending
            if isinstance(msg, Block):
                holders = ", ".join(h.name for h in msg.waitable.holders()) or "-"
                lines.append(f"{a.name} in {a.op_name} @ {msg.point.name}: waits for "
                             f"{msg.waitable.describe()} [holders: {holders}]")
            else:
                lines.append(f"{a.name}: {a.where()}")
        raise Deadlock("no actor can run; " + "; ".join(lines))

    def next_round_robin(self) -> Actor:
        """The first runnable actor after the last one in stable order (fair; used by teardown)."""
        ready = [a for a in self.actors if self.is_runnable(a)]
        if not ready:
            self.raise_deadlock()
        after = self.last.order if self.last is not None else -1
        later = [a for a in ready if a.order > after]
        return later[0] if later else ready[0]

    def next_for_teardown(self, switch_at: frozenset[enum.Enum]) -> Actor:
        """Teardown's choice: keep the last actor running (no switch) unless it cannot run or
        has stopped at one of ``switch_at`` (e.g. a vCPU re-entering after a handled fault, which
        may be spinning on a retry); then the next runnable actor in stable order."""
        last = self.last
        if (last is not None and self.is_runnable(last)
                and not (isinstance(last.pending, Preempt) and last.pending.point in switch_at)):
            return last
        return self.next_round_robin()

    def run_to_completion(self, max_steps: int = 100_000) -> None:
        """Run every busy actor to the end, round robin (so a retrying fault cannot starve
        the invalidation it waits for)."""
        for _ in range(max_steps):
            if self.quiescent():
                return
            self.step_actor(self.next_round_robin())
        raise ModelError(f"not quiescent after {max_steps} steps: "
                         + "; ".join(a.where() for a in self.busy()))
