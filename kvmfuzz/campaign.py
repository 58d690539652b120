"""Budgeted campaigns: run the stateful machine until a time budget is spent, keeping every
distinct failure.

A campaign is a sequence of *rounds*; round ``r`` runs ``get_state_machine_test`` under
``hypothesis.seed(seed + r)``, so a campaign is reproducible from its seed (Hypothesis is the
only source of randomness; a time budget only decides how many rounds run). When a round
fails, each failure (Hypothesis shrinks it and replays the shrunk example last) is identified by
its *signature* (``kvmfuzz.corpus.signature``: the invariant's title plus the operation and
point of the last step), checked to replay without Hypothesis, and saved to the corpus
directory as one JSON schedule. Odd rounds run the ``WeavingMachine`` (the machine plus the
coverage-driven ``weave`` rule: more interleaving pairs, less pointed at the races), even rounds
the hunting machine the planted-bug tests and the benchmark measure. Later rounds treat a known
signature as an invalid example (``hypothesis.reject``), so they look for, and shrink toward,
new failures only.

Settings come from a Hypothesis profile (``PROFILES``: ``dev`` quick, ``ci`` derandomized and
without an example database, ``long`` for campaigns). The example database (a directory,
``redis://HOST:PORT[/DB]`` for Hypothesis's RedisExampleDatabase, or none) is a cache that lets
a later campaign — on this machine or another sharing the Redis — re-find failures at once; it
is only reused in the first round (a reused failure then becomes known, and Hypothesis would
delete examples it no longer sees failing). The corpus, not the database, is what is kept.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, reject, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase
from hypothesis.stateful import get_state_machine_test

from kvmfuzz.bugs import lookup
from kvmfuzz.corpus import Schedule, make_schedule, replay, save, signature
from kvmfuzz.coverage import IMPOSSIBLE_POINTS, CoverageCollector, CoverageReport
from kvmfuzz.driver import Driver
from kvmfuzz.errors import InvalidArgument, InvalidSchedule, ProtocolViolation
from kvmfuzz.machine import KvmMachine, Stats, make_machine
from kvmfuzz.points import Point

SHARD_SEED_STRIDE = 100_000  # xdist worker k runs seeds seed + k * stride + round

# name -> (description, the Hypothesis profile ``kvmfuzz-NAME``, a campaign round's size)
PROFILES: dict[str, tuple[str, dict[str, Any], dict[str, int]]] = {
    # 20 rules per example: at 50, 40 % of examples overran Hypothesis's choice budget and were
    # thrown away, and shrinking stalled on them; the race rules set races up in one rule
    "dev": ("quick: small examples, no deadline",
            {"max_examples": 50, "deadline": None},
            {"max_examples": 50, "stateful_step_count": 20}),
    "ci": ("derandomized, no example database, no deadline",
           {"derandomize": True, "database": None, "deadline": None, "print_blob": True},
           {"max_examples": 50, "stateful_step_count": 20}),
    "long": ("long campaigns: more examples per round, longer examples",
             {"max_examples": 1000, "deadline": None, "stateful_step_count": 100},
             {"max_examples": 200, "stateful_step_count": 100}),
}
# every campaign round: the model is slow to build, and health checks are noise here
_ROUND: dict[str, Any] = {"deadline": None, "suppress_health_check": list(HealthCheck),
                          "print_blob": False}


def round_machines(bug: str | None, *, plain: bool = False,
                   stats: Stats | None = None) -> tuple[type[KvmMachine], ...]:
    """The machines a campaign's rounds take in turn (round ``r`` runs ``[r % 2]``): the
    hunting machine, then the WeavingMachine."""
    return (make_machine(bug, plain=plain, stats=stats),
            make_machine(bug, plain=plain, stats=stats, weaving=True))


def profile_name(name: str) -> str:
    return f"kvmfuzz-{name}"


def register_profiles() -> None:
    """Register the Hypothesis profiles ``kvmfuzz-dev`` / ``kvmfuzz-ci`` / ``kvmfuzz-long``."""
    for name, (_, values, _round) in PROFILES.items():
        settings.register_profile(profile_name(name), **values)


def make_database(url: str | None) -> ExampleDatabase | None:
    """The example database for ``url``: ``None``/``none`` (no database), ``redis://HOST:PORT
    [/DB]`` (Hypothesis's RedisExampleDatabase) or a directory path."""
    if url is None or url in ("", "none"):
        return None
    if url.startswith("redis://"):
        from kvmfuzz.cli import parse_db
        where = parse_db(url).redis
        assert where is not None
        host, port, db = where
        try:
            import redis
            from hypothesis.extra.redis import RedisExampleDatabase
        except ImportError as exc:
            raise InvalidArgument(f"--kvmfuzz-db={url}: needs the redis package ({exc})") from None
        client = redis.Redis(host=host, port=port, db=db, socket_connect_timeout=5)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise InvalidArgument(f"--kvmfuzz-db={url}: cannot reach Redis: {exc}") from None
        return RedisExampleDatabase(client)
    return DirectoryBasedExampleDatabase(url)


@attrs.define
class Failure:
    """One distinct failure of a campaign."""

    signature: str
    title: str
    message: str
    schedule: Schedule | None  # None for a model error (never saved)
    path: Path | None = None
    found_after: float = 0.0
    examples: int = 0
    model_error: bool = False
    length: int | None = None  # steps of the saved schedule

    def to_json(self) -> dict[str, Any]:
        return {"signature": self.signature, "title": self.title, "message": self.message,
                "steps": self.length,
                "path": str(self.path) if self.path else None, "found_after": self.found_after,
                "examples": self.examples, "model_error": self.model_error}


@attrs.define
class CampaignResult:
    seconds: float
    seed: int
    bug: str | None
    rounds: int
    stats: Stats
    profile: str = "dev"
    budget: float = 0.0
    corpus: Path | None = None
    failures: list[Failure] = attrs.field(factory=list)
    workers: int = 1
    coverage: CoverageReport | None = None  # protocol coverage (kvmfuzz.coverage)

    @property
    def failure(self) -> Failure | None:
        """The first failure (compatibility with single-failure callers)."""
        return self.failures[0] if self.failures else None

    @property
    def violations(self) -> list[Failure]:
        return [f for f in self.failures if not f.model_error]

    @property
    def steps_per_second(self) -> float:
        return self.stats.steps / self.seconds if self.seconds else 0.0

    def progress_line(self) -> str:
        s = self.stats
        left = max(0.0, self.budget - self.seconds)
        return (f"kvmfuzz progress: {self.seconds:.0f}s examples={s.examples} steps={s.steps} "
                f"steps/s={self.steps_per_second:.0f} distinct failures={len(self.failures)} "
                f"time left={left:.0f}s")

    def summary(self) -> list[str]:
        s = self.stats
        impossible = {p.name for p in IMPOSSIBLE_POINTS}
        reachable = [p.name for p in Point if p.name not in impossible]
        unreached = sorted(p for p in reachable if p not in s.points)
        lines = [
            f"kvmfuzz campaign: profile={self.profile} seed={self.seed} bug={self.bug or 'none'} "
            f"workers={self.workers} rounds={self.rounds} examples={s.examples} steps={s.steps} "
            f"time={self.seconds:.1f}s steps/s={self.steps_per_second:.0f}",
            "operations started: " + ", ".join(f"{k}={v}" for k, v in sorted(s.starts.items())),
            f"preemption points reached: {len(reachable) - len(unreached)}/{len(reachable)}"
            + (f" (never: {', '.join(unreached)})" if unreached else "")
            + f"; {len(impossible)} unreachable by construction (kvmfuzz/coverage.py "
            "IMPOSSIBLE_POINTS)",
            "protocol events: " + ", ".join(f"{k}={v}" for k, v in sorted(s.events.items())),
            f"distinct failures: {len(self.failures)}",
        ]
        for f in self.failures:
            where = f" -> {f.path}" if f.path else ""
            size = f"{f.length} steps, " if f.length is not None else ""
            lines.append(f"  {f.signature} ({size}found after {f.found_after:.1f}s, "
                         f"{f.examples} examples){where}")
            lines.append(f"    {f.message.splitlines()[0][:300] if f.message else ''}")
            if f.path:
                lines.append(f"    replay: python -m kvmfuzz replay {f.path}"
                             + (f" --bug {self.bug}" if self.bug else ""))
        lines.append("result: " + ("no violation" if not self.failures else
                                   f"{len(self.violations)} violation(s), "
                                   f"{len(self.failures) - len(self.violations)} model error(s)"))
        return lines

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "seed": self.seed, "bug": self.bug, "rounds": self.rounds,
                "profile": self.profile, "budget": self.budget,
                "corpus": str(self.corpus) if self.corpus else None,
                "stats": attrs.asdict(self.stats),
                "failures": [f.to_json() for f in self.failures],
                "coverage": self.coverage.to_json() if self.coverage is not None else None}


