"""SIGINT during a campaign: every failure already saved stays, and no partial file is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kvmfuzz.corpus import corpus_files, load

# A planted bug short examples find within seconds (see tests/campaign/test_redis.py too).
FAST_BUG, FAST_SEED = "fault_leaks_page_ref", 1

SCRIPT = """
import sys
from kvmfuzz.campaign import run_campaign
print("started", flush=True)
run_campaign(600, seed=int(sys.argv[3]), bug=sys.argv[2], corpus=sys.argv[1], database="none",
             step_count=8, examples_per_round=20)
"""


def _campaign(corpus: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(corpus), FAST_BUG, str(FAST_SEED)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    return err


def _no_partial_files(corpus: Path) -> None:
    leftovers = [p.name for p in corpus.iterdir() if p.name.startswith(".")] if corpus.exists() else []
    assert leftovers == [], leftovers


def test_sigint_keeps_found_failures(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    proc = _campaign(corpus)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (corpus.exists() and corpus_files(corpus)):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        found = corpus_files(corpus)
        assert found, "the campaign found nothing in 60 s"
        time.sleep(0.5)  # interrupt it in a later round
        _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _no_partial_files(corpus)
    after = corpus_files(corpus)
    assert set(found) <= set(after)
    for path in after:
        assert load(path).meta.bug == FAST_BUG


def test_sigint_early_leaves_nothing_partial(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    proc = _campaign(corpus)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(1.0)
        _interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    _no_partial_files(corpus)
    for path in corpus_files(corpus) if corpus.exists() else []:
        load(path)
    assert os.path.isdir(tmp_path)
