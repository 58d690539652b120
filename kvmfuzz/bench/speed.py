"""Throughput: steps/s of the full model against a no-op state machine with the same rules and
draws, measured in the same run (``throughput``)."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import hypothesis
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    initialize,
    invariant,
    precondition,
    rule,
)

from kvmfuzz.bench.hunting import (
    DEFAULT_STEP_COUNT,
    StopRun,
    describe,
    is_hypothesis_control,
    pinned_constants,
    quiet_settings,
)
from kvmfuzz.machine import KvmMachine, Stats, make_machine


@attrs.frozen
class Throughput:
    """Steps/s of the full model and of a no-op machine with the same rules and draws.

    ``rule_steps``: Hypothesis rule executions (initialize included); ``scheduler_steps``: the
    model's atomic steps (``run`` rules and teardown). ``ratio``: full rule steps/s over the
    no-op rule steps/s, the like-for-like figure, against the no-op machine that makes as many
    *choices* (Hypothesis's primitive draws: one integer, one boolean) per rule as the full
    model's st.data() draws made; ``ratio_draw_matched`` against the no-op machine that makes as
    many ``data.draw`` calls, each a single choice: it also charges the model for Hypothesis's
    cost of the extra choices inside its composite draws (a config, a list of flags), so it is
    the lower figure. ``ratio_all_steps`` counts the full model's rule and scheduler steps
    against the choice-matched no-op's rule steps.
    """

    seconds: float
    full_examples: int
    full_rule_steps: int
    full_scheduler_steps: int
    noop_examples: int
    noop_rule_steps: int
    noop_seconds: float
    draws_per_rule: dict[str, float]
    choices_per_rule: dict[str, float]
    draw_matched_rule_steps: int = 0
    draw_matched_seconds: float = 0.0
    error: str | None = None

    @property
    def full_rule_steps_per_s(self) -> float:
        return self.full_rule_steps / self.seconds if self.seconds else 0.0

    @property
    def full_scheduler_steps_per_s(self) -> float:
        return self.full_scheduler_steps / self.seconds if self.seconds else 0.0

    @property
    def full_all_steps_per_s(self) -> float:
        return self.full_rule_steps_per_s + self.full_scheduler_steps_per_s

    @property
    def noop_rule_steps_per_s(self) -> float:
        return self.noop_rule_steps / self.noop_seconds if self.noop_seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.full_rule_steps_per_s / self.noop_rule_steps_per_s if self.noop_rule_steps else 0.0

    @property
    def draw_matched_rule_steps_per_s(self) -> float:
        return self.draw_matched_rule_steps / self.draw_matched_seconds if self.draw_matched_seconds \
            else 0.0

    @property
    def ratio_draw_matched(self) -> float:
        floor = self.draw_matched_rule_steps_per_s
        return self.full_rule_steps_per_s / floor if floor else 0.0

    @property
    def ratio_all_steps(self) -> float:
        return self.full_all_steps_per_s / self.noop_rule_steps_per_s if self.noop_rule_steps else 0.0

    def to_json(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        for name in ("full_rule_steps_per_s", "full_scheduler_steps_per_s", "full_all_steps_per_s",
                     "noop_rule_steps_per_s", "draw_matched_rule_steps_per_s", "ratio",
                     "ratio_draw_matched", "ratio_all_steps"):
            out[name] = getattr(self, name)
        return out


_RULE = "hypothesis_stateful_rule"  # where hypothesis.stateful keeps a rule on its function
_INIT = "hypothesis_stateful_initialize_rule"
_INVARIANT = "hypothesis_stateful_invariant"
_NOOP_DRAW = st.integers(0, 7)


def _marked(cls: type[RuleBasedStateMachine], marker: str) -> list[tuple[str, Any]]:
    """(name, Rule / Invariant) of ``cls``'s members carrying ``marker``, by name."""
    return [(name, getattr(f, marker)) for name, f in inspect.getmembers(cls)
            if getattr(f, marker, None) is not None]


def _choices_made(data: st.DataObject) -> int:
    """How many choices (primitive draws) the example has made so far. (``nodes`` is the
    ConjectureData's choice record, internal to Hypothesis: this is measurement only.)"""
    return len(data.conjecture_data.nodes)


class _CountingData:
    """A DataObject that counts its draws and the choices they make (delegates everything to
    the real one): ``counter`` is [draws, choices]."""

    def __init__(self, data: st.DataObject, counter: list[int]) -> None:
        self._data, self._counter = data, counter

    def draw(self, strategy: st.SearchStrategy[Any], label: Any = None) -> Any:
        before = _choices_made(self._data)
        self._counter[0] += 1
        try:
            return self._data.draw(strategy, label=label)
        finally:
            self._counter[1] += _choices_made(self._data) - before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


def _as_rule(marker: str, arguments: dict[str, st.SearchStrategy[Any]],
             fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` decorated as a rule (``_RULE``) or an initialize rule taking ``arguments``."""
    # (typed through a cast: mypy cannot choose among rule()'s overloads for **arguments)
    decorator = cast(Callable[..., Callable[[Callable[..., None]], Callable[..., None]]],
                     rule if marker == _RULE else initialize)
    return decorator(**arguments)(fn)


def _rewrap(r: Any, marker: str, fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` as a rule / initialize rule with ``r``'s arguments and preconditions."""
    wrapped = _as_rule(marker, r.arguments, fn)
    for p in r.preconditions:
        wrapped = precondition(p)(wrapped)
    return wrapped


@attrs.define
class _Counts:
    rules: int = 0
    draws: dict[str, list[int]] = attrs.field(factory=dict)  # rule -> [calls, draws, choices]
    start: float = 0.0
    seconds: float = 0.0
    examples: int = 0
    error: str | None = None

    def count_rule(self) -> None:
        self.rules += 1

    def end_example(self) -> None:
        self.examples += 1
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, StopRun) and not is_hypothesis_control(exc):
            self.error = describe(exc)
            raise StopRun
        if time.monotonic() - self.start > self.seconds:
            raise StopRun


def _counting_machine(base: type[KvmMachine], counts: _Counts) -> type[KvmMachine]:
    """``base`` with every rule wrapped to count its st.data() draws, an invariant that counts
    rule steps, and a teardown that ends the run when the budget is spent."""
    body: dict[str, Any] = {}
    for marker in (_RULE, _INIT):
        for name, r in _marked(base, marker):
            def counted(self: KvmMachine, _fn: Any = r.function, _name: str = name,
                        **kwargs: Any) -> None:
                tally = counts.draws.setdefault(_name, [0, 0, 0])
                tally[0] += 1
                box = [0, 0]
                args = {k: _CountingData(v, box) if isinstance(v, st.DataObject) else v
                        for k, v in kwargs.items()}
                try:
                    _fn(self, **args)
                finally:
                    tally[1] += box[0]
                    tally[2] += box[1]
            counted.__name__ = name
            body[name] = _rewrap(r, marker, counted)

    def teardown(self: KvmMachine) -> None:
        try:
            base.teardown(self)
        finally:
            counts.end_example()

    def count_rule(self: KvmMachine) -> None:
        counts.count_rule()

    body["teardown"] = teardown
    body["bench_count_rule"] = invariant()(count_rule)
    return type(base.__name__, (base,), body)


def _noop_machine(base: type[KvmMachine], counts: _Counts,
                  draws: dict[str, float]) -> type[RuleBasedStateMachine]:
    """A machine with ``base``'s rules (same names, same argument strategies, no
    preconditions) and invariants, whose rules do nothing but make, per st.data() argument,
    as many single-choice ``data.draw`` calls as the full model's rule made draws, or choices,
    on average (``draws``: see ``throughput``). The
    fraction is carried over from call to call within an example (not across examples: the
    draws must be a function of the example, or Hypothesis sees flaky data generation)."""
    body: dict[str, Any] = {}
    for marker in (_RULE, _INIT):
        for name, r in _marked(base, marker):
            def noop(self: Any, _name: str = name, **kwargs: Any) -> None:
                datas = [v for v in kwargs.values() if isinstance(v, st.DataObject)]
                if not datas:
                    return
                carry: dict[str, float] = self.__dict__.setdefault("bench_carry", {})
                carry[_name] = carry.get(_name, 0.0) + draws.get(_name, 0.0)
                n = int(carry[_name])
                carry[_name] -= n
                for _ in range(n):
                    datas[0].draw(_NOOP_DRAW)
            noop.__name__ = name
            body[name] = _as_rule(marker, r.arguments, noop)

    def nothing(self: RuleBasedStateMachine) -> None:
        pass

    def count_rule(self: RuleBasedStateMachine) -> None:
        counts.count_rule()

    def teardown(self: RuleBasedStateMachine) -> None:
        counts.end_example()

    for name, _inv in _marked(base, _INVARIANT):
        body[name] = invariant()(nothing)
    body["teardown"] = teardown
    body["bench_count_rule"] = invariant()(count_rule)
    return type("NoopMachine", (RuleBasedStateMachine,), body)


def _run_for(machine: type[RuleBasedStateMachine], counts: _Counts, seconds: float, seed: int,
             step_count: int) -> float:
    """Run ``machine`` for ``seconds`` (ended from teardown); returns the elapsed time."""
    hypothesis.seed(seed)(machine)
    test = get_state_machine_test(machine, settings=quiet_settings(step_count))  # type: ignore[no-untyped-call]
    counts.start, counts.seconds = time.monotonic(), seconds
    try:
        with pinned_constants():
            test()
    except StopRun:
        pass
    except Exception as exc:  # a false positive of the correct model: reported
        counts.error = counts.error or describe(exc)
    return time.monotonic() - counts.start


def throughput(seconds: float, *, seed: int = 0, step_count: int = DEFAULT_STEP_COUNT) -> Throughput:
    """Steps/s of the full model (the correct model, every invariant on) for ``seconds``, then,
    in the same process, of two no-op machines (``_noop_machine``) for ``seconds`` each.

    The no-op machine is built by introspecting KvmMachine's rules (hypothesis.stateful keeps
    each rule's argument strategies on it), so it has the same rules with the same argument
    strategies. What a st.data() rule draws depends on the model's state, so the full run
    measures, per rule, its ``data.draw`` calls and the choices they made, and each no-op
    machine replays one of them on average as single-choice draws: the choice-matched one is
    the engine's floor for the same choice sequence (``ratio``); the draw-matched one makes
    fewer choices when the model draws composite values, so it is faster and its ratio lower
    (``ratio_draw_matched``)."""
    stats = Stats()
    full = _Counts()
    _run_for(_counting_machine(make_machine(None, stats=stats), full), full, seconds, seed,
             step_count)
    full_seconds = time.monotonic() - full.start
    draws = {name: (d / c if c else 0.0) for name, (c, d, _n) in sorted(full.draws.items())}
    choices = {name: (n / c if c else 0.0) for name, (c, _d, n) in sorted(full.draws.items())}
    noop = _Counts()
    noop_seconds = _run_for(_noop_machine(KvmMachine, noop, choices), noop, seconds, seed, step_count)
    by_draws = _Counts()
    by_draws_seconds = _run_for(_noop_machine(KvmMachine, by_draws, draws), by_draws, seconds, seed,
                                step_count)
    return Throughput(full_seconds, full.examples, full.rules, stats.steps, noop.examples,
                      noop.rules, noop_seconds, draws, choices, by_draws.rules, by_draws_seconds,
                      full.error or noop.error or by_draws.error)