def merge_results(parts: list[dict[str, Any]]) -> CampaignResult:
    """Merge the ``to_json`` of several workers' campaigns (failures deduplicated by signature)."""
    stats = Stats()
    merged = CampaignResult(0.0, min(p["seed"] for p in parts), parts[0]["bug"], 0, stats,
                            parts[0]["profile"], parts[0]["budget"],
                            Path(parts[0]["corpus"]) if parts[0]["corpus"] else None,
                            workers=len(parts))
    seen: set[str] = set()
    for p in parts:
        merged.seconds = max(merged.seconds, p["seconds"])
        merged.rounds += p["rounds"]
        ps = p["stats"]
        stats.examples += ps["examples"]
        stats.steps += ps["steps"]
        for field in ("starts", "events", "points"):
            into = getattr(stats, field)
            for k, v in ps[field].items():
                into[k] = into.get(k, 0) + v
        for f in p["failures"]:
            if f["signature"] in seen:
                continue
            seen.add(f["signature"])
            merged.failures.append(Failure(f["signature"], f["title"], f["message"], None,
                                           Path(f["path"]) if f["path"] else None,
                                           f["found_after"], f["examples"], f["model_error"],
                                           f["steps"]))
    # steps/s is over the workers' total steps and the longest worker's time
    return merged


