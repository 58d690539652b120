"""Blocking semantics of the model's locks under the cooperative scheduler."""

from __future__ import annotations

import enum

import pytest

from kvmfuzz.errors import Deadlock, InvalidArgument, ModelError
from kvmfuzz.sched.locks import Mutex, RcuWait, RwLock, SpinLock, Srcu
from kvmfuzz.sched.scheduler import Actor, Scheduler
from kvmfuzz.sched.traps import (
    Block,
    Op,
    mutex_lock,
    preempt,
    rcuwait_schedule,
    read_lock,
    synchronize_srcu,
    write_lock,
)


class P(enum.Enum):
    LOCK = "take the lock"
    CS = "inside the critical section"
    READ = "read_lock"
    WRITE = "write_lock"
    SYNC = "synchronize_srcu"
    ENTERED = "inside an srcu read section"
    ARMED = "TASK_UNINTERRUPTIBLE set, schedule() not yet called"
    SLEEP = "schedule()"
    WAKE = "waker ready"


def sched(*names: str) -> tuple[Scheduler, list[Actor]]:
    s = Scheduler()
    return s, [s.add_actor(n, "t") for n in names]


def critical(lock: Mutex, actor: Actor, n: int = 1) -> Op[None]:
    """Take ``lock``, stop ``n`` times inside, release."""
    yield from mutex_lock(lock, actor, P.LOCK)
    for _ in range(n):
        yield from preempt(P.CS)
    lock.release(actor)


# -- Mutex / SpinLock -----------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Mutex, SpinLock])
def test_blocked_actor_is_not_runnable_until_release(cls: type[Mutex]) -> None:
    s, (a, b) = sched("a", "b")
    m = cls("m")
    s.start(a, "crit", critical(m, a, 2))
    s.start(b, "crit", critical(m, b))
    assert s.step_actor(a).reached == "CS"  # the lock was free: taken without a stop at LOCK
    assert m.owner is a and a.held == ["m"]
    assert s.runnable() == [a, b]  # b has not tried yet
    assert s.step_actor(b).reached == "LOCK"  # b @ LOCK: blocked from now on
    assert s.runnable() == [a]
    assert isinstance(b.pending, Block) and b.pending.point is P.LOCK
    assert not Scheduler.is_runnable(b)
    assert m.owner is a and b.held == []
    s.step_actor(a)  # a @ CS again, still holding
    assert s.runnable() == [a]
    assert s.step_actor(a).reached == "DONE"  # releases m
    assert m.owner is None and a.held == []
    assert s.runnable() == [b]
    assert s.step_actor(b).reached == "CS"  # resumes at LOCK and takes m in the same step
    assert m.owner is b
    assert [t.reached for t in s.trace if t.actor == "b"] == ["LOCK", "CS"]


def test_mutex_misuse_is_a_model_error() -> None:
    _, (a, b) = sched("a", "b")
    m = Mutex("m")
    with pytest.raises(ModelError, match="a released m held by nobody"):
        m.release(a)
    m.acquire(a)
    with pytest.raises(ModelError, match="b took m held by a"):
        m.acquire(b)
    with pytest.raises(ModelError, match="b released m held by a"):
        m.release(b)
    assert m.is_held_by(a) and not m.is_held_by(b)


def test_mutex_assert_held() -> None:
    _, (a, b) = sched("a", "b")
    m = Mutex("slots_lock")
    with pytest.raises(ModelError, match="lockdep: a does not hold slots_lock"):
        m.assert_held(a)
    m.acquire(a)
    m.assert_held(a)
    with pytest.raises(ModelError, match="lockdep: b does not hold slots_lock"):
        m.assert_held(b)


def test_waiter_describes_the_holder() -> None:
    _, (a,) = sched("a")
    m = Mutex("m")
    w = m.waiter()
    assert w.describe() == "m (held by nobody)" and w.holders() == ()
    m.acquire(a)
    assert w.describe() == "m (held by a)" and w.holders() == (a,)
    assert not w.ready(a)


# -- RwLock ---------------------------------------------------------------------------------

def reader(lock: RwLock, actor: Actor, n: int = 1) -> Op[None]:
    yield from read_lock(lock, actor, P.READ)
    for _ in range(n):
        yield from preempt(P.CS)
    lock.read_unlock(actor)


