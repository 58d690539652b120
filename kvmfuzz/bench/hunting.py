"""Hunting one planted bug: run the machine under a fixed seed until its first failure, shrink,
measure (``hunt``, ``HuntResult``), and the schedule measures ``machine_steps`` / ``preemptions``.

Also the pieces the throughput run shares: ``StopRun`` (ends a Hypothesis run from teardown),
``quiet_settings`` and ``pinned_constants`` (generation that depends on the seed and the code
under test only, not on which other modules the process imported).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.stateful import get_state_machine_test

from kvmfuzz.campaign import PROFILES, SHARD_SEED_STRIDE, round_machines
from kvmfuzz.config import VmConfig
from kvmfuzz.corpus import Schedule
from kvmfuzz.driver import Driver, SlotSpec, Step
from kvmfuzz.errors import InvalidArgument, ProtocolViolation
from kvmfuzz.machine import KvmMachine, make_machine

FORMAT = "kvmfuzz-bench/1"
DEFAULT_STEP_COUNT = 10  # rules per generated example: the race rules set a race up in one rule, so
# short examples find most bugs soonest, and shrink fastest (tests/planted uses the same)
_MANY = 10**9  # max_examples when a time budget, not a count, ends the run
# hunt(campaign=True): a campaign round's size (the default "dev" profile's), and the stride
# between the round seeds of two hunt seeds (the one between two xdist workers' campaigns)
CAMPAIGN_ROUND_EXAMPLES: int = PROFILES["dev"][2]["max_examples"]
CAMPAIGN_SEED_STRIDE = SHARD_SEED_STRIDE


# -- schedule measures ---------------------------------------------------------------------

def machine_steps(steps: Sequence[Step]) -> int:
    """Schedule length in machine steps: operation starts plus run segments (a run segment is
    consecutive scheduler steps of one actor, i.e. at most one ``run`` rule)."""
    count, prev = 0, None
    for s in steps:
        if s.do == "start":
            count, prev = count + 1, None
        elif s.actor != prev:
            count, prev = count + 1, s.actor
    return count


def preemptions(steps: Sequence[Step]) -> int:
    """Switches away from an actor whose operation had not finished: a run of actor B right
    after a run of actor A (operation starts in between do not matter) while A's operation
    has not reached ``DONE`` (blocked or merely preempted, as the scheduler counts switches)."""
    busy: set[str] = set()
    count, prev = 0, None
    for s in steps:
        if s.do == "start":
            busy.add(s.actor)
            continue
        if prev is not None and prev != s.actor and prev in busy:
            count += 1
        if s.reached == "DONE":
            busy.discard(s.actor)
        prev = s.actor
    return count


def _size(steps: Sequence[Step]) -> tuple[int, int, int]:
    """How small a failing schedule is: machine steps, then preemptions, then driver steps."""
    return machine_steps(steps), preemptions(steps), len(steps)


# -- hunting one bug -----------------------------------------------------------------------

class StopRun(BaseException):
    """Ends a run from teardown (a BaseException: Hypothesis lets it through at once)."""


def is_hypothesis_control(exc: BaseException) -> bool:
    """Hypothesis's own control flow (StopTest, UnsatisfiedAssumption, ...): no failure."""
    return type(exc).__module__.startswith("hypothesis")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


@attrs.frozen
class HuntResult:
    """One hunt: the first failure and the smallest failing example seen after shrinking.

    ``steps`` is that example's schedule up to the violation (``Driver.failed_steps``);
    ``machine_steps`` / ``preemptions`` measure it. ``shrink_seconds`` is the time spent from
    the first failure to the end. ``error``: a failure that was not a ProtocolViolation (a
    model error: a kvmfuzz bug), which ends the hunt.
    """

    bug: str | None
    seed: int
    plain: bool
    found: bool
    title: str | None = None
    seconds_to_find: float | None = None
    examples_to_find: int | None = None
    machine_steps: int | None = None
    steps: tuple[Step, ...] = ()
    preemptions: int | None = None
    shrink_seconds: float = 0.0
    examples: int = 0
    seconds: float = 0.0
    config: VmConfig | None = None
    slots: tuple[SlotSpec, ...] = ()
    error: str | None = None

    @property
    def driver_steps(self) -> int:
        return len(self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"bug": self.bug, "seed": self.seed, "plain": self.plain, "found": self.found,
                "title": self.title, "seconds_to_find": self.seconds_to_find,
                "examples_to_find": self.examples_to_find, "machine_steps": self.machine_steps,
                "driver_steps": self.driver_steps, "preemptions": self.preemptions,
                "shrink_seconds": self.shrink_seconds, "examples": self.examples,
                "seconds": self.seconds, "error": self.error,
                "config": self.config.to_json() if self.config is not None else None,
                "slots": [s.to_json() for s in self.slots],
                "steps": [s.to_json() for s in self.steps]}

    def line(self) -> str:
        """One progress line."""
        mode = "plain" if self.plain else "aware"
        if self.error is not None:
            return f"{self.bug} seed={self.seed} {mode}: ERROR {self.error}"
        if not self.found:
            return (f"{self.bug} seed={self.seed} {mode}: not found in {self.seconds:.1f}s "
                    f"({self.examples} examples)")
        shrunk = ("" if self.plain else f"; shrunk in {self.shrink_seconds:.1f}s to "
                  f"{self.machine_steps} machine steps, {self.preemptions} preemptions")
        return (f"{self.bug} seed={self.seed} {mode}: {self.title} after {self.seconds_to_find:.1f}s"
                f" / {self.examples_to_find} examples{shrunk}")


