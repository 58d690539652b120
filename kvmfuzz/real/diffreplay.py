"""Replaying a differential case without Hypothesis: ``replay`` runs a case's ops on the model
and on the kernel again and compares them (compare.py). (Shrinking is Hypothesis's alone: the
campaign saves the case its shrinker ends with.)"""

from __future__ import annotations

from collections.abc import Callable

from kvmfuzz.errors import InvalidArgument, KvmfuzzError
from kvmfuzz.real.backend import Backend
from kvmfuzz.real.compare import Comparator, Mismatch
from kvmfuzz.real.diffcase import DiffCase
from kvmfuzz.real.model_backend import ModelBackend
from kvmfuzz.real.ops import Observation, Outcome


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