def writer(lock: RwLock, actor: Actor, n: int = 1) -> Op[None]:
    yield from write_lock(lock, actor, P.WRITE)
    for _ in range(n):
        yield from preempt(P.CS)
    lock.write_unlock(actor)


def test_readers_share_the_lock() -> None:
    s, (r1, r2) = sched("r1", "r2")
    lk = RwLock("mmu_lock")
    s.start(r1, "read", reader(lk, r1))
    s.start(r2, "read", reader(lk, r2))
    for actor in (r1, r2):
        assert s.step_actor(actor).reached == "CS"  # neither waits for the other
    assert lk.readers == [r1, r2]
    assert lk.holder_names() == "r1 (R), r2 (R)"
    assert r1.held == ["mmu_lock:R"]
    s.run_to_completion()
    assert lk.readers == [] and lk.writer is None


def test_writer_excludes_readers_and_writers() -> None:
    s, (w, r, w2) = sched("w", "r", "w2")
    lk = RwLock("mmu_lock")
    s.start(w, "write", writer(lk, w, 2))
    s.start(r, "read", reader(lk, r))
    s.start(w2, "write", writer(lk, w2))
    s.step_actor(w)  # w holds it for write
    assert lk.writer is w and lk.holder_names() == "w (W)"
    assert s.step_actor(r).reached == "READ"
    assert s.step_actor(w2).reached == "WRITE"
    assert s.runnable() == [w]  # r and w2 are both blocked
    assert lk.readers == [] and lk.writer is w
    s.step_actor(w)
    assert s.runnable() == [w]
    s.step_actor(w)  # DONE: write_unlock
    assert s.runnable() == [r, w2]
    s.step_actor(r)  # r takes it for read: w2 is blocked again
    assert lk.readers == [r] and s.runnable() == [r]
    s.run_to_completion()
    assert lk.writer is None and not lk.readers


def test_waiting_writer_does_not_block_new_readers() -> None:
    s, (r1, w, r2) = sched("r1", "w", "r2")
    lk = RwLock("mmu_lock")
    s.start(r1, "read", reader(lk, r1, 2))
    s.start(w, "write", writer(lk, w))
    s.start(r2, "read", reader(lk, r2))
    s.step_actor(r1)  # r1 holds it for read
    assert s.step_actor(w).reached == "WRITE"  # w waits
    assert not Scheduler.is_runnable(w)
    # r2 takes it for read at once: a waiting writer does not block it (no writer preference)
    assert s.step_actor(r2).reached == "CS"
    assert lk.readers == [r1, r2]
    assert not Scheduler.is_runnable(w)
    s.step_actor(r1)
    s.step_actor(r1)  # r1 done; r2 still reads
    assert lk.readers == [r2] and not Scheduler.is_runnable(w)
    s.step_actor(r2)  # r2 done
    assert Scheduler.is_runnable(w)
    s.run_to_completion()


def test_rwlock_assert_held() -> None:
    _, (a, b) = sched("a", "b")
    lk = RwLock("mmu_lock")
    with pytest.raises(ModelError, match="lockdep: a does not hold mmu_lock"):
        lk.assert_held(a)
    with pytest.raises(ModelError, match="lockdep: a does not hold mmu_lock for write"):
        lk.assert_held_write(a)
    lk.acquire_read(a)
    lk.assert_held(a)
    assert lk.held_by(a) and not lk.held_for_write(a)
    with pytest.raises(ModelError, match="for write"):
        lk.assert_held_write(a)
    with pytest.raises(ModelError, match="b does not hold"):
        lk.assert_held(b)
    lk.read_unlock(a)
    lk.acquire_write(b)
    lk.assert_held(b)
    lk.assert_held_write(b)
    with pytest.raises(ModelError, match="a does not hold mmu_lock for write"):
        lk.assert_held_write(a)


def test_rwlock_misuse_is_a_model_error() -> None:
    _, (a, b) = sched("a", "b")
    lk = RwLock("mmu_lock")
    with pytest.raises(ModelError, match="read-unlocked"):
        lk.read_unlock(a)
    with pytest.raises(ModelError, match="write-unlocked"):
        lk.write_unlock(a)
    lk.acquire_read(a)
    with pytest.raises(ModelError, match="b write-locked busy mmu_lock"):
        lk.acquire_write(b)
    lk.read_unlock(a)
    lk.acquire_write(a)
    with pytest.raises(ModelError, match="b read-locked mmu_lock write-held"):
        lk.acquire_read(b)


