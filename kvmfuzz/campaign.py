"""Budgeted campaigns: run the stateful machine until a time budget is spent.

Each round runs ``get_state_machine_test`` under ``hypothesis.seed(seed + round)``, so a
campaign is reproducible from its seed (Hypothesis is the only source of randomness). The
``Stats`` object collects what the machines did: examples, scheduler steps, operations started,
preemption points reached, protocol events.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs
import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import get_state_machine_test

from kvmfuzz.bugs import lookup
from kvmfuzz.machine import Stats, make_machine
from kvmfuzz.points import Point


@attrs.define
class CampaignResult:
    seconds: float
    seed: int
    bug: str | None
    rounds: int
    stats: Stats
    failure: BaseException | None = None

    @property
    def steps_per_second(self) -> float:
        return self.stats.steps / self.seconds if self.seconds else 0.0

    def summary(self) -> list[str]:
        s = self.stats
        points = sorted(s.points)
        unreached = sorted(p.name for p in Point if p.name not in s.points)
        lines = [
            f"kvmfuzz campaign: seed={self.seed} bug={self.bug or 'none'} rounds={self.rounds} "
            f"examples={s.examples} steps={s.steps} time={self.seconds:.1f}s "
            f"steps/s={self.steps_per_second:.0f}",
            "operations started: " + ", ".join(f"{k}={v}" for k, v in sorted(s.starts.items())),
            f"preemption points reached: {len(points)}/{len(Point)}"
            + (f" (never: {', '.join(unreached)})" if unreached else ""),
            "protocol events: " + ", ".join(f"{k}={v}" for k, v in sorted(s.events.items())),
            "result: " + ("no violation" if self.failure is None
                          else f"VIOLATION {type(self.failure).__name__}"),
        ]
        return lines


def run_campaign(seconds: float, *, seed: int = 0, bug: str | None = None,
                 examples_per_round: int = 50, step_count: int = 50,
                 progress: Callable[[CampaignResult], None] | None = None) -> CampaignResult:
    """Run rounds of the machine until ``seconds`` are spent or a violation is found."""
    lookup(bug)  # validates the name
    stats = Stats()
    machine = make_machine(bug, stats=stats)
    result = CampaignResult(0.0, seed, bug, 0, stats)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        test = get_state_machine_test(machine, settings=settings(  # type: ignore[no-untyped-call]
            max_examples=examples_per_round, stateful_step_count=step_count, deadline=None,
            database=None, suppress_health_check=list(HealthCheck), print_blob=False,
            phases=(Phase.generate, Phase.shrink)))
        test = hypothesis.seed(seed + result.rounds)(test)
        result.rounds += 1
        try:
            test()
        except BaseException as exc:  # a violation (or several): keep it, stop
            result.failure = exc
            break
        finally:
            result.seconds = time.monotonic() - start
        if progress is not None:
            progress(result)
    result.seconds = time.monotonic() - start
    return result
