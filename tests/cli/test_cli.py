"""``python -m kvmfuzz``: replay / show / list / bugs, the dispatchers, and usage errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvmfuzz import cli
from kvmfuzz.bugs import CATALOGUE
from kvmfuzz.config import VmConfig
from kvmfuzz.corpus import make_schedule, save
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import ProtocolViolation

BUG = "fault_leaks_page_ref"


@pytest.fixture
def leak_file(tmp_path: Path) -> Path:
    d = Driver(VmConfig(bug=BUG), (SlotSpec(0, 0, 16, 0),))
    d.start("access", "vcpu0", gfn=1, write=True, private=False)
    d.start("dontneed", "mm0", hva=8, npages=2)
    d.run_actor("mm0")  # the invalidation starts, then the vCPU faults through it
    while d.run_actor("vcpu0").reached != "DONE":
        pass
    with pytest.raises(ProtocolViolation) as info:  # I10 at quiescence
        for _ in range(50):
            d.run_actor("mm0")
    path, _ = save(make_schedule(d, info.value, bug=BUG, seed=7), tmp_path / "c")
    return path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out), out.getvalue()


def test_bugs_one_per_line() -> None:
    code, text = run("bugs")
    lines = text.splitlines()
    assert code == 0 and len(lines) == len(CATALOGUE)
    for bug, line in zip(CATALOGUE, lines, strict=True):
        assert line.startswith(bug.name + " ")
        assert ("[calibration]" in line) == bug.calibration


def test_replay_reproduces_on_the_bug_and_is_clean_without(leak_file: Path) -> None:
    code, text = run("replay", str(leak_file), "--bug", BUG)
    assert code == 1
    assert "VIOLATION" in text and "I10-pin-leak" in text and "the recorded violation" in text
    assert "refcount" in text  # the decoded values of the violation
    code, text = run("replay", str(leak_file))
    assert code == 0 and "clean on bug=none" in text


def test_replay_of_a_bad_file_is_exit_1_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "kvmfuzz-schedule/9"}')
    code, text = run("replay", str(bad))
    assert code == 1 and "INVALID SCHEDULE" in text and "kvmfuzz-schedule/1" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(("argv", "names"), [
    (["replay"], "FILE"),
    (["replay", "no/such.json"], "FILE"),
    (["replay", "{leak}", "--bug", "nope"], "--bug"),
    (["show", "{leak}", "--bug", "nope"], "--bug"),
    (["list", "no/such/dir"], "DIR"),
    (["frobnicate"], "COMMAND"),
    ([], "COMMAND"),
])
def test_bad_arguments_are_usage_errors(argv: list[str], names: str, leak_file: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{leak}", str(leak_file)) for a in argv]
    with pytest.raises(SystemExit) as info:
        cli.main(argv, io.StringIO())
    assert info.value.code == 2
    assert names in capsys.readouterr().err


def test_show_text_and_html(leak_file: Path, tmp_path: Path) -> None:
    code, text = run("show", str(leak_file))
    assert code == 0
    header = text.splitlines()[1]
    assert "vcpu0" in header and "mm0" in header and "state changed" in header
    assert "+spte" in text and "in_progress 0→1" in text and "seq 0→1" in text
    assert "mn_active 0→1" in text and "VIOLATION [I10-pin-leak]" in text
    out = tmp_path / "t.html"
    code, text = run("show", str(leak_file), "--html", str(out))
    page = out.read_text()
    assert code == 0 and page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "I10-pin-leak" in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_list(leak_file: Path) -> None:
    code, text = run("list", str(leak_file.parent))
    assert code == 0
    row = text.splitlines()[1]
    assert leak_file.name in row and "I10-pin-leak" in row and BUG in row
    assert "1 schedule(s)" in text


def test_dispatch_missing_module(monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(cli.DISPATCH, "bench", "kvmfuzz.no_such_module_yet")
    assert cli.main(["bench", "--x"]) == 2
    assert "not available yet" in capsys.readouterr().err


def test_dispatch_passes_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    module = type(sys)("kvmfuzz_fake_coverage")
    module.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kvmfuzz_fake_coverage", module)
    monkeypatch.setitem(cli.DISPATCH, "coverage", "kvmfuzz_fake_coverage")
    assert cli.main(["coverage", "a", "--b"]) == 3 and seen == [["a", "--b"]]


def test_python_dash_m(leak_file: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "kvmfuzz", "list", str(leak_file.parent)],
                       capture_output=True, text=True, check=False)
    assert p.returncode == 0 and leak_file.name in p.stdout
    json.loads(leak_file.read_text())
