"""Branch coverage through coverage.py, ``python -m kvmfuzz coverage``, the pytest option
``--kvmfuzz-coverage-report`` (one process and, slow, two xdist workers merged), and the page in
a headless browser."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmfuzz.campaign import CampaignResult
from kvmfuzz.config import VmConfig
from kvmfuzz.coverage import (
    BranchCollector,
    CoverageCollector,
    CoverageReport,
    classify_arcs,
    main,
    write_report,
)
from kvmfuzz.driver import Driver, SlotSpec

pytest_plugins = ["pytester"]
CAMPAIGN_TEST = (Path(__file__).resolve().parents[1] / "campaign" / "test_campaign.py").read_text()
FAULT_PY = Path(__file__).resolve().parents[2] / "kvmfuzz" / "x86" / "fault.py"


def test_branch_collector_measures_the_model() -> None:
    collector = BranchCollector().start()  # the model is imported already: import-time lines
    try:
        col = CoverageCollector(emit_events=False)
        d = Driver(VmConfig(nr_vcpus=1), (SlotSpec(0, 0, 16, 0),))
        d.observe = col.on_step
        for gfn in (1, 2, 100):
            d.start("access", "vcpu0", gfn=gfn, write=True, private=False)
            d.finish()
    finally:
        files = collector.stop()
    paths = [f.path for f in files]
    assert paths == sorted(paths)
    assert {p.split("/")[0] for p in paths} == {"virt", "x86", "host", "sched"}
    fault = next(f for f in files if f.path == "x86/fault.py")
    assert fault.branches_executed and fault.branches_missing
    def_line = next(i for i, line in enumerate(FAULT_PY.read_text().splitlines(), 1)
                    if line.startswith("def kvm_mmu_page_fault("))
    assert def_line in fault.lines_executed  # credited: it ran at import, before start()
    assert all(a not in fault.branches_missing for a in fault.branches_executed)
    assert any("planted" in f.excluded.values() for f in files)  # if vm.bug(...) arcs


def test_cli_runs_merges_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    short_campaign: CampaignResult) -> None:
    assert short_campaign.coverage is not None
    saved, _ = write_report(short_campaign.coverage, tmp_path / "saved")
    out = tmp_path / "out"
    assert main(["--seconds", "0.5", "--seed", "3", "--no-branch", "--merge", str(saved),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kvmfuzz protocol coverage: 2 run(s)" in printed and f"wrote {out}" in printed
    merged = CoverageReport.load(out / "coverage.json")
    assert sorted(r.label for r in merged.runs) == ["seed 1", "seed 3"]
    assert (out / "index.html").is_file()


def test_cli_usage_errors(tmp_path: Path) -> None:
    for argv in ([], ["--out", str(tmp_path)], ["--seconds", "0", "--out", str(tmp_path)],
                 ["--merge", str(tmp_path / "missing.json"), "--out", str(tmp_path)],
                 ["--seconds", "1", "--bug", "no_such_bug", "--out", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv


def test_python_m_kvmfuzz_coverage_dispatches(tmp_path: Path, short_campaign: CampaignResult) -> None:
    assert short_campaign.coverage is not None
    saved, _ = write_report(short_campaign.coverage, tmp_path / "a")
    proc = subprocess.run([sys.executable, "-m", "kvmfuzz", "coverage", "--merge", str(saved),
                           str(saved), "--out", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doubled = CoverageReport.load(tmp_path / "b" / "coverage.json")
    assert all(doubled.points[k] == 2 * n for k, n in short_campaign.coverage.points.items())


def _campaign_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_coverage_campaign=CAMPAIGN_TEST)  # a name not imported yet
    pytester.makeini("[pytest]\nmarkers =\n    campaign: a campaign\n")


def test_plugin_writes_the_report(pytester: pytest.Pytester, tmp_path: Path) -> None:
    _campaign_project(pytester)
    out = tmp_path / "cov"
    result = pytester.runpytest_inprocess("-m", "campaign", "--kvmfuzz-seconds=1",
                                          "--kvmfuzz-db=none", f"--kvmfuzz-coverage-report={out}")
    result.stdout.fnmatch_lines([
        "*kvmfuzz coverage*",
        "kvmfuzz protocol coverage: 1 run(s), * examples, * steps, *s; branch coverage on",
        "area * points * outcomes * pairs * branches*",
        "total *",
        "never reached (reachable in the model):",
        f"coverage report: {out}/index.html (data: {out}/coverage.json)",
    ])
    report = CoverageReport.load(out / "coverage.json")
    assert report.files is not None and any(f.branches_executed for f in report.files)
    assert report.runs[0].label == "seed 0"


def test_plugin_rejects_a_file_as_report_dir(pytester: pytest.Pytester) -> None:
    pytester.path.joinpath("afile").write_text("x")
    result = pytester.runpytest_subprocess("--kvmfuzz-coverage-report=afile")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvmfuzz-coverage-report='afile'*directory*"])


@pytest.mark.slow
def test_xdist_workers_reports_are_merged(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    _campaign_project(pytester)
    out = tmp_path / "cov"
    result = pytester.runpytest_subprocess("-m", "campaign", "-n", "2", "--kvmfuzz-seconds=2",
                                           "--kvmfuzz-db=none", f"--kvmfuzz-coverage-report={out}")
    result.stdout.fnmatch_lines(["kvmfuzz protocol coverage: 2 run(s)*branch coverage on"])
    report = CoverageReport.load(out / "coverage.json")
    assert sorted(r.label for r in report.runs) == ["seed 0", "seed 100000"]
    assert report.examples == sum(r.examples for r in report.runs) > 0
    assert report.files is not None and any(f.branches_executed for f in report.files)


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_browser() is None, reason="no chromium or chromium-browser on PATH "
                    "(Debian: apt-get install chromium)")
def test_report_opens_in_headless_chromium(tmp_path: Path, short_campaign: CampaignResult) -> None:
    assert short_campaign.coverage is not None
    _, page = write_report(short_campaign.coverage, tmp_path / "report")
    shot = tmp_path / "shot.png"
    browser = _browser()
    assert browser is not None
    proc = subprocess.run(
        [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console


CLASSIFIED = '''def f(vm):
    if vm.bug("x"):
        return 1
    if vm.n < 0:
        raise ModelError("no")
    if vm.m and not vm.bug("y"):
        return 3
    return 2


def describe(x):
    if x:
        return "a"
    return "b"
'''


def test_classify_arcs() -> None:
    arcs = {(2, 3), (2, 4), (4, 5), (4, 6), (6, 7), (6, 8), (12, 13), (12, 14)}
    assert classify_arcs(CLASSIFIED, arcs) == {
        (2, 3): "planted", (2, 4): "planted", (4, 5): "defensive",
        (12, 13): "diagnostic", (12, 14): "diagnostic"}
