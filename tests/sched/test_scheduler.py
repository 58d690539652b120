"""The cooperative scheduler: pick semantics, trace, errors, fairness, deadlocks, determinism."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from kvmfuzz.errors import Deadlock, InvalidArgument, ModelError, ProtocolViolation
from kvmfuzz.sched.locks import Mutex
from kvmfuzz.sched.scheduler import Actor, Scheduler, TraceStep
from kvmfuzz.sched.traps import Op, mutex_lock, preempt


class P(enum.Enum):
    """Preemption points of the test operations (the scheduler takes any enum member)."""

    A = "a"
    B = "b"
    C = "c"
    SPIN = "spin"
    LOCK1 = "take lock 1"
    LOCK2 = "take lock 2"
    MID = "between the two locks"


def steps(n: int, point: P = P.A, result: Any = None) -> Op[Any]:
    """An operation that stops ``n`` times at ``point`` and returns ``result``."""
    for _ in range(n):
        yield from preempt(point)
    return result


def two_actors(n: int = 5) -> tuple[Scheduler, Actor, Actor]:
    s = Scheduler()
    a, b = s.add_actor("a", "t"), s.add_actor("b", "t")
    s.start(a, "opa", steps(n))
    s.start(b, "opb", steps(n))
    return s, a, b


# -- pick semantics -------------------------------------------------------------------------

def test_first_pick_follows_stable_order() -> None:
    s, a, b = two_actors()
    assert s.runnable() == [a, b]
    assert s.step(0).actor == "a"
    s2, _, _ = two_actors()
    assert s2.step(1).actor == "b"


def test_pick_zero_keeps_the_last_actor_running() -> None:
    s, a, b = two_actors()
    s.step(1)  # b
    assert s.runnable() == [b, a]  # the last actor first
    for _ in range(3):
        assert s.step(0).actor == "b"
    assert s.switches == 0
    assert [t.preempted for t in s.trace] == [None] * 4


def test_switches_are_counted_and_recorded() -> None:
    s, _, _ = two_actors()
    s.step(0)  # a
    t = s.step(1)  # b preempts a
    assert (t.actor, t.preempted) == ("b", "a")
    assert s.switches == 1
    t = s.step(1)  # back to a (runnable = [b, a])
    assert (t.actor, t.preempted) == ("a", "b")
    assert s.switches == 2
    assert s.steps == 3


def test_pick_is_taken_modulo_the_runnable_list() -> None:
    s, _, _ = two_actors()
    s.step(0)  # a; runnable is now [a, b]
    assert s.step(2).actor == "a"  # 2 % 2 == 0
    assert s.step(3).actor == "b"  # 3 % 2 == 1
    assert s.step(1001).actor == "a"  # [b, a][1]


def test_idle_actors_are_not_runnable() -> None:
    s = Scheduler()
    a, b, c = s.add_actor("a", "t"), s.add_actor("b", "t"), s.add_actor("c", "t")
    s.start(c, "opc", steps(2))
    s.start(a, "opa", steps(2))
    assert s.runnable() == [a, c]
    assert s.busy() == [a, c]
    assert not b.busy and b.where() == "idle"
    with pytest.raises(InvalidArgument, match="b is not runnable"):
        s.step_actor(b)


def test_switch_away_from_a_finished_actor_is_not_a_preemption() -> None:
    s, _, _ = two_actors(1)
    s.step(0)  # a stops at A
    assert s.step(0).reached == "DONE"  # a finishes
    t = s.step(0)  # only b is left
    assert (t.actor, t.preempted) == ("b", None)
    assert s.switches == 0


# -- trace ----------------------------------------------------------------------------------

def test_trace_records_actor_op_point_and_preemption() -> None:
    s = Scheduler()
    a, b = s.add_actor("a", "t"), s.add_actor("b", "t")

    def op_a() -> Op[None]:
        yield from preempt(P.A)
        yield from preempt(P.B)

    s.start(a, "opa", op_a())
    s.start(b, "opb", steps(1, P.C))
    s.step_actor(a)
    s.step_actor(b)
    s.step_actor(a)
    s.step_actor(a)
    s.step_actor(b)
    assert s.trace == [
        TraceStep("a", "opa", "A", None),
        TraceStep("b", "opb", "C", "a"),
        TraceStep("a", "opa", "B", "b"),
        TraceStep("a", "opa", "DONE", None),
        TraceStep("b", "opb", "DONE", None),  # a had finished: not a preemption
    ]
    assert str(s.trace[0]) == "a opa → A"
    assert a.ops_done == 1 and b.ops_done == 1
    assert s.quiescent()


def test_where_describes_the_pending_point() -> None:
    s, a, _ = two_actors()
    assert a.where() == "opa (not started)"
    s.step_actor(a)
    assert a.where() == "opa @ A"
    assert a.started


# -- errors ---------------------------------------------------------------------------------

def test_yielding_a_non_message_is_a_model_error_naming_the_operation() -> None:
    s = Scheduler()
    a = s.add_actor("a", "t")

    def bad() -> Op[None]:
        yield 42  # type: ignore[misc]

    s.start(a, "bad_operation", bad())
    with pytest.raises(ModelError, match=r"a: operation bad_operation yielded 42"):
        s.step(0)


def test_yielding_a_bare_point_is_a_model_error() -> None:
    s = Scheduler()
    a = s.add_actor("a", "t")

    def bad() -> Op[None]:
        yield P.A  # type: ignore[misc]  # forgot 'yield from preempt(...)'

    s.start(a, "forgetful", bad())
    with pytest.raises(ModelError, match="forgetful"):
        s.step(0)


def test_busy_actor_cannot_be_started_twice() -> None:
    s, a, _ = two_actors()
    with pytest.raises(InvalidArgument, match="a is busy with opa"):
        s.start(a, "again", steps(1))
    s.step_actor(a)
    with pytest.raises(InvalidArgument, match="opa @ A"):
        s.start(a, "again", steps(1))


def test_an_actor_can_start_again_once_idle() -> None:
    s = Scheduler()
    a = s.add_actor("a", "t")
    out: list[Any] = []
    s.start(a, "one", steps(0, result=1), out.append)
    s.step(0)
    s.start(a, "two", steps(0, result=2), out.append)
    s.step(0)
    assert out == [1, 2]
    assert a.ops_done == 2


def test_duplicate_and_unknown_actor_names() -> None:
    s = Scheduler()
    s.add_actor("a", "t")
    with pytest.raises(InvalidArgument, match="exists already"):
        s.add_actor("a", "t")
    with pytest.raises(InvalidArgument, match="no actor 'zz'; actors: a"):
        s.actor("zz")
    assert s.actor("a").name == "a"
    assert s.names() == ["a"]


def test_on_done_gets_the_return_value() -> None:
    s, _, _ = two_actors()
    out: list[tuple[str, Any]] = []
    c = s.add_actor("c", "t")
    s.start(c, "opc", steps(2, result={"x": 7}), lambda r: out.append(("c", r)))
    s.run_to_completion()
    assert out == [("c", {"x": 7})]
    assert c.on_done is None and c.op_name is None and c.pending is None


def test_returning_while_holding_a_lock_is_a_model_error() -> None:
    s = Scheduler()
    a = s.add_actor("a", "t")
    m = Mutex("m")

    def leaky() -> Op[None]:
        yield from mutex_lock(m, a, P.LOCK1)

    s.start(a, "leaky", leaky())
    # the free lock is taken without a yield: the operation returns in its first step
    with pytest.raises(ModelError, match=r"a: leaky returned holding \['m'\]"):
        s.step(0)


def test_returning_while_holding_a_lock_taken_after_a_wait_is_a_model_error() -> None:
    s = Scheduler()
    a, b = s.add_actor("a", "t"), s.add_actor("b", "t")
    m = Mutex("m")

    def leaky() -> Op[None]:
        yield from mutex_lock(m, a, P.LOCK1)

    m.acquire(b)
    s.start(a, "leaky", leaky())
    assert s.step(0).reached == "LOCK1"  # m is held: a waits
    m.release(b)
    with pytest.raises(ModelError, match=r"a: leaky returned holding \['m'\]"):
        s.step(0)


def test_returning_inside_an_srcu_read_section_is_a_model_error() -> None:
    from kvmfuzz.sched.locks import Srcu

    s = Scheduler()
    a = s.add_actor("a", "t")
    srcu = Srcu("srcu")

    def leaky() -> Op[None]:
        srcu.read_lock(a)
        yield from preempt(P.A)

    s.start(a, "leaky", leaky())
    s.step(0)
    with pytest.raises(ModelError, match=r"leaky returned holding .*srcu \[0\]"):
        s.step(0)


# -- fairness -------------------------------------------------------------------------------

def spinner_and_setter() -> tuple[Scheduler, Actor, Actor, list[bool]]:
    s = Scheduler()
    spin, setter = s.add_actor("spin", "t"), s.add_actor("setter", "t")
    flag = [False]

    def spin_op() -> Op[int]:
        n = 0
        while not flag[0]:
            n += 1
            yield from preempt(P.SPIN)
        return n

    def set_op() -> Op[None]:
        yield from preempt(P.A)
        yield from preempt(P.B)
        flag[0] = True

    s.start(spin, "spin", spin_op())
    s.start(setter, "set", set_op())
    return s, spin, setter, flag


def test_pick_zero_alone_starves_the_other_actor() -> None:
    s, _, setter, flag = spinner_and_setter()
    for _ in range(200):
        s.step(0)
    assert not flag[0] and not setter.started
    assert {t.actor for t in s.trace} == {"spin"}


def test_run_to_completion_is_fair() -> None:
    s, spin, _, flag = spinner_and_setter()
    spun: list[int] = []
    spin.on_done = spun.append
    s.run_to_completion(max_steps=50)
    assert flag[0] and s.quiescent()
    assert spun and spun[0] <= 4
    # round robin alternates between the two busy actors
    assert [t.actor for t in s.trace[:4]] == ["spin", "setter", "spin", "setter"]


def test_run_to_completion_resumes_after_the_last_actor() -> None:
    s = Scheduler()
    a, b, c = (s.add_actor(n, "t") for n in "abc")
    for x in (a, b, c):
        s.start(x, "op" + x.name, steps(2))
    s.step_actor(b)
    assert s.next_round_robin() is c
    s.step_actor(c)
    assert s.next_round_robin() is a  # wraps around


def test_run_to_completion_gives_up_after_max_steps() -> None:
    s = Scheduler()
    spin = s.add_actor("spin", "t")

    def forever() -> Op[None]:
        while True:
            yield from preempt(P.SPIN)

    s.start(spin, "forever", forever())
    with pytest.raises(ModelError, match=r"not quiescent after 10 steps: forever @ SPIN"):
        s.run_to_completion(max_steps=10)


# -- deadlock -------------------------------------------------------------------------------

def abba() -> tuple[Scheduler, Actor, Actor, Mutex, Mutex]:
    s = Scheduler()
    a, b = s.add_actor("alice", "t"), s.add_actor("bob", "t")
    m1, m2 = Mutex("lock_one"), Mutex("lock_two")

    def take(actor: Actor, first: Mutex, second: Mutex, p1: P, p2: P) -> Op[None]:
        yield from mutex_lock(first, actor, p1)
        yield from preempt(P.MID)
        yield from mutex_lock(second, actor, p2)
        second.release(actor)
        first.release(actor)

    s.start(a, "ab", take(a, m1, m2, P.LOCK1, P.LOCK2))
    s.start(b, "ba", take(b, m2, m1, P.LOCK2, P.LOCK1))
    return s, a, b, m1, m2


def test_opposite_lock_order_deadlocks() -> None:
    s, a, b, m1, m2 = abba()
    assert s.step_actor(a).reached == "MID"  # alice took lock_one (free), preempted before lock_two
    assert s.step_actor(b).reached == "MID"  # bob took lock_two (free), preempted before lock_one
    assert m1.owner is a and m2.owner is b
    assert s.step_actor(a).reached == "LOCK2"  # alice blocks on lock_two
    assert s.step_actor(b).reached == "LOCK1"  # bob blocks on lock_one
    assert s.runnable() == []
    assert m1.owner is a and m2.owner is b
    with pytest.raises(Deadlock) as info:
        s.step(0)
    msg = str(info.value)
    assert isinstance(info.value, ProtocolViolation)
    assert info.value.title == "deadlock"
    assert "alice in ab @ LOCK2: waits for lock_two (held by bob) [holders: bob]" in msg
    assert "bob in ba @ LOCK1: waits for lock_one (held by alice) [holders: alice]" in msg


def test_run_to_completion_reports_the_deadlock_too() -> None:
    s, a, b, _, _ = abba()
    for actor in (a, b):
        s.step_actor(actor)  # each holds its first lock, @ MID
    with pytest.raises(Deadlock, match=r"alice.*bob"):
        s.run_to_completion()


def test_opposite_lock_order_without_a_window_cannot_deadlock() -> None:
    """With no preemption between the two acquisitions, each pair is taken in one step: the
    ABBA cycle needs a schedule point between them (the MID of abba())."""
    for first in (0, 1):
        s = Scheduler()
        a, b = s.add_actor("alice", "t"), s.add_actor("bob", "t")
        m1, m2 = Mutex("lock_one"), Mutex("lock_two")

        def take(actor: Actor, x: Mutex, y: Mutex) -> Op[None]:
            yield from mutex_lock(x, actor, P.LOCK1)
            yield from mutex_lock(y, actor, P.LOCK2)
            yield from preempt(P.MID)
            y.release(actor)
            x.release(actor)

        s.start(a, "ab", take(a, m1, m2))
        s.start(b, "ba", take(b, m2, m1))
        t = s.step(first)
        assert t.reached == "MID"  # both locks taken in the first step
        other = s.step(1)
        assert other.actor != t.actor
        assert other.reached == "LOCK1"  # the other blocks on its first lock
        s.run_to_completion()
        assert s.quiescent() and m1.owner is None and m2.owner is None


def test_same_lock_order_never_deadlocks() -> None:
    for picks in ([0] * 12, [1] * 12, [0, 1] * 6, [1, 1, 0, 1, 0, 0] * 2):
        s = Scheduler()
        a, b = s.add_actor("alice", "t"), s.add_actor("bob", "t")
        m1, m2 = Mutex("lock_one"), Mutex("lock_two")

        def take(actor: Actor, m1: Mutex = m1, m2: Mutex = m2) -> Op[None]:
            yield from mutex_lock(m1, actor, P.LOCK1)
            yield from preempt(P.MID)
            yield from mutex_lock(m2, actor, P.LOCK2)
            m2.release(actor)
            m1.release(actor)

        s.start(a, "ab", take(a))
        s.start(b, "ab", take(b))
        for pick in picks:
            if s.quiescent():
                break
            s.step(pick)
        s.run_to_completion()
        assert s.quiescent() and m1.owner is None and m2.owner is None


# -- determinism ----------------------------------------------------------------------------

def build(seed_picks: list[int]) -> tuple[list[TraceStep], list[Any], int]:
    s = Scheduler()
    m = Mutex("m")
    out: list[Any] = []
    actors = [s.add_actor(f"t{i}", "t") for i in range(3)]

    def op(actor: Actor, n: int) -> Op[str]:
        for i in range(n):
            yield from preempt(P.A)
            yield from mutex_lock(m, actor, P.LOCK1)
            out.append((actor.name, i))
            yield from preempt(P.B)
            m.release(actor)
        return actor.name

    for i, actor in enumerate(actors):
        s.start(actor, f"op{i}", op(actor, 2 + i), out.append)
    for pick in seed_picks:
        if s.quiescent():
            break
        s.step(pick)
    s.run_to_completion()
    return s.trace, out, s.switches


PICKS = [0, 2, 1, 1, 0, 3, 2, 5, 1, 0, 0, 4, 1, 2, 7, 1, 1, 0, 3]


def test_same_picks_give_the_same_trace() -> None:
    first, second = build(PICKS), build(PICKS)
    assert first == second
    assert first[0] and first[2] > 0


def test_different_picks_give_a_different_trace() -> None:
    assert build(PICKS)[0] != build([0] * len(PICKS))[0]


def test_all_zero_picks_run_each_operation_to_its_end_before_switching() -> None:
    trace, _, switches = build([0] * 100)
    assert switches == 0
    order = [t.actor for t in trace]
    assert order == sorted(order, key=lambda n: int(n[1:]))