class _BudgetSpent(BaseException):
    """Ends a round early (a BaseException, so Hypothesis lets it through at once): the time
    budget is spent and the round has found nothing new, or it has been shrinking a new
    failure for ``shrink_seconds`` (the smallest failing example seen is then kept)."""


@attrs.define
class _Hooks:
    """Per-example bookkeeping installed on the machine class (teardown)."""

    known: set[str]
    stats: Stats
    recent: list[tuple[str, Driver | None, BaseException]] = attrs.field(factory=list)
    tick: Callable[[], None] | None = None
    deadline: float = float("inf")  # time.monotonic() when the budget is spent
    shrink_seconds: float = 60.0
    shrink_until: float | None = None  # set when this round first saw a new failure
    interrupted: bool = False  # SIGINT arrived (raised again at the next example, in case
    # the first KeyboardInterrupt was swallowed, e.g. raised inside a gc callback)
    # signature -> the smallest failing example of this round (steps, driver, violation)
    best: dict[str, tuple[int, Driver | None, BaseException]] = attrs.field(factory=dict)
    coverage: CoverageCollector | None = None  # counts every step of every example

    def new_round(self) -> None:
        self.shrink_until = None
        self.best.clear()

    def after_example(self, machine: KvmMachine) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        if self.coverage is not None:
            self.coverage.finish_example(self.stats.examples)
        if self.tick is not None:
            self.tick()
        exc = sys.exc_info()[1]
        d = machine.driver
        sig: str | None = None
        if d is not None and d.failure is not None:
            sig = signature(d.failure.title, d.failed_steps)
            self._remember(sig, d, d.failure)
        elif exc is not None and not type(exc).__module__.startswith("hypothesis"):
            # (Hypothesis's own control flow — StopTest, UnsatisfiedAssumption — is not a failure)
            first = (str(exc).splitlines() or [""])[0]
            sig = f"model-error:{type(exc).__name__}:{first[:120]}"
            self._remember(sig, None, exc)
        now = time.monotonic()
        if sig is not None and sig not in self.known:
            if self.shrink_until is None:
                self.shrink_until = max(self.deadline, now + self.shrink_seconds)
            if now > self.shrink_until:
                raise _BudgetSpent
            return  # being shrunk
        if now > (self.shrink_until or self.deadline):
            raise _BudgetSpent
        if sig is not None:
            reject()

    def _remember(self, sig: str, d: Driver | None, exc: BaseException) -> None:
        self.recent.append((sig, d, exc))
        del self.recent[:-64]
        size = len(d.failed_steps) if d is not None else 0
        if sig not in self.known and (sig not in self.best or size < self.best[sig][0]):
            self.best[sig] = (size, d, exc)

    def find(self, exc: BaseException) -> tuple[str, Driver | None, BaseException] | None:
        """The example (latest first) whose failure is ``exc`` or what ``exc`` grew from."""
        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and len(chain) < 10:
            chain.append(e)
            e = e.__cause__ or e.__context__
        for entry in reversed(self.recent):
            if any(entry[2] is c for c in chain):
                return entry
        return None


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for e in exc.exceptions:
            out.extend(_flatten(e))
        return out
    return [exc]