# -- when taking a lock yields ---------------------------------------------------------------

def take_kind(kind: str, lk: Mutex | RwLock, actor: Actor, n: int = 1) -> Op[None]:
    """Take ``lk`` as ``kind`` ("mutex", "read", "write"), stop ``n`` times at CS, release."""
    if kind == "mutex":
        assert isinstance(lk, Mutex)
        return critical(lk, actor, n)
    assert isinstance(lk, RwLock)
    return reader(lk, actor, n) if kind == "read" else writer(lk, actor, n)


LOCK_POINT = {"mutex": "LOCK", "read": "READ", "write": "WRITE"}


def new_lock(kind: str) -> Mutex | RwLock:
    return Mutex("m") if kind == "mutex" else RwLock("mmu_lock")


def holds(lk: Mutex | RwLock, actor: Actor) -> bool:
    return lk.is_held_by(actor) if isinstance(lk, Mutex) else lk.held_by(actor)


@pytest.mark.parametrize("kind", ["mutex", "read", "write"])
def test_uncontended_acquire_does_not_yield(kind: str) -> None:
    s, (a,) = sched("a")
    lk = new_lock(kind)
    s.start(a, "op", take_kind(kind, lk, a))
    t = s.step_actor(a)
    assert t.reached == "CS"  # the free lock was taken inside the step, no stop before it
    assert holds(lk, a)
    assert s.step_actor(a).reached == "DONE"
    assert [t.reached for t in s.trace] == ["CS", "DONE"]
    assert LOCK_POINT[kind] not in [t.reached for t in s.trace]
    assert not holds(lk, a) and a.held == []


@pytest.mark.parametrize(("first", "second"), [
    ("mutex", "mutex"), ("write", "read"), ("write", "write"), ("read", "write"),
])
def test_contended_acquire_blocks_at_the_lock_point_until_release(first: str, second: str) -> None:
    s, (a, b) = sched("a", "b")
    lk = new_lock(first)
    s.start(a, "hold", take_kind(first, lk, a, 2))
    s.start(b, "want", take_kind(second, lk, b))
    assert s.step_actor(a).reached == "CS"  # uncontended
    t = s.step_actor(b)
    assert t.reached == LOCK_POINT[second]  # contended: a Block at the lock point
    assert isinstance(b.pending, Block) and b.pending.point.name == LOCK_POINT[second]
    assert not holds(lk, b) and b.held == []
    assert not Scheduler.is_runnable(b) and s.runnable() == [a]
    with pytest.raises(InvalidArgument, match="b is not runnable"):
        s.step_actor(b)
    assert s.step_actor(a).reached == "CS"  # a still holds it: b still blocked
    assert not Scheduler.is_runnable(b)
    assert s.step_actor(a).reached == "DONE"  # released
    assert Scheduler.is_runnable(b)
    assert s.step_actor(b).reached == "CS"  # takes it as it resumes, no second stop
    assert holds(lk, b)
    assert [t.reached for t in s.trace if t.actor == "b"] == [LOCK_POINT[second], "CS"]
    s.run_to_completion()
    assert not holds(lk, b)


def test_waiter_that_loses_the_race_after_release_blocks_again() -> None:
    """A released lock goes to whoever runs first; the woken waiter re-checks and waits on."""
    s, (a, b, c) = sched("a", "b", "c")
    m = Mutex("m")
    s.start(a, "crit", critical(m, a))
    s.start(b, "crit", critical(m, b))
    s.step_actor(a)
    assert s.step_actor(b).reached == "LOCK"
    assert s.step_actor(a).reached == "DONE"
    assert Scheduler.is_runnable(b)
    s.start(c, "crit", critical(m, c))
    assert s.step_actor(c).reached == "CS"  # c finds m free and takes it without a stop
    assert m.owner is c
    assert not Scheduler.is_runnable(b) and s.runnable() == [c]
    assert s.step_actor(c).reached == "DONE"
    assert s.step_actor(b).reached == "CS" and m.owner is b
    s.run_to_completion()