@attrs.define
class _HuntState:
    """Per-example bookkeeping of a hunt (called from the machine's teardown)."""

    start: float
    seconds: float
    shrink_seconds: float
    max_examples: int | None
    examples: int = 0
    found_at: float | None = None
    found_examples: int | None = None
    best: tuple[tuple[int, int, int], str, tuple[Step, ...], Driver] | None = None
    error: str | None = None

    def after_example(self, machine: KvmMachine, pending: BaseException | None) -> None:
        """``pending``: the exception that ended the example before teardown; Hypothesis's
        own (StopTest: the example ran out of choices, e.g. a shrink attempt that overran)
        means Hypothesis discards the example, so its failure, if any, does not count."""
        self.examples += 1
        now = time.monotonic()
        exc = sys.exc_info()[1]
        d = machine.driver
        discarded = pending is not None and is_hypothesis_control(pending)
        if d is not None and d.failure is not None and not discarded:
            steps = d.failed_steps
            if self.found_at is None:
                self.found_at, self.found_examples = now, self.examples
            size = _size(steps)
            if self.best is None or size < self.best[0]:
                self.best = (size, d.failure.title, steps, d)
            if self.shrink_seconds <= 0 or now - self.found_at > self.shrink_seconds:
                raise StopRun
            return
        if exc is not None and not isinstance(exc, (ProtocolViolation, StopRun)) \
                and not is_hypothesis_control(exc):
            self.error = describe(exc)
            raise StopRun
        if self.found_at is not None:
            if now - self.found_at > self.shrink_seconds:
                raise StopRun
        elif now - self.start > self.seconds or (
                self.max_examples is not None and self.examples >= self.max_examples):
            raise StopRun


# The modules whose literals Hypothesis may draw as constants during a hunt (see pinned_constants).
CONSTANT_MODULES = ("kvmfuzz.sched", "kvmfuzz.host", "kvmfuzz.virt", "kvmfuzz.x86", "kvmfuzz.invariants",
                    "kvmfuzz.strategies", "kvmfuzz.machine", "kvmfuzz.weaving", "kvmfuzz.driver",
                    "kvmfuzz.config", "kvmfuzz.points", "kvmfuzz.units")
_constants_pool: list[Any] = []  # [Constants], computed once per process


def _model_constants() -> Any:
    """The literals of the model, the machine, its strategies and invariants (a fixed, sorted
    list of modules), as Hypothesis's ``constants_from_module`` extracts them."""
    if not _constants_pool:
        from hypothesis.internal.constants_ast import Constants, constants_from_module
        names: set[str] = set()
        for name in CONSTANT_MODULES:
            module = importlib.import_module(name)
            names.add(name)
            for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=f"{name}."):
                names.add(info.name)
        pool = Constants()
        for name in sorted(names):
            pool |= constants_from_module(importlib.import_module(name))
        _constants_pool.append(pool)
    return _constants_pool[0]


@contextlib.contextmanager
def pinned_constants() -> Iterator[None]:
    """Make generation a function of the seed and the code under test only.

    Hypothesis (6.131+) sometimes draws a literal found in the *local* modules loaded so far
    (every non-library module in ``sys.modules``: under pytest, every collected test module;
    after ``import kvmfuzz.campaign``, coverage.py's literals too), so the same seed gives other
    examples depending on what else the process imported. Within this context the pool is
    the literals of ``CONSTANT_MODULES`` only. Private Hypothesis API: when it is missing,
    Hypothesis's own behaviour is kept."""
    try:
        from hypothesis.internal.conjecture import providers
        saved = providers._get_local_constants
        pool = _model_constants()
    except (ImportError, AttributeError):  # pragma: no cover - another Hypothesis version
        yield
        return
    providers.CONSTANTS_CACHE.cache.clear()
    setattr(providers, "_get_local_constants", lambda: pool)  # noqa: B010 - private API
    try:
        yield
    finally:
        setattr(providers, "_get_local_constants", saved)  # noqa: B010
        providers.CONSTANTS_CACHE.cache.clear()


