"""kvmfuzz.bench: the schedule measures, hunt(), throughput() and the report of main().

Small budgets only: these check the benchmark's machinery, not its figures (the benchmark
itself is ``python -m kvmfuzz bench``, never a timed test).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from kvmfuzz import bench
from kvmfuzz.bench import HuntResult, hunt, machine_steps, preemptions
from kvmfuzz.bench.hunting import pinned_constants
from kvmfuzz.driver import Step

QUICK_BUG = "fault_leaks_page_ref"  # its first (simplest) example already fails
BUSY_BUG = "swap_ignores_mn_active_count"  # found after some hundred examples


def start(actor: str, op: str = "access") -> Step:
    return Step("start", actor, op)


def run(actor: str, reached: str | None = "P") -> Step:
    return Step("run", actor, reached=reached)


def test_machine_steps_counts_starts_and_run_segments() -> None:
    steps = [start("vcpu0"), run("vcpu0", "A"), run("vcpu0", "B"), run("mm0", "C"), run("vcpu0", "D")]
    assert machine_steps(steps) == 4
    assert machine_steps([]) == 0
    # a start between two runs of one actor splits the segment
    assert machine_steps([run("vcpu0"), start("mm0", "dontneed"), run("vcpu0")]) == 3


def test_preemptions_counts_switches_away_from_unfinished_operations() -> None:
    steps = [start("vcpu0"), start("mm0", "dontneed"),
             run("vcpu0"), run("mm0"),                 # vcpu0 unfinished: 1
             run("mm0", "DONE"), run("vcpu0"),         # mm0 finished: a switch, no preemption
             run("vcpu0", "DONE")]
    assert preemptions(steps) == 1
    assert machine_steps(steps) == 5


def test_preemptions_ignores_starts_between_runs_and_counts_blocked_actors() -> None:
    steps = [start("vcpu0"), run("vcpu0", "FAULT_BEFORE_MMU_LOCK"), start("vmm0", "memslot"),
             run("vmm0"), run("vcpu0"), run("vmm0", "DONE"), run("vcpu0", "DONE")]
    # vcpu0 -> vmm0 (vcpu0 unfinished), vmm0 -> vcpu0 (vmm0 unfinished), vcpu0 -> vmm0 again
    assert preemptions(steps) == 3
    assert preemptions([start("vcpu0"), run("vcpu0", "DONE"), start("vcpu1"), run("vcpu1")]) == 0
    # the last step of a failed schedule may have no ``reached`` (raised inside it)
    assert preemptions([start("vcpu0"), start("mm0"), run("vcpu0"), run("mm0", None)]) == 1


def test_hunt_finds_and_shrinks_a_quick_bug() -> None:
    r = hunt(QUICK_BUG, 0, seconds=10, shrink_seconds=30, step_count=10)
    assert r.found and r.error is None, r.line()
    assert r.title == "I10-pin-leak"
    assert r.examples_to_find is not None and 1 <= r.examples_to_find <= r.examples
    assert r.seconds_to_find is not None and r.seconds_to_find <= r.seconds
    assert r.machine_steps == machine_steps(r.steps) and r.preemptions == preemptions(r.steps)
    assert 0 < r.machine_steps <= 12
    assert r.config is not None and r.config.bug == QUICK_BUG
    assert bench.replays_clean_on_correct_model(r)
    data = r.to_json()
    assert data["found"] and data["driver_steps"] == len(r.steps) == len(data["steps"])
    json.dumps(data)


def test_hunt_is_reproducible_from_its_seed() -> None:
    a = hunt(QUICK_BUG, 3, seconds=10, shrink_seconds=0, step_count=10)
    b = hunt(QUICK_BUG, 3, seconds=10, shrink_seconds=0, step_count=10)
    assert a.found and b.found
    assert (a.examples_to_find, a.steps) == (b.examples_to_find, b.steps)


def test_hunt_on_the_correct_model_finds_nothing_in_a_tiny_budget() -> None:
    r = hunt(None, 0, seconds=0.5, shrink_seconds=1, step_count=10)
    assert not r.found and r.error is None
    assert r.examples > 0 and r.title is None and r.steps == ()
    assert "not found" in r.line()
    with pytest.raises(Exception, match="found nothing"):
        bench.replays_clean_on_correct_model(r)


def test_hunt_stops_after_max_examples() -> None:
    r = hunt(None, 0, seconds=60, step_count=5, max_examples=7)
    assert not r.found and r.examples == 7


def _hr(found: bool, t: float | None = None, steps: int | None = None) -> HuntResult:
    return HuntResult(bug="x", seed=0, plain=False, found=found, title="T" if found else None,
                      seconds_to_find=t, examples_to_find=3 if found else None,
                      machine_steps=steps, preemptions=1 if found else None)


def test_summary_censors_runs_that_did_not_find_the_bug() -> None:
    s = bench.summarize([_hr(True, 1.0, 5), _hr(True, 3.0, 9), _hr(False)], budget=20)
    assert (s["found"], s["seeds"]) == (2, 3)
    assert s["median_seconds"] == 3.0 and math.isinf(s["max_seconds"])
    assert (s["median_machine_steps"], s["max_machine_steps"]) == (7, 9)
    mostly_missed = bench.summarize([_hr(True, 1.0, 5), _hr(False), _hr(False)], budget=20)
    assert math.isinf(mostly_missed["median_seconds"])


def test_speedup_is_a_lower_bound_when_plain_misses() -> None:
    aware = bench.summarize([_hr(True, 2.0, 5)], budget=20)
    missed = bench.summarize([_hr(False)], budget=20)
    found = bench.summarize([_hr(True, 8.0, 5)], budget=20)
    assert bench.speedup(aware, missed) == {"ratio": 10.0, "lower_bound": True, "text": ">= 10.0x"}
    assert bench.speedup(aware, found)["ratio"] == 4.0
    assert bench.speedup(missed, found)["ratio"] is None


def test_main_writes_the_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = bench.main(["--bugs", QUICK_BUG, "--seeds", "1", "--seconds", "2", "--json", str(out),
                       "--shrink-seconds", "1", "--step-count", "10", "--throughput-seconds", "0.5",
                       "--plain-seconds", "3"])
    assert code == 0
    printed = capsys.readouterr()
    assert QUICK_BUG in printed.out and "machine:" in printed.out and "throughput" in printed.out
    assert "plain baseline budget 3s" in printed.out
    assert "kvmfuzz bench:" in printed.err  # progress lines
    report = json.loads(out.read_text())
    assert report["format"] == "kvmfuzz-bench/1" and not report["interrupted"]
    assert set(report["machine"]) >= {"cpu", "cores", "python", "hypothesis"}
    assert report["settings"]["seeds"] == 1 and report["settings"]["seconds"] == 2
    assert report["settings"]["plain_seconds"] == 3 and report["bugs"][0]["plain"]["budget"] == 3
    [entry] = report["bugs"]
    assert entry["name"] == QUICK_BUG and "I10-pin-leak" in entry["caught_by"]
    for mode in ("aware", "plain"):
        s = entry[mode]
        assert s["seeds"] == 1 and len(s["runs"]) == 1
        assert set(s) >= {"found", "median_seconds", "max_seconds", "median_examples",
                          "median_machine_steps", "max_machine_steps", "median_preemptions"}
    assert entry["aware"]["found"] == 1 and entry["aware"]["runs"][0]["machine_steps"] > 0
    assert entry["unexpected_titles"] == []  # I10-pin-leak is what the catalogue expects
    assert set(entry["speedup"]) == {"ratio", "lower_bound", "text"}
    t = report["throughput"]
    assert t["full_rule_steps_per_s"] > 0 and t["noop_rule_steps_per_s"] > 0 and t["ratio"] > 0
    assert t["draw_matched_rule_steps_per_s"] > 0 and t["ratio_draw_matched"] > 0
    assert report["overall"]["bugs"] == 1 and report["overall"]["errors"] == {}


def test_main_markdown_and_no_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "b.json"
    assert bench.main(["--bugs", QUICK_BUG, "--seeds", "1", "--seconds", "1", "--no-plain",
                       "--markdown", "--shrink-seconds", "0", "--throughput-seconds", "0",
                       "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("| bug | found |") and f"| {QUICK_BUG} | 1/1 |" in text
    report = json.loads(out.read_text())
    assert "plain" not in report["bugs"][0] and report["throughput"] is None
    assert report["settings"]["machine"] == "hunting" and "hunting machine" in text


def test_campaign_hunt_alternates_rounds_of_both_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    """hunt(campaign=True) runs as a campaign does: rounds of CAMPAIGN_ROUND_EXAMPLES examples,
    the hunting machine in even rounds and the weaving machine in odd ones, one budget and
    one example count across rounds."""
    from kvmfuzz.bench import hunting
    from kvmfuzz.weaving import WeavingMachine
    ran: list[bool] = []
    after = hunting._HuntState.after_example

    def spy(self: hunting._HuntState, machine: object, pending: BaseException | None) -> None:
        ran.append(isinstance(machine, WeavingMachine))
        after(self, machine, pending)  # type: ignore[arg-type]

    monkeypatch.setattr(hunting._HuntState, "after_example", spy)
    size = hunting.CAMPAIGN_ROUND_EXAMPLES
    r = hunt(None, 0, seconds=math.inf, shrink_seconds=0, step_count=3, max_examples=3 * size,
             campaign=True)
    assert not r.found and r.error is None and r.examples == len(ran) == 3 * size
    # (a round runs max_examples valid examples, plus the ones Hypothesis discards)
    rounds = [ran[0]] + [b for a, b in itertools.pairwise(ran) if a != b]
    assert rounds[:2] == [False, True] and rounds == [i % 2 == 1 for i in range(len(rounds))]
    assert ran[:size] == [False] * size


def test_campaign_hunt_goes_on_past_a_round_that_found_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hunting rounds get the correct model here (nothing to find), the weaving rounds the
    bug: the first round runs its examples clean, the second finds the bug in its first
    example and shrinks it; examples count across rounds; the same seed gives the same find."""
    from kvmfuzz.bench import hunting
    from kvmfuzz.machine import make_machine

    def only_weaving_has_the_bug(bug: str | None, *, plain: bool = False) -> tuple[type, ...]:
        return (make_machine(None, plain=plain), make_machine(bug, plain=plain, weaving=True))

    monkeypatch.setattr(hunting, "round_machines", only_weaving_has_the_bug)
    monkeypatch.setattr(hunting, "CAMPAIGN_ROUND_EXAMPLES", 5)
    r = hunt(QUICK_BUG, 0, seconds=60, shrink_seconds=5, step_count=10, campaign=True)
    assert r.found and r.error is None and r.examples_to_find is not None and r.examples_to_find > 5
    assert r.title == "I10-pin-leak"
    again = hunt(QUICK_BUG, 0, seconds=60, shrink_seconds=5, step_count=10, campaign=True)
    assert again.found and again.examples_to_find == r.examples_to_find and again.title == r.title


