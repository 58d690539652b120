"""The planted-bug catalogue (kvmfuzz/bugs.py): complete entries, hooks and entries in one-to-one
correspondence, the ``bugs`` command, one corpus schedule per planted bug that fires an expected
invariant on the bug and runs clean on the correct model, and calibration variants that change
what the model does without tripping any invariant."""

from __future__ import annotations

import importlib.util
import io
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from kvmfuzz.invariants import QUIESCENT_INVARIANTS, STEP_INVARIANTS

from kvmfuzz import cli
from kvmfuzz.bugs import BY_NAME, CATALOGUE, PlantedBug, lookup
from kvmfuzz.config import VmConfig
from kvmfuzz.corpus import Schedule, corpus_files, load, replay
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import Deadlock, InvalidArgument
from kvmfuzz.points import Point
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.tdp_mmu import PresentLeafPfnChange

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpus"
PLANTED = [b for b in CATALOGUE if not b.calibration]
CALIBRATION = [b for b in CATALOGUE if b.calibration]
# Titles raised outside invariants/: the scheduler (deadlock), the vCPU loop's bounded retries
# and handle_changed_spte()'s BUG() (see the invariants package docstring).
TITLES = frozenset(STEP_INVARIANTS) | frozenset(QUIESCENT_INVARIANTS) | {
    Deadlock.title, "I12-fault-progress", PresentLeafPfnChange.title}
HOOK = re.compile(r"""\bbug\(\s*["']([A-Za-z0-9_]+)["']\s*\)""")


def hooks() -> dict[str, list[str]]:
    """Every ``vm.bug("NAME")`` in the model's source: name -> files."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "kvmfuzz").rglob("*.py")):
        if path.name == "bugs.py":
            continue
        for name in HOOK.findall(path.read_text()):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


# -- the entries -------------------------------------------------------------------------------

def test_at_least_fifteen_planted_bugs_and_unique_names() -> None:
    assert len(PLANTED) >= 15
    assert len(BY_NAME) == len(CATALOGUE)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", b.name) for b in CATALOGUE)
    assert all(b.name.startswith("calib_") == b.calibration for b in CATALOGUE)


@pytest.mark.parametrize("bug", CATALOGUE, ids=[b.name for b in CATALOGUE])
def test_entry_is_complete(bug: PlantedBug) -> None:
    assert bug.summary.strip() and bug.mirrors.strip() and bug.caught_by.strip()
    if bug.calibration:
        assert bug.caught_by == "(none)" and bug.titles == ()
        return
    assert bug.titles, bug.caught_by
    unknown = [t for t in bug.titles if t not in TITLES]
    assert not unknown, f"{bug.name}: caught_by names no invariant: {unknown}"


def test_lookup() -> None:
    assert lookup(None) is None and lookup("") is None and lookup("none") is None
    assert lookup("retry_ignores_seq") is BY_NAME["retry_ignores_seq"]
    with pytest.raises(InvalidArgument, match="unknown planted bug 'retry_ignores_sq'"):
        lookup("retry_ignores_sq")


def test_hooks_and_catalogue_match() -> None:
    found = hooks()
    unlisted = sorted(set(found) - set(BY_NAME))
    assert not unlisted, f"vm.bug() hooks without a catalogue entry: {unlisted}"
    untested = sorted(set(BY_NAME) - set(found))
    assert not untested, f"catalogue entries that no vm.bug() hook tests: {untested}"


def test_bugs_command_lists_one_per_line() -> None:
    out = io.StringIO()
    assert cli.main(["bugs"], out) == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == [b.name for b in CATALOGUE]
    for line, bug in zip(lines, CATALOGUE, strict=True):
        assert bug.summary in line and bug.caught_by in line
        assert ("[calibration]" in line) == bug.calibration


# -- one schedule per planted bug ------------------------------------------------------------------

def schedule_for(bug: PlantedBug) -> tuple[Path, Schedule]:
    """The corpus file recorded on ``bug`` whose title is one of its ``caught_by`` (shortest)."""
    mine = [(p, load(p)) for p in corpus_files(CORPUS)]
    mine = [(p, s) for p, s in mine if s.bug == bug.name and s.title in bug.titles]
    assert mine, f"no corpus file for {bug.name} with a title in {bug.titles}"
    return min(mine, key=lambda ps: (len(ps[1].steps), ps[0].name))


@pytest.mark.parametrize("bug", PLANTED, ids=[b.name for b in PLANTED])
def test_schedule_fires_on_the_bug_and_runs_clean_without_it(bug: PlantedBug) -> None:
    path, s = schedule_for(bug)
    r = replay(s, bug.name, file=str(path))
    assert r.strict and r.violation is not None, f"{path.name}: no violation on {bug.name}"
    assert r.violation.title == s.title
    assert r.violation_step is not None and r.violation_step >= len(s.steps) - 1
    clean = replay(s, None, file=str(path))
    assert clean.violation is None, f"{path.name} on the correct model: {clean.violation}"


def _hand_written() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kvmfuzz_corpus_hand_written",
                                                  CORPUS / "hand_written.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HAND = _hand_written()


def test_hand_written_builders_name_planted_bugs() -> None:
    assert set(HAND.BUILDERS) <= {b.name for b in PLANTED}


@pytest.mark.parametrize("name", sorted(HAND.BUILDERS))
def test_hand_written_race_fires_only_on_its_bug(name: str) -> None:
    """corpus/hand_written.py: each race fires one of its bug's invariants (checked inside
    ``build``: strict replay on the bug, lenient replay clean on the correct model)."""
    s = HAND.build(name)
    assert s.bug == name and s.title in BY_NAME[name].titles


# -- calibration variants: a real change of behaviour, no invariant trips ----------------------------

SLOT0 = SlotSpec(0, 0, 16, 0)
SLOT1 = SlotSpec(1, 16, 16, 16)


def run_op(d: Driver, actor: str) -> object:
    a = d.vm.sched.actor(actor)
    while a.busy:
        d.run_actor(actor)
    return d.results[-1][2]


def do(d: Driver, op: str, actor: str, **args: object) -> object:
    d.start(op, actor, **args)
    return run_op(d, actor)


def present_gfns(d: Driver, vcpu: int = 0) -> list[int]:
    """Gfns of slots 0-1 the vCPU's root maps with a present leaf."""
    return [g for g in range(32)
            if S.is_shadow_present_pte(d.vm.vcpus[vcpu].walk_leaf(g)[0])]