def test_resumed_waiter_does_not_count_as_contending() -> None:
    """step_actor consumes the pending Block: inside the critical section it has just entered,
    the former waiter is not "someone waiting for the lock" (rwlock_needbreak)."""
    s, (w, r) = sched("w", "r")
    lk = RwLock("mmu_lock")
    seen: list[bool] = []

    def read_and_look() -> Op[None]:
        yield from read_lock(lk, r, P.READ)
        seen.append(s.contended(lk))
        yield from preempt(P.CS)
        lk.read_unlock(r)

    s.start(w, "write", writer(lk, w))
    s.start(r, "read", read_and_look())
    s.step_actor(w)
    assert s.step_actor(r).reached == "READ"
    assert s.contended(lk)
    assert s.step_actor(w).reached == "DONE"
    assert s.step_actor(r).reached == "CS"
    assert seen == [False]
    s.run_to_completion()


# -- Srcu -----------------------------------------------------------------------------------

def srcu_reader(srcu: Srcu, actor: Actor, n: int) -> Op[None]:
    idx = srcu.read_lock(actor)
    for _ in range(n):
        yield from preempt(P.ENTERED)
    srcu.read_unlock(actor, idx)


def syncer(srcu: Srcu, actor: Actor) -> Op[None]:
    yield from synchronize_srcu(srcu, actor, P.SYNC)


def test_synchronize_waits_for_readers_that_entered_before_it() -> None:
    s, (r1, g, r2) = sched("r1", "g", "r2")
    srcu = Srcu("kvm->srcu")
    s.start(r1, "reader", srcu_reader(srcu, r1, 2))
    s.start(g, "sync", syncer(srcu, g))
    s.step_actor(r1)  # r1 inside (idx 0)
    assert srcu.in_read_section(r1)
    s.step_actor(g)  # grace period starts: waits for r1
    assert not Scheduler.is_runnable(g)
    assert isinstance(g.pending, Block)
    assert g.pending.waitable.describe() == "synchronize_srcu(kvm->srcu) waiting for readers r1"
    assert g.pending.waitable.holders() == (r1,)
    # a reader entering after synchronize_srcu started is not waited for
    s.start(r2, "reader", srcu_reader(srcu, r2, 5))
    s.step_actor(r2)
    assert srcu.in_read_section(r2)
    s.step_actor(r1)
    assert not Scheduler.is_runnable(g)  # r1 still inside
    s.step_actor(r1)  # r1 leaves
    assert Scheduler.is_runnable(g)
    assert srcu.in_read_section(r2)
    assert s.step_actor(g).reached == "DONE"
    assert srcu.grace_periods_waited == 1
    s.run_to_completion()


def test_synchronize_without_readers_does_not_wait() -> None:
    s, (g,) = sched("g")
    srcu = Srcu("kvm->srcu")
    s.start(g, "sync", syncer(srcu, g))
    assert s.step_actor(g).reached == "SYNC"  # a grace period is always a preemption point
    assert Scheduler.is_runnable(g)
    s.step_actor(g)
    assert s.quiescent() and srcu.grace_periods_waited == 0


def test_synchronize_waits_for_every_earlier_reader() -> None:
    s, (r1, r2, g) = sched("r1", "r2", "g")
    srcu = Srcu("kvm->srcu")
    s.start(r1, "reader", srcu_reader(srcu, r1, 1))
    s.start(r2, "reader", srcu_reader(srcu, r2, 1))
    s.start(g, "sync", syncer(srcu, g))
    s.step_actor(r1)
    s.step_actor(r2)
    s.step_actor(g)
    s.step_actor(r2)  # r2 leaves first: r1 is still inside
    assert not Scheduler.is_runnable(g)
    s.step_actor(r1)
    assert Scheduler.is_runnable(g)


def test_srcu_misuse_is_a_model_error() -> None:
    _, (a, b) = sched("a", "b")
    srcu = Srcu("kvm->srcu")
    idx = srcu.read_lock(a)
    with pytest.raises(ModelError, match="synchronize_srcu inside its own read section"):
        srcu.start_grace_period(a)
    with pytest.raises(ModelError, match=rf"b: srcu_read_unlock\({idx + 1}\) without"):
        srcu.read_unlock(b, idx + 1)
    srcu.read_unlock(a, idx)
    with pytest.raises(ModelError, match="without its read_lock"):
        srcu.read_unlock(a, idx)
    assert srcu.readers == {} and a.srcu_idx == []


