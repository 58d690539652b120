"""The CI-sized quality test: every planted bug is found and shrunk (derandomized).

For each non-calibration bug of ``kvmfuzz.bugs.CATALOGUE``, ``kvmfuzz.bench.hunt`` runs the
protocol-aware machine (the hunting machine; for the bugs only the weaving set-ups reach, the
weaving machine or campaign rounds of both, ``Case.machine``) under a fixed Hypothesis seed
with a budget counted in *examples* (not seconds), and lets Hypothesis shrink to the end, so
the outcome is the same on every run and every machine. The shrunk schedule must
- raise a violation whose title the catalogue entry names (``caught_by``),
- be at most ``MAX_STEPS_PROTOCOL`` machine steps for the issue-2 protocol bugs
  (``PROTOCOL_BUGS``) and ``MAX_STEPS`` for the others (``kvmfuzz.bench.machine_steps``: operation
  starts plus run segments, up to the violation, teardown included when it fired there),
- replay clean on the correct model (the finding is the bug's, not an invariant's false
  positive).

Bugs found and shrunk within seconds run in the default suite; the others are marked ``slow``
with their measured figures (run them with ``pytest -m slow tests/planted``). As generation
improves, move a bug to the default run by setting its ``slow`` to None.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

import attrs
import pytest

from kvmfuzz.bugs import BY_NAME, CATALOGUE

SEED = 0
PROTOCOL_SEEDS = (0, 1, 2)
STEP_COUNT = 10  # rules per generated example: short first failures are found and shrink faster
MAX_STEPS_PROTOCOL = 10
MAX_STEPS = 12
PROTOCOL_BUGS = frozenset({"skip_is_page_fault_stale", "retry_ignores_in_progress",
                           "swap_ignores_mn_active_count"})
SHRINK_CAP = 300.0  # seconds: a safety net only (Hypothesis's own limits end a shrink first)


@attrs.frozen
class Case:
    """How a bug is hunted here: ``max_examples`` to find it in; ``slow``: why it is kept out
    of the default run (None: it runs in the default suite); ``machine``: ``hunting`` (the
    hunting machine), ``weaving`` (the WeavingMachine) or ``campaign`` (rounds alternating
    both, as a campaign runs them), for the bugs only the weaving set-ups reach."""

    max_examples: int
    slow: str | None = None
    machine: str = attrs.field(default="hunting",
                               validator=attrs.validators.in_(("hunting", "weaving", "campaign")))
    max_steps: int | None = None  # a bound of its own, where MAX_STEPS cannot hold (say why)


# Figures: seed 0, 10 rules per example, up to 3000 examples, measured under pytest 2026-11-25
# 00:40-00:49 UTC (slow entries) and 01:05-01:10 UTC (default entries, after the race rule's gfn
# was made history-independent) on this project's 2-core machine while the benchmark ran on
# both cores (so wall times are pessimistic; in CI the default run takes about 2-3 minutes).
# "found after N examples / shrunk to S machine steps, P preemptions / find+shrink seconds".
CASES: dict[str, Case] = {
    # -- the default run: the issue-2 protocol bugs, and the quick ones (about 60 s in all) --
    "skip_is_page_fault_stale": Case(3000),  # seeds 0-2: 454/88/402 ex, 12/7/6 steps (median 7)
    "retry_ignores_in_progress": Case(3000),  # seeds 0-2: 2115/659/402 ex, 5/6/6 steps (median 6)
    "swap_ignores_mn_active_count": Case(3000),  # seeds 0-2: 120/343/154 ex, 8/6/13 steps (median 8)
    "notifier_always_lockless": Case(3000),  # 1 ex / 7 steps, 1 pre / 2.9 s
    "fault_leaks_page_ref": Case(3000),  # 1 ex / 11 steps, 1 pre / 3.0 s
    "dirty_log_enable_skips_wrprot": Case(3000),  # 5 ex / 4 steps, 0 pre / 1.4 s
    "fast_pf_without_cmpxchg": Case(3000),  # 233 ex / 9 steps, 1 pre / 13.3 s (I6)
    "attr_pre_skips_head_tail": Case(3000),  # 1543 ex / 5 steps, 1 pre / 28.3 s
    "swap_skips_synchronize_srcu": Case(3000),  # 17 ex / 5 steps, 1 pre / 1.3 s
    "zap_all_fast_forgets_invalidate": Case(3000),  # 41 ex / 6 steps, 2 pre / 3.8 s
    "mmio_spte_without_generation": Case(3000),  # 581 ex / 5 steps, 1 pre / 14.2 s
    "recovery_ignores_invalidation": Case(3000),  # 127 ex / 11 steps, 3 pre / 15.3 s
    # -- slow: within bounds, kept out of the default run for time --
    "retry_ignores_seq": Case(3000, "221 ex / 10 steps, 1 pre / 14.0 s"),
    "retry_range_end_off_by_one": Case(3000, "1807 ex / 6 steps, 2 pre / 15.3 s"),
    "begin_resets_nested_range": Case(3000, "513 ex / 8 steps, 0 pre / 10.8 s"),
    "range_add_keeps_end": Case(3000, "8 ex / 7 steps, 1 pre / 7.3 s"),
    "seq_snapshot_after_pfn": Case(3000, "87 ex / 9 steps, 1 pre / 6.9 s"),
    "end_forgets_wakeup": Case(3000, "387 ex / 11 steps, 2 pre / 9.6 s"),
    "memslot_lookup_outside_srcu": Case(3000, "1316 ex / 12 steps, 1 pre / 12.4 s"),
    "delete_zaps_before_invalid_swap": Case(3000, "602 ex / 10 steps, 3 pre / 6.0 s"),
    "flush_remote_tlbs_noop": Case(3000, "2 ex / 9 steps, 1 pre / 8.9 s"),
    "precheck_retry_leaks_page_ref": Case(3000, "224 ex / 12 steps, 2 pre / 6.5 s"),
    "fast_pf_marks_dirty_before_cmpxchg": Case(3000, "147 ex / 11 steps, 1 pre / 6.1 s"),
    "get_dirty_log_skips_protect": Case(3000, "43 ex / 10 steps, 0 pre / 6.9 s"),
    # -- found by the weaving set-ups (the weaving machine, or campaign rounds alternating both
    # machines): seed 0, measured 2026-12-06 on the 2-core Xeon, idle --
    "unmap_before_range_add": Case(3000, machine="weaving"),  # 316 ex / 10 steps, 4 pre / 4.9 s
    "mmio_gen_wrap_not_handled": Case(3000, machine="weaving"),  # 21 ex / 10 steps, 0 pre / 0.8 s
    # (the race needs about 13 machine steps: a translation cached in a TLB, a fault holding
    # mmu_lock for read, the zap and a second writer queued behind it, the holder's end, the
    # zap walking on to its yield; the hand-written corpus schedule has 15)
    "zap_yield_without_flush": Case(3000, machine="weaving", max_steps=14),  # 9 ex / 13 steps, 3 pre / 0.5 s
    "invalid_slot_treated_as_noslot": Case(3000, machine="campaign"),  # 986 ex / 10 steps, 4 pre / 11 s
    "stale_check_ignores_obsolete_root": Case(3000, "729 ex / 8 steps, 3 pre / 15.0 s", machine="campaign"),
    "gmem_end_before_truncate": Case(3000, "678 ex / 7 steps, 1 pre / 11.5 s", machine="weaving"),
}
NEW_BUG = Case(10000, "not measured yet: a bug added to the catalogue after this table")


def _params() -> list[object]:
    out: list[object] = []
    for bug in CATALOGUE:
        if bug.calibration:
            continue
        case = CASES.get(bug.name, NEW_BUG)
        marks = [pytest.mark.slow] if case.slow is not None else []
        out.append(pytest.param(bug.name, case, marks=marks, id=bug.name))
    return out


def test_the_table_names_catalogued_bugs() -> None:
    stale = sorted(name for name in CASES if name not in BY_NAME or BY_NAME[name].calibration)
    assert not stale, f"CASES names bugs the catalogue does not have (renamed?): {stale}"


_HUNT = """
import json, math, sys
from kvmfuzz.bench import hunt, machine_steps, replays_clean_on_correct_model
bug, seed, steps, examples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cap, machine = float(sys.argv[5]), sys.argv[6]
r = hunt(bug, seed, seconds=math.inf, shrink_seconds=cap, step_count=steps, max_examples=examples,
         weaving=machine == "weaving", campaign=machine == "campaign")