def calibration_cases() -> dict[str, Callable[[str | None], object]]:
    def unsafe_prechecks(bug: str | None) -> object:
        d = Driver(VmConfig(bug=bug), (SLOT0,))
        d.start("access", "vcpu0", gfn=5, write=True, private=False)
        while d.steps[-1].reached != Point.FAULT_SEQ_SNAPSHOT.name:
            d.run_actor("vcpu0")
        do(d, "dontneed", "mm0", hva=4, npages=4)  # seq moves: pre-check #1 would retry
        run_op(d, "vcpu0")
        d.finish()
        return "fault.retry.precheck1" in d.drain_events()

    def aging_flushes(bug: str | None) -> object:
        d = Driver(VmConfig(bug=bug), (SLOT0,))
        do(d, "access", "vcpu0", gfn=5, write=False, private=False)
        do(d, "age", "mm0", hva=4, npages=4)
        d.finish()
        return len(d.vm.vcpus[0].tlb.entries)

    def no_memslot_optimisation(bug: str | None) -> object:
        d = Driver(VmConfig(bug=bug), (SLOT0,))
        d.start("dontneed", "mm0", hva=40, npages=4)  # no memslot there
        while d.steps[-1].reached != Point.HOST_PTE_CHANGE.name:
            d.run_actor("mm0")
        in_progress = d.vm.mmu_invalidate_in_progress  # begun (under mmu_lock) or not
        # a vCPU fault holding mmu_lock for read: the slot-less end must wait for it or not
        d.start("access", "vcpu0", gfn=5, write=True, private=False)
        while d.steps[-1].reached != Point.TDP_MAP_STEP_DOWN.name:
            d.run_actor("vcpu0")
        while d.vm.sched.is_runnable(d.vm.sched.actor("mm0")) and d.vm.sched.actor("mm0").busy:
            d.run_actor("mm0")
        end_waits = d.vm.sched.actor("mm0").busy
        d.finish()
        return in_progress, end_waits, d.vm.mmu_invalidate_seq

    def zap_all_on_delete(bug: str | None) -> object:
        out = []
        for zap_all in (False, True):
            d = Driver(VmConfig(bug=bug, slot_zap_all=zap_all), (SLOT0, SLOT1))
            do(d, "access", "vcpu0", gfn=5, write=True, private=False)
            do(d, "access", "vcpu0", gfn=20, write=True, private=False)
            root = d.vm.vcpus[0].root
            assert root is not None
            do(d, "memslot", "vmm0", slot=0, as_id=0, flags=0, gfn=0, npages=0, hva=0,
               gmem_offset=-1)
            out.append((present_gfns(d), root.role_invalid))
            d.finish()
        return out

    return {"calib_no_unsafe_prechecks": unsafe_prechecks,
            "calib_aging_always_flushes": aging_flushes,
            "calib_no_memslot_optimisation": no_memslot_optimisation,
            "calib_zap_all_on_delete": zap_all_on_delete}


def test_every_calibration_variant_has_a_behaviour_test() -> None:
    assert sorted(calibration_cases()) == sorted(b.name for b in CALIBRATION)


@pytest.mark.parametrize("name", sorted(calibration_cases()))
def test_calibration_changes_behaviour_without_violations(name: str) -> None:
    """Invariants are checked at every step (a violation would raise); the observation differs."""
    case = calibration_cases()[name]
    assert case(name) != case(None)


def test_calibration_observations() -> None:
    """What each calibration changes, spelled out."""
    cases = calibration_cases()
    assert cases["calib_no_unsafe_prechecks"](None) is True
    assert cases["calib_no_unsafe_prechecks"]("calib_no_unsafe_prechecks") is False
    assert cases["calib_aging_always_flushes"](None) == 1  # the TLB entry survives aging
    assert cases["calib_aging_always_flushes"]("calib_aging_always_flushes") == 0
    assert cases["calib_no_memslot_optimisation"](None) == (0, False, 0)
    assert cases["calib_no_memslot_optimisation"]("calib_no_memslot_optimisation") == (1, True, 1)
    # quirk off: only the slot is zapped / quirk on: every root is obsoleted and zapped
    assert cases["calib_zap_all_on_delete"](None) == [([20, 21, 22, 23], False), ([], True)]
    # zap every leaf in place: nothing left, and the root stays valid (no reload)
    assert cases["calib_zap_all_on_delete"]("calib_zap_all_on_delete") == [([], False), ([], False)]