def test_wrong_actor_srcu_unlock_leaves_the_reader_inside() -> None:
    _, (a, b) = sched("a", "b")
    srcu = Srcu("kvm->srcu")
    idx = srcu.read_lock(a)
    with pytest.raises(ModelError, match=rf"b: srcu_read_unlock\({idx}\) without its read_lock"):
        srcu.read_unlock(b, idx)
    assert idx in srcu.readers  # a is still inside its read section
    srcu.read_unlock(a, idx)


def test_srcu_deadlock_when_the_reader_waits_for_the_syncer() -> None:
    s, (r, g) = sched("r", "g")
    srcu = Srcu("kvm->srcu")
    m = Mutex("slots_arch_lock")

    def sync_holding() -> Op[None]:
        yield from mutex_lock(m, g, P.LOCK)
        yield from synchronize_srcu(srcu, g, P.SYNC)
        m.release(g)

    def read_then_lock() -> Op[None]:
        idx = srcu.read_lock(r)
        yield from preempt(P.ENTERED)  # inside the read section, m not yet asked for
        yield from mutex_lock(m, r, P.LOCK)
        m.release(r)
        srcu.read_unlock(r, idx)

    s.start(g, "sync", sync_holding())
    s.start(r, "read", read_then_lock())
    assert s.step_actor(r).reached == "ENTERED"  # r inside srcu
    assert s.step_actor(g).reached == "SYNC"  # g took m (free); synchronize_srcu waits for r
    assert m.owner is g
    assert s.step_actor(r).reached == "LOCK"  # r blocks on m
    assert s.runnable() == []  # r waits for m, g waits for r
    with pytest.raises(Deadlock) as info:
        s.step(0)
    assert "waiting for readers r [holders: r]" in str(info.value)
    assert "slots_arch_lock (held by g) [holders: g]" in str(info.value)


# -- RcuWait --------------------------------------------------------------------------------

def sleeper(wait: RcuWait, actor: Actor, cond: list[bool]) -> Op[bool]:
    """The kernel's rcuwait_wait_event() loop, with a preemption between arming and sleeping."""
    wait.prepare(actor)
    slept = False
    while not cond[0]:
        wait.set_current_state_uninterruptible(actor)
        yield from preempt(P.ARMED)
        if cond[0]:
            break
        slept = True
        yield from rcuwait_schedule(wait, actor, P.SLEEP)
    wait.finish(actor)
    return slept


def waker(wait: RcuWait, cond: list[bool], woke: list[bool]) -> Op[None]:
    yield from preempt(P.WAKE)
    cond[0] = True
    woke.append(wait.wake_up())


def test_wakeup_between_set_current_state_and_schedule_is_not_lost() -> None:
    s, (sl, wk) = sched("sleeper", "waker")
    wait = RcuWait("mn_memslots_update_rcuwait")
    cond = [False]
    woke: list[bool] = []
    out: list[bool] = []

    def racy_sleeper() -> Op[None]:
        # the condition was checked false; the wake-up comes before schedule()
        wait.prepare(sl)
        wait.set_current_state_uninterruptible(sl)
        yield from preempt(P.ARMED)
        yield from rcuwait_schedule(wait, sl, P.SLEEP)
        wait.finish(sl)

    s.start(sl, "sleep", racy_sleeper(), out.append)
    s.start(wk, "wake", waker(wait, cond, woke))
    s.step_actor(sl)  # armed, not yet in schedule()
    assert sl.sleeping and wait.task is sl
    s.step_actor(wk)
    s.step_actor(wk)  # wake_up() while the sleeper is armed
    assert woke == [True] and not sl.sleeping
    s.step_actor(sl)  # schedule(): returns at once, no need for another wake-up
    assert Scheduler.is_runnable(sl)
    assert s.step_actor(sl).reached == "DONE"
    assert wait.task is None and s.quiescent()