@pytest.mark.parametrize(("flag", "machine", "says"), [
    ("--weaving", "weaving", "weaving machine"),
    ("--campaign", "campaign", "campaign rounds (50 examples each")])
def test_main_hunts_with_the_machine_it_is_told(flag: str, machine: str, says: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.json"
    assert bench.main(["--bugs", QUICK_BUG, "--seeds", "1", "--seconds", "2", "--no-plain",
                       flag, "--shrink-seconds", "0", "--throughput-seconds", "0",
                       "--json", str(out)]) == 0
    assert says in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["settings"]["machine"] == machine and report["bugs"][0]["aware"]["found"] == 1


def test_hunt_rejects_weaving_and_campaign_together() -> None:
    from kvmfuzz.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="exclude each other"):
        hunt(QUICK_BUG, 0, weaving=True, campaign=True)


@pytest.mark.parametrize("argv", [["--bugs", "no_such_bug"], ["--seeds", "0"], ["--seconds", "-1"],
                                  ["--plain-seconds", "0"], ["--weaving", "--campaign"]])
def test_main_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2


def test_throughput_reports_positive_figures() -> None:
    t = bench.throughput(0.5, step_count=10)
    assert t.error is None
    assert t.full_examples > 0 and t.noop_examples > 0
    assert t.full_rule_steps > 0 and t.full_scheduler_steps > 0 and t.noop_rule_steps > 0
    assert t.full_rule_steps_per_s > 0 and t.noop_rule_steps_per_s > 0 and t.ratio > 0
    assert t.draw_matched_rule_steps > 0 and t.ratio_draw_matched > 0
    # the no-op machines mirror the real rules' draws and choices: init_vm draws a whole config
    # (many choices) in one draw, so the draw-matched floor makes fewer choices and runs faster
    assert t.draws_per_rule.get("run") == 0.0 and t.choices_per_rule.get("run") == 0.0
    assert t.choices_per_rule["init_vm"] > t.draws_per_rule["init_vm"] >= 1
    json.dumps(t.to_json())


