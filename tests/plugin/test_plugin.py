"""The pytest plugin: option validation (usage errors naming the option), the header recipe,
a short campaign's progress and summary, and an xdist-split campaign merged by the controller."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CAMPAIGN_TEST = (Path(__file__).resolve().parents[1] / "campaign" / "test_campaign.py").read_text()


@pytest.mark.parametrize(("args", "named"), [
    (["--kvmfuzz-seconds=abc"], "--kvmfuzz-seconds='abc'"),
    (["--kvmfuzz-seconds=-1"], "--kvmfuzz-seconds"),
    (["--kvmfuzz-seed=x"], "--kvmfuzz-seed"),
    (["--kvmfuzz-bug=no_such_bug"], "--kvmfuzz-bug"),
    (["--kvmfuzz-db=ftp://host:1"], "--kvmfuzz-db"),
    (["--kvmfuzz-db=redis://host:port"], "--kvmfuzz-db"),
    (["--kvmfuzz-profile=fastest"], "--kvmfuzz-profile"),
    (["--kvmfuzz-corpus=afile"], "--kvmfuzz-corpus"),
])
def test_bad_option_is_a_usage_error(pytester: pytest.Pytester, args: list[str], named: str) -> None:
    pytester.path.joinpath("afile").write_text("x")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{named}*"])


def test_bad_ini_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nkvmfuzz_seconds = 0\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini kvmfuzz_seconds='0'*positive*"])


def test_header_is_a_recipe(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--co", "--kvmfuzz-seed=5", "--kvmfuzz-bug=fault_leaks_page_ref",
                                           "--kvmfuzz-profile=long", "--kvmfuzz-corpus=out")
    result.stdout.fnmatch_lines([
        "kvmfuzz: profile=long seed=5 bug=fault_leaks_page_ref seconds=60 corpus=out "
        "db=.hypothesis/examples workers=1 | rerun: pytest -m campaign --kvmfuzz-seconds=60 "
        "--kvmfuzz-seed=5 --kvmfuzz-profile=long --kvmfuzz-bug=fault_leaks_page_ref "
        "--kvmfuzz-corpus=out | replay a saved failure: python -m kvmfuzz replay out/FILE.json "
        "--bug fault_leaks_page_ref"])


def _campaign_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_campaign=CAMPAIGN_TEST)
    pytester.makeini("[pytest]\nmarkers =\n    campaign: a campaign\n")


def test_short_campaign_prints_progress_and_summary(pytester: pytest.Pytester) -> None:
    _campaign_project(pytester)
    result = pytester.runpytest_subprocess("-m", "campaign", "--kvmfuzz-seconds=3",
                                           "--kvmfuzz-db=none", "--kvmfuzz-corpus=found")
    result.stdout.fnmatch_lines([
        "kvmfuzz: profile=* seed=0 bug=none seconds=3 corpus=found db=none*",
        "kvmfuzz progress: *s examples=* steps=* steps/s=* distinct failures=* time left=*s",
        "*kvmfuzz campaign*",
        "kvmfuzz campaign: profile=* seed=0 bug=none workers=1 rounds=* examples=* steps=*",
        "preemption points reached: */*",
        "distinct failures: *",
        "result: *",
        "rerun: pytest -m campaign --kvmfuzz-seconds=3 --kvmfuzz-seed=0 *",
    ])
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
    if result.ret == pytest.ExitCode.OK:
        result.stdout.fnmatch_lines(["result: no violation"])


def test_campaign_split_across_xdist_workers(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _campaign_project(pytester)
    result = pytester.runpytest_subprocess("-m", "campaign", "-n", "2", "--kvmfuzz-seconds=2",
                                           "--kvmfuzz-db=none")
    result.stdout.fnmatch_lines(["*workers=2*", "*kvmfuzz campaign: * workers=2 rounds=*"])
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2  # one shard per worker