def test_sleeper_is_blocked_until_woken() -> None:
    s, (sl, wk) = sched("sleeper", "waker")
    wait = RcuWait("w")
    cond = [False]
    woke: list[bool] = []
    out: list[bool] = []
    s.start(sl, "sleep", sleeper(wait, sl, cond), out.append)
    s.step_actor(sl)  # ARMED
    s.step_actor(sl)  # SLEEP
    assert s.runnable() == []
    s.start(wk, "wake", waker(wait, cond, woke))
    assert s.runnable() == [wk]
    s.run_to_completion()
    assert out == [True] and woke == [True]


def test_sleeper_with_no_waker_deadlocks() -> None:
    s, (sl,) = sched("sleeper")
    wait = RcuWait("mn_memslots_update_rcuwait")
    s.start(sl, "sleep", sleeper(wait, sl, [False]))
    with pytest.raises(Deadlock) as info:
        s.run_to_completion()
    assert ("sleeper in sleep @ SLEEP: waits for sleeping on mn_memslots_update_rcuwait "
            "(no wake-up yet) [holders: -]") in str(info.value)


def test_wakeup_before_prepare_is_lost_and_deadlocks() -> None:
    """A waker that runs before the waiter registered wakes nobody (wake_up returns False):
    a sleeper that then does not re-check its condition sleeps forever."""
    s, (sl, wk) = sched("sleeper", "waker")
    wait = RcuWait("w")
    woke: list[bool] = []

    def no_recheck() -> Op[None]:
        yield from preempt(P.ARMED)
        wait.prepare(sl)
        wait.set_current_state_uninterruptible(sl)
        yield from rcuwait_schedule(wait, sl, P.SLEEP)
        wait.finish(sl)

    s.start(sl, "sleep", no_recheck())
    s.start(wk, "wake", waker(wait, [False], woke))
    s.step_actor(sl)
    s.step_actor(wk)
    s.step_actor(wk)
    assert woke == [False]
    with pytest.raises(Deadlock, match="sleeping on w"):
        s.run_to_completion()


def test_rcuwait_has_one_waiter() -> None:
    _, (a, b) = sched("a", "b")
    wait = RcuWait("w")
    assert wait.wake_up() is False
    wait.prepare(a)
    with pytest.raises(ModelError, match="w: second waiter b"):
        wait.prepare(b)


# -- contended ------------------------------------------------------------------------------

def test_contended_mutex() -> None:
    s, (a, b) = sched("a", "b")
    m, other = Mutex("m"), Mutex("other")
    s.start(a, "crit", critical(m, a, 2))
    s.start(b, "crit", critical(m, b))
    assert not s.contended(m)
    s.step_actor(a)  # a holds m
    assert not s.contended(m)
    s.step_actor(b)  # b waits for m
    assert s.contended(m)
    assert not s.contended(other)
    s.step_actor(a)
    assert s.step_actor(a).reached == "DONE"  # a releases; b takes it on its next step
    assert s.contended(m)  # b has not run yet: still waiting
    s.step_actor(b)
    assert m.owner is b
    assert not s.contended(m)
    s.run_to_completion()


def test_contended_rwlock_and_srcu() -> None:
    s, (w, r, g) = sched("w", "r", "g")
    lk = RwLock("mmu_lock")
    srcu = Srcu("srcu")
    s.start(w, "write", writer(lk, w, 2))
    s.start(r, "read", reader(lk, r))
    s.step_actor(w)  # w holds it for write
    assert not s.contended(lk)
    s.step_actor(r)  # a reader waits for the writer
    assert s.contended(lk)
    # a grace period is not a lock
    idx = srcu.read_lock(w)
    s.start(g, "sync", syncer(srcu, g))
    s.step_actor(g)
    assert not s.contended(srcu)
    srcu.read_unlock(w, idx)
    s.run_to_completion()
    assert not s.contended(lk)


def test_contended_ignores_the_holder_that_just_took_the_lock() -> None:
    s, (a,) = sched("a")
    lk = RwLock("mmu_lock")
    seen: list[bool] = []

    def op() -> Op[None]:
        yield from write_lock(lk, a, P.WRITE)
        seen.append(s.contended(lk))  # nobody else exists
        yield from preempt(P.CS)
        seen.append(s.contended(lk))
        lk.write_unlock(a)

    s.start(a, "op", op())
    s.run_to_completion()
    assert seen == [False, False]