def test_hunt_does_not_depend_on_what_else_is_imported(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Hypothesis draws literals of loaded local modules as constants; hunt() pins that pool
    to the model's modules, so importing another local module changes nothing."""
    from hypothesis.internal.conjecture import providers
    kw: dict[str, object] = {"seconds": math.inf, "shrink_seconds": 0, "step_count": 20,
                             "max_examples": 600}
    before = hunt(BUSY_BUG, 0, **kw)  # type: ignore[arg-type]
    (tmp_path / "bench_extra_literals.py").write_text(
        "VALUES = [" + ", ".join(str(n) for n in range(-50, 300, 3)) + ", 7919]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import bench_extra_literals  # noqa: F401
    assert 7919 in providers._get_local_constants().set_for_type("integer")
    with pinned_constants():
        assert 7919 not in providers._get_local_constants().set_for_type("integer")
    assert 7919 in providers._get_local_constants().set_for_type("integer")  # restored
    after = hunt(BUSY_BUG, 0, **kw)  # type: ignore[arg-type]
    assert before.found and after.found
    assert (before.examples_to_find, before.steps) == (after.examples_to_find, after.steps)


def test_a_weaving_schedule_naming_the_third_vmm_thread_replays_clean() -> None:
    """replays_clean_on_correct_model builds the VM with as many VMM threads as the schedule
    names (a WeavingMachine hunt may use vmm2)."""
    from driving import SLOT0

    from kvmfuzz.bench import replays_clean_on_correct_model
    from kvmfuzz.config import VmConfig
    from kvmfuzz.driver import Driver
    d = Driver(VmConfig(), (SLOT0,), nr_vmm=3)
    d.start("get_dirty_log", "vmm2", slot=0)
    while d.vm.sched.actor("vmm2").busy:
        d.run_actor("vmm2")
    r = HuntResult(bug=None, seed=0, plain=False, found=True, steps=tuple(d.steps),
                   config=VmConfig(), slots=(SLOT0,))
    assert replays_clean_on_correct_model(r)
