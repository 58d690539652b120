"""The benchmark: how good kvmfuzz is, in figures (``python -m kvmfuzz bench``).

For every planted bug of ``kvmfuzz.bugs.CATALOGUE`` (calibration variants excepted) and each of
``--seeds`` fixed Hypothesis seeds, ``hunt`` runs the protocol-aware machine
(``make_machine(bug)``) until the first failing example or the per-bug budget, then lets
Hypothesis shrink, and measures: seconds and examples to the first failure, and the shrunk
schedule's length in machine steps (``machine_steps``) and its preemptions (``preemptions``).
The same seeds and budget then drive the *plain* machine (``make_machine(bug, plain=True)``:
uniform rules and arguments, no protocol-aware biasing) to the first failure (it is not
shrunk: only its time to find is compared). ``throughput`` measures the full model's steps/s
against a no-op state machine with the same rules and draws, in the same run.

Output: an aligned table on the terminal (``--markdown``: a Markdown table for the README),
the machine it ran on, and a JSON file (``kvmfuzz-bench/1``). This is a measurement, never a
test: it is not run by the test suite (see tests/bench for its unit tests, and tests/planted
for the derandomized CI-sized quality test that uses ``hunt``).

Modules: ``hunting`` (hunt, schedule measures), ``speed`` (throughput), ``report`` (the
run, its table and JSON, ``main``). Hypothesis lives here, at the edge: the model
(``sched/``, ``host/``, ``virt/``, ``x86/``) never imports it.
"""

from kvmfuzz.bench.hunting import (
    DEFAULT_STEP_COUNT,
    FORMAT,
    HuntResult,
    hunt,
    machine_steps,
    preemptions,
    replays_clean_on_correct_model,
)
from kvmfuzz.bench.report import (
    format_table,
    machine_info,
    main,
    overall,
    run_bench,
    speedup,
    summarize,
    table_rows,
)
from kvmfuzz.bench.speed import Throughput, throughput

__all__ = ["DEFAULT_STEP_COUNT", "FORMAT", "HuntResult", "Throughput", "format_table", "hunt",
           "machine_info", "machine_steps", "main", "overall", "preemptions",
           "replays_clean_on_correct_model", "run_bench", "speedup", "summarize", "table_rows",
           "throughput"]