print(json.dumps({"line": r.line(), "error": None if r.error is None else str(r.error), "found": r.found,
                  "title": r.title, "machine_steps": r.machine_steps,
                  "counted": machine_steps(r.steps) if r.found else None,
                  "clean": replays_clean_on_correct_model(r) if r.found else None,
                  "steps": [str(s) for s in r.steps]}))
"""


def hunt_isolated(bug: str, seed: int, max_examples: int, machine: str = "hunting") -> dict[str, Any]:
    """``kvmfuzz.bench.hunt`` in a fresh interpreter: what a seed generates also depends on
    process state (Hypothesis draws constants from the modules a process has loaded), so a hunt
    inside the test session would find different examples depending on which tests ran
    before it. A fresh process gives the same result in any suite, on any machine with the
    pinned Hypothesis."""
    out = subprocess.run([sys.executable, "-c", _HUNT, bug, str(seed), str(STEP_COUNT),
                          str(max_examples), str(SHRINK_CAP), machine], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONHASHSEED": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize(("bug", "case"), _params())
def test_planted_bug_found_and_shrunk(bug: str, case: Case) -> None:
    """Found, caught by an expected invariant, replaying clean on the correct model, and shrunk
    within the bound. The issue-2 protocol bugs are hunted with ``PROTOCOL_SEEDS`` and the
    bound applies to the median shrunk length (Hypothesis's shrinker can stop in a local
    minimum on one seed: the figures of every seed are printed); the others with ``SEED``."""
    seeds = PROTOCOL_SEEDS if bug in PROTOCOL_BUGS else (SEED,)
    bound = case.max_steps or (MAX_STEPS_PROTOCOL if bug in PROTOCOL_BUGS else MAX_STEPS)
    expected = [t.strip() for t in BY_NAME[bug].caught_by.split("/")]
    lengths = []
    for seed in seeds:
        r = hunt_isolated(bug, seed, case.max_examples, case.machine)
        print(r["line"])
        assert r["error"] is None, f"{bug}: the hunt stopped at a model error: {r['error']}"
        assert r["found"], f"{bug}: not found in {case.max_examples} examples"
        assert r["title"] in expected, f"{bug} caught by {r['title']}, expected one of {expected}"
        assert r["machine_steps"] is not None and r["machine_steps"] == r["counted"] > 0
        assert r["clean"], f"{bug}: the schedule fails the correct model too"
        lengths.append(r["machine_steps"])
        if len(seeds) == 1:
            assert r["machine_steps"] <= bound, (
                f"{bug}: shrunk to {r['machine_steps']} machine steps (> {bound}):\n"
                + "\n".join(f"  {s}" for s in r["steps"]))
    assert statistics.median(lengths) <= bound, f"{bug}: shrunk to {lengths} machine steps"