def quiet_settings(step_count: int) -> settings:
    """Every setting that matters, on top of Hypothesis's defaults (not the loaded profile:
    e.g. kvmfuzz-ci's derandomize would override the seed)."""
    return settings(parent=settings.get_profile("default"), derandomize=False, max_examples=_MANY,
                    stateful_step_count=step_count, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                    print_blob=False, verbosity=Verbosity.quiet, phases=[Phase.generate, Phase.shrink])


def hunt(bug: str | None, seed: int, *, plain: bool = False, seconds: float = 20.0,
         shrink_seconds: float = 60.0, step_count: int = DEFAULT_STEP_COUNT,
         max_examples: int | None = None, weaving: bool = False,
         campaign: bool = False) -> HuntResult:
    """Run ``make_machine(bug, plain=plain, weaving=weaving)`` under ``hypothesis.seed(seed)`` until its first
    failing example, or until ``seconds`` (or ``max_examples`` examples) pass without one: not
    found. Once found, Hypothesis shrinks for up to ``shrink_seconds`` (0: not at all); the
    smallest failing example seen (by machine steps, then preemptions) is kept — when shrinking
    completes, that is Hypothesis's own final replay. ``max_examples`` makes the outcome
    independent of the machine's speed (for derandomized tests).

    ``campaign``: hunt as a campaign does (``kvmfuzz.campaign``): rounds of
    ``CAMPAIGN_ROUND_EXAMPLES`` examples that take the campaign's ``round_machines`` in turn
    (the hunting machine, then the weaving machine), round ``r`` under seed ``seed *
    CAMPAIGN_SEED_STRIDE + r`` (seeds of different hunts never meet); the budget, the example
    count and the clock run across rounds, and the round that finds the bug shrinks it. (A
    campaign's examples have the profile's 20 rules; here ``step_count`` decides.)"""
    if weaving and campaign:
        raise InvalidArgument("hunt: weaving and campaign exclude each other")
    bases = (round_machines(bug, plain=plain) if campaign
             else (make_machine(bug, plain=plain, weaving=weaving),))
    state = _HuntState(time.monotonic(), seconds, shrink_seconds, max_examples)
    round_settings = quiet_settings(step_count)
    if campaign:
        round_settings = settings(round_settings, max_examples=CAMPAIGN_ROUND_EXAMPLES)
    rounds = 0
    while True:
        base = bases[rounds % len(bases)]

        def teardown(self: KvmMachine, base: type[KvmMachine] = base) -> None:
            pending = sys.exc_info()[1]  # what ended the example (None: it ran all its steps)
            try:
                base.teardown(self)
            finally:
                state.after_example(self, pending)

        machine = type(base.__name__, (base,), {"teardown": teardown})
        # on the class: get_state_machine_test copies it
        hypothesis.seed(seed * CAMPAIGN_SEED_STRIDE + rounds if campaign else seed)(machine)
        test = get_state_machine_test(machine, settings=round_settings)  # type: ignore[no-untyped-call]
        rounds += 1
        try:
            with pinned_constants():
                test()
        except StopRun:
            break
        except ProtocolViolation:
            break  # shrinking completed: the final replay was recorded by teardown
        except Exception as exc:  # reported, not raised: one bad run must not end a bench
            if state.best is None and state.error is None:
                state.error = describe(exc)
            break
        if not campaign or state.found_at is not None:
            break  # (a round ends without an exception only when it found nothing)
    end = time.monotonic()
    common: dict[str, Any] = {"bug": bug, "seed": seed, "plain": plain,
                              "examples": state.examples, "seconds": end - state.start}
    if state.best is None or state.found_at is None:
        return HuntResult(found=False, error=state.error, **common)
    (msteps, npre, _), title, steps, driver = state.best
    return HuntResult(found=True, title=title, seconds_to_find=state.found_at - state.start,
                      examples_to_find=state.found_examples, machine_steps=msteps, steps=steps,
                      preemptions=npre, shrink_seconds=end - state.found_at,
                      config=driver.config, slots=tuple(driver.slots), **common)


def replays_clean_on_correct_model(result: HuntResult) -> bool:
    """The hunt's failing schedule, replayed step by step on the correct model (starts on
    busy actors and runs of actors that cannot run are skipped, then teardown), raises no
    violation: the finding is the bug's, not an invariant's false positive."""
    if result.config is None:
        raise InvalidArgument("replays_clean_on_correct_model: the hunt found nothing")
    # (as many VMM threads as the steps name: a weaving schedule may use a third)
    d = Schedule("replay", result.config, result.slots, result.steps).driver(None)
    sched = d.vm.sched
    try:
        for s in result.steps:
            if s.do == "start":
                if not sched.actor(s.actor).busy:
                    d.start(s.op or "", s.actor, **dict(s.args))
            elif sched.is_runnable(sched.actor(s.actor)):
                d.run_actor(s.actor)
        d.finish()
    except ProtocolViolation:
        return False
    return True
