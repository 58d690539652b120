"""Replaying a differential case without Hypothesis: ``replay`` runs a case's ops on the model
and on the kernel again and compares them (compare.py); ``minimize`` deletes ops from a
mismatching case while it still ends in the same kind of mismatch (the last shrinking pass of
a campaign, after Hypothesis's own)."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from kvmfuzz.errors import InvalidArgument, KvmfuzzError
from kvmfuzz.real.backend import Backend
from kvmfuzz.real.compare import Comparator, Mismatch
from kvmfuzz.real.diffcase import DiffCase
from kvmfuzz.real.model_backend import ModelBackend
from kvmfuzz.real.ops import Observation, Op, Outcome


def replay(case: DiffCase, real: Backend, model: ModelBackend,
           echo: Callable[[str], None] | None = None) -> DiffCase:
    """Run ``case``'s ops on both backends again; the new case (with its first mismatch)."""
    model.reset(case.config)
    real.reset(case.config)
    comparator = Comparator(case.config)
    model_out: list[Outcome | None] = []
    real_out: list[Outcome] = []
    mismatch: Mismatch | None = None
    for step, op in enumerate(case.ops):
        try:
            m_obs: Observation | None = model.apply(op)
            error = ""
        except InvalidArgument:
            raise
        except (KvmfuzzError, AssertionError) as exc:
            m_obs, error = None, f"{type(exc).__name__}: {exc}"
        r_obs = real.apply(op)
        model_out.append(None if m_obs is None else m_obs.outcome)
        real_out.append(r_obs.outcome)
        if m_obs is None:
            found: Mismatch | None = Mismatch(step, op, "model-raised", None, r_obs.outcome,
                                              error)
        else:
            found = comparator.compare(step, op, m_obs, r_obs)
        if echo is not None:
            same = "  " if found is None else "!!"
            echo(f"{same} {step}: {op}\n     model {model_out[-1]}\n     real  {r_obs.outcome}")
        if found is not None and mismatch is None:
            mismatch = found
            break
    return DiffCase(case.config, case.ops[:len(real_out)], tuple(model_out), tuple(real_out),
                    mismatch, model.bug)


def _reproduces(candidate: tuple[Op, ...], case: DiffCase, real: Backend,
                model: ModelBackend) -> DiffCase | None:
    """``candidate`` replayed: its case if it ends in the same kind of mismatch, else None."""
    target = case.mismatch
    assert target is not None
    try:
        got = replay(attrs.evolve(case, ops=candidate), real, model)
    except InvalidArgument:  # an op lost what it needs (a region, a slot)
        return None
    m = got.mismatch
    if m is None or m.rule != target.rule or type(m.op) is not type(target.op):
        return None
    return got


def minimize(case: DiffCase, real: Backend, model: ModelBackend) -> DiffCase:
    """Delete ops from a mismatching case while it still ends in the same kind of mismatch
    (same rule, same op type): chunks, then single ops, until nothing more goes. Hypothesis
    shrinks first; its budget (500 successful shrinks) can run out on 60-op schedules, where
    this replay-based pass over the resolved ops finishes the job."""
    m = case.mismatch
    if m is None:
        return case
    best = _reproduces(case.ops[:m.step + 1], case, real, model) or case
    chunk = max(1, len(best.ops) // 2)
    while True:
        i = len(best.ops) - 1  # the mismatching op stays last
        progressed = False
        while i > 0:
            lo = max(0, i - chunk)
            found = _reproduces(best.ops[:lo] + best.ops[i:], best, real, model)
            if found is not None:
                best, progressed = found, True
                i = min(lo, len(best.ops) - 1)
            else:
                i = lo
        if chunk == 1 and not progressed:
            return best
        chunk = max(1, chunk // 2) if not progressed else chunk