def _recording_machine(base: type[KvmMachine], hooks: _Hooks) -> type[KvmMachine]:
    def teardown(self: KvmMachine) -> None:
        try:
            base.teardown(self)
        finally:
            hooks.after_example(self)

    # same name as the base: the example database key stays that of the machine (and its bug)
    extra = {"observe_steps": staticmethod(hooks.coverage.on_step)} if hooks.coverage else {}
    return type(base.__name__, (base,), {"teardown": teardown, **extra})


def run_campaign(seconds: float, *, seed: int = 0, bug: str | None = None,
                 profile: str = "dev", corpus: str | Path | None = None,
                 database: str | None = None, examples_per_round: int | None = None,
                 step_count: int | None = None,
                 progress: Callable[[CampaignResult], None] | None = None,
                 progress_every: float | None = None, max_rounds: int | None = None,
                 started: Callable[[CampaignResult], None] | None = None,
                 max_failures: int | None = None, shrink_seconds: float = 60.0) -> CampaignResult:
    """Run rounds of the machine until ``seconds`` are spent (or ``max_rounds`` ran).

    ``database``: None = the profile's default (a directory database under
    ``.hypothesis/examples``; none for ``ci``), ``"none"``, a directory or a ``redis://`` URL.
    ``corpus``: where shrunk failures are saved (None: not saved). ``progress`` is called
    every ``progress_every`` seconds (default 5, less in short campaigns; between examples);
    ``started`` once with the result object, which is filled in as the campaign goes.
    ``max_failures``: stop once that many distinct failures are kept. ``shrink_seconds``: how
    long past its discovery (or the budget, whichever is later) a round may shrink a new
    failure before the smallest failing example seen is kept as it is (shrinking is
    Hypothesis's alone)."""
    lookup(bug)  # validates the name
    if profile not in PROFILES:
        raise InvalidArgument(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    register_profiles()
    values: dict[str, Any] = dict(PROFILES[profile][2])
    db: ExampleDatabase | None
    if database is None:
        db = (None if "database" in PROFILES[profile][1]
              else DirectoryBasedExampleDatabase(".hypothesis/examples"))
    else:
        db = make_database(database)
    if examples_per_round is not None:
        values["max_examples"] = examples_per_round
    if step_count is not None:
        values["stateful_step_count"] = step_count
    stats = Stats()
    result = CampaignResult(0.0, seed, bug, 0, stats, profile, seconds,
                            Path(corpus) if corpus is not None else None)
    if started is not None:
        started(result)  # the caller sees failures as they are kept, even if interrupted
    hooks = _Hooks(set(), stats, shrink_seconds=shrink_seconds, coverage=CoverageCollector())
    machines = tuple(_recording_machine(m, hooks) for m in round_machines(bug, stats=stats))
    every = min(5.0, max(0.5, seconds / 5)) if progress_every is None else progress_every
    start = time.monotonic()
    last_progress = start

    def tick() -> None:
        nonlocal last_progress
        now = time.monotonic()
        result.seconds = now - start
        if progress is not None and now - last_progress >= every:
            last_progress = now
            progress(result)

    hooks.tick = tick
    hooks.deadline = start + seconds
    restore = _catch_sigint(hooks)
    try:
        _rounds(result, hooks, machines, seconds, seed, start, values, db, profile, max_rounds,
                max_failures)
    finally:
        restore()
    result.seconds = time.monotonic() - start
    result.coverage = hooks.coverage.report(f"seed {seed}", result.seconds, bug) \
        if hooks.coverage else None
    return result


def _catch_sigint(hooks: _Hooks) -> Callable[[], None]:
    """SIGINT raises KeyboardInterrupt as usual and also marks the campaign interrupted, so the
    next example boundary raises it again should the first one have been swallowed."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_sigint(signum: int, frame: object) -> None:
        hooks.interrupted = True
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, on_sigint)

    def restore() -> None:
        signal.signal(signal.SIGINT, old)
    return restore


def _rounds(result: CampaignResult, hooks: _Hooks, machines: tuple[type[KvmMachine], ...],
            seconds: float, seed: int, start: float, values: dict[str, Any], db: ExampleDatabase | None,
            profile: str, max_rounds: int | None, max_failures: int | None) -> None:
    while (time.monotonic() - start < seconds and (max_rounds is None or result.rounds < max_rounds)
           and (max_failures is None or len(result.failures) < max_failures)):
        phases = [Phase.generate, Phase.shrink]
        if result.rounds == 0 and db is not None:
            phases.insert(0, Phase.reuse)
        round_settings = settings(
            parent=settings.get_profile(profile_name(profile)), **values, **_ROUND, database=db,
            phases=phases, report_multiple_bugs=True)
        # @seed on the machine class (get_state_machine_test copies it to the test) rather than
        # on the test: on a test, @seed also switches the example database off.
        machine = machines[result.rounds % len(machines)]
        hypothesis.seed(seed + result.rounds)(machine)
        test = get_state_machine_test(machine, settings=round_settings)  # type: ignore[no-untyped-call]
        result.rounds += 1
        hooks.new_round()
        try:
            test()
        except _BudgetSpent:
            # keep what this round found, as far as it was shrunk
            for sig, (_, driver, violation) in sorted(hooks.best.items()):
                _keep(result, hooks, violation, time.monotonic() - start, (sig, driver, violation))
        except hypothesis.errors.Unsatisfiable:
            pass  # every example ran into a known failure: try the next seed
        except Exception as exc:  # a round's failures (one, or an ExceptionGroup)
            for e in _flatten(exc):
                _keep(result, hooks, e, time.monotonic() - start)
        result.seconds = time.monotonic() - start


def _keep(result: CampaignResult, hooks: _Hooks, exc: BaseException, elapsed: float,
          found: tuple[str, Driver | None, BaseException] | None = None) -> None:
    """Record one failure Hypothesis reported (if new): check it replays, save it."""
    found = found or hooks.find(exc)
    if found is None:
        sig = f"unmatched:{type(exc).__name__}:{(str(exc).splitlines() or [''])[0][:120]}"
        found = (sig, None, exc)
    sig, driver, violation = found
    if sig in hooks.known:
        return
    hooks.known.add(sig)
    failure = Failure(sig, getattr(violation, "title", type(violation).__name__), str(violation),
                      None, None, elapsed, result.stats.examples, model_error=True)
    if driver is not None and isinstance(violation, ProtocolViolation):
        schedule = make_schedule(driver, violation, bug=result.bug,
                                 seed=result.seed + result.rounds - 1)
        failure.schedule, failure.model_error = schedule, False
        failure.length = len(schedule.steps)
        try:
            again = replay(schedule, result.bug)
        except InvalidSchedule as err:
            failure.message += f"\n(did not replay without Hypothesis: {err})"
            again = None
        if again is not None and again.violation is not None and again.violation.title == violation.title:
            if result.corpus is not None:
                failure.path, _ = save(schedule, result.corpus)
        elif again is not None:
            failure.message += ("\n(replay without Hypothesis gave "
                                f"{again.violation or 'no violation'}; not saved)")
    result.failures.append(failure)
