"""The checked-in regression corpus (``corpus/``): one shrunk schedule per planted bug (not the
calibration variants). Each reproduces its recorded violation on its bug and runs clean on the
correct model; replay is deterministic across processes and hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmfuzz.bugs import CATALOGUE
from kvmfuzz.corpus import corpus_files, load, replay

CORPUS = Path(__file__).resolve().parents[2] / "corpus"
FILES = corpus_files(CORPUS)


def test_every_planted_bug_has_a_schedule() -> None:
    have = {load(p).bug for p in FILES}
    missing = [b.name for b in CATALOGUE if not b.calibration and b.name not in have]
    assert not missing, f"no corpus file for {missing} in {CORPUS}"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_reproduces_on_its_bug(path: Path) -> None:
    s = load(path)
    r = replay(s, s.bug, file=str(path))
    assert r.strict and r.violation is not None, f"{path}: no violation on {s.bug}"
    assert r.violation.title == s.title == s.meta.violation_title


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_clean_on_the_correct_model(path: Path) -> None:
    r = replay(load(path), None, file=str(path))
    assert r.violation is None, f"{path} on the correct model: {r.violation}"


SCRIPT = """
import sys
from kvmfuzz.corpus import corpus_files, load, replay
for p in corpus_files(sys.argv[1]):
    s = load(p)
    print(p.name, "|", replay(s, s.bug).outcome(), "|", replay(s, None).outcome())
"""


def _replay_all(hash_seed: int) -> str:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(CORPUS)], env=env, capture_output=True,
                       text=True, check=True)
    return p.stdout


def _check_runs(n: int) -> None:
    outputs = [_replay_all(seed) for seed in range(1, n + 1)]
    assert outputs[0].count("\n") == len(FILES)
    for seed, out in enumerate(outputs[1:], start=2):
        assert out == outputs[0], f"PYTHONHASHSEED={seed} gave another trace"


def test_replay_is_deterministic_10_of_10() -> None:
    """Ten processes, PYTHONHASHSEED 1..10: the same traces and violations (about 2 s)."""
    _check_runs(10)
