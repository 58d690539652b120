"""The differential fuzzer: ModelBackend semantics, the comparison rules, the case files, and
(with /dev/kvm) agreement with the kernel, a planted model bug found and shrunk, replay."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from kvmfuzz.errors import InvalidArgument, InvalidSchedule
from kvmfuzz.real import harness
from kvmfuzz.real.backend import KvmBackend
from kvmfuzz.real.compare import Comparator, DirtyBounds, compare
from kvmfuzz.real.diff import KNOWN_DIVERGENCES, KNOWN_MODEL_ISSUES, main, run_campaign
from kvmfuzz.real.diffcase import FORMAT, DiffCase, load_case, save_case
from kvmfuzz.real.diffreplay import replay
from kvmfuzz.real.harness import RegionKinds, guest_memfd_usable, kvm_usable
from kvmfuzz.real.model_backend import ModelBackend
from kvmfuzz.real.ops import (
    MEM_LOG_DIRTY_PAGES,
    MEM_READONLY,
    BackendConfig,
    ClearDirtyLog,
    CowReplace,
    CreateRegion,
    Dirty,
    Errno,
    GetDirtyLog,
    GuestRead,
    GuestWrite,
    HostRead,
    HostWrite,
    MadviseDontneed,
    MemslotCreate,
    MemslotDelete,
    MemslotMove,
    MemslotSetFlags,
    Mmio,
    Mprotect,
    Observation,
    Ok,
    Op,
    Outcome,
    PunchHole,
    RegionKind,
    Remap,
    RemapHow,
    RunFailed,
    Value,
    WorkerDied,
)
from kvmfuzz.virt import dirty

USABLE, REASON = kvm_usable()
needs_kvm = pytest.mark.skipif(not USABLE, reason=f"needs a usable /dev/kvm: {REASON}")
GMEM, GMEM_REASON = guest_memfd_usable()

G = 0x100000  # slot 1's gpa (the model maps gpa < 16 MiB)
EFAULT = RunFailed(errno.EFAULT)


def run(backend: ModelBackend, *ops: Op, config: BackendConfig | None = None) -> list[Outcome]:
    backend.reset(config or BackendConfig(vcpus=2))
    return [backend.apply(op).outcome for op in ops]


def slot(kind: RegionKind = "anon", flags: int = 0, npages: int = 8) -> tuple[Op, ...]:
    return (CreateRegion(1, npages, kind),
            MemslotCreate(1, G, npages, 1, flags=flags))


# --- ModelBackend: the uAPI on the model (no /dev/kvm needed) ---------------------------------


def test_model_anon_memfd_and_protections() -> None:
    m = ModelBackend()
    assert run(m, *slot(), GuestWrite(0, G, 7), MadviseDontneed(1, 0, 1), GuestRead(0, G),
               GuestWrite(1, G + 0x1000, 3), Mprotect(1, 1, 1, "r"), GuestWrite(0, G + 0x1000, 4),
               GuestRead(0, G + 0x1000), Mprotect(1, 1, 1, "none"), GuestRead(0, G + 0x1000),
               HostRead(1, 0x1000, checked=True), Mprotect(1, 1, 1, "rw"),
               GuestRead(1, G + 0x1000)) == [
        Ok(), Ok(), Value(7), Ok(), Value(0), Value(3), Ok(), EFAULT, Value(3), Ok(), EFAULT,
        Errno(errno.EFAULT), Ok(), Value(3)]
    assert run(m, *slot("memfd"), GuestWrite(0, G, 7), MadviseDontneed(1, 0, 2),
               GuestRead(1, G), Remap(1, 0, 1, "mmap_fixed"), GuestRead(0, G),
               PunchHole(1, 0, 1), GuestRead(0, G), HostRead(1, 0)) == [
        Ok(), Ok(), Value(7), Ok(), Value(7), Ok(), Value(7), Ok(), Value(0), Value(0)]


@pytest.mark.parametrize(("how", "kept"), [("mmap_fixed", False), ("munmap_mmap", False),
                                           ("mremap", True)])
def test_model_anon_remap(how: RemapHow, kept: bool) -> None:
    out = run(ModelBackend(), *slot(), GuestWrite(0, G + 0x2000, 8),
              Remap(1, 1, 3, how),
              GuestRead(0, G + 0x2000), CowReplace(1, 0, 4), GuestRead(1, G + 0x2000))
    assert out[3:] == [Ok(), Value(8 if kept else 0), Ok(), Value(8 if kept else 0)]


def test_model_memslots_mmio_and_words() -> None:
    out = run(ModelBackend(), *slot(), GuestWrite(0, G + 2, 0xABCD, 2), GuestRead(1, G),
              GuestWrite(0, G + 4, 0xEE, 1), HostRead(1, 0, 8), HostWrite(1, 0, 0x11, 1),
              GuestRead(0, G, 4), MemslotMove(1, G + 0x40000), GuestRead(0, G + 0x40000),
              GuestWrite(1, G, 0x1122, 2), MemslotDelete(1), GuestRead(0, G + 0x40000, 1),
              MemslotCreate(2, G, 4, 1, flags=MEM_READONLY), GuestWrite(0, G, 5, 4),
              GuestRead(0, G, 4), MemslotCreate(3, G + 0x2000, 4, 1), MemslotCreate(3, G + 1, 4, 1))
    assert out == [
        Ok(), Ok(), Value(0xABCD), Value(0xABCD0000), Value(0xEE), Value(0xEEABCD0000), Ok(),
        Value(0xABCD0011), Ok(), Value(0xEEABCD0011), Mmio(G, 2, True, b"\x22\x11"), Ok(),
        Mmio(G + 0x40000, 1, False, b"\x00"), Ok(), Mmio(G, 4, True, b"\x05\0\0\0"),
        Value(0xABCD0011), Errno(errno.EEXIST), Errno(errno.EINVAL)]


def test_model_guest_memfd() -> None:
    out = run(ModelBackend(), *slot("gmem"), HostWrite(1, 0, 0x55), GuestRead(0, G),
              GuestWrite(1, G + 0x1000, 0x66), HostRead(1, 0x1000), Mprotect(1, 0, 2, "none"),
              GuestRead(0, G), HostRead(1, 0, checked=True), Mprotect(1, 0, 2, "rw"),
              PunchHole(1, 0, 1), GuestRead(0, G), HostRead(1, 0x1000),
              MemslotMove(1, G + 0x40000), MemslotCreate(1, G, 8, 1, flags=MEM_LOG_DIRTY_PAGES),
              MemslotDelete(1), GuestRead(0, G))
    assert out == [
        Ok(), Ok(), Ok(), Value(0x55), Value(0x66), Value(0x66), Ok(), Value(0x55),
        Errno(errno.EFAULT), Ok(), Ok(), Value(0), Value(0x66), Errno(errno.EINVAL),
        Errno(errno.EINVAL), Ok(), Mmio(G, 8, False, bytes(8))]


def test_model_dirty_log_get_and_clear() -> None:
    log = MEM_LOG_DIRTY_PAGES
    out = run(ModelBackend(), *slot(flags=log), GuestWrite(0, G, 1), GuestWrite(0, G + 0x3000, 1),
              GetDirtyLog(1), GetDirtyLog(1), MemslotSetFlags(1, 0), GetDirtyLog(1),
              GetDirtyLog(7))
    assert out[2:] == [Value(1), Value(1), Dirty((0, 3)), Dirty(()), Ok(),
                       Errno(errno.ENOENT), Errno(errno.ENOENT)]
    manual = BackendConfig(vcpus=1, manual_protect=True, initially_set=True)
    out = run(ModelBackend(), *slot(flags=log), GetDirtyLog(1),
              ClearDirtyLog(1, 0, 8, (0, 1, 2)), GuestWrite(0, G + 0x1000, 9), GetDirtyLog(1),
              ClearDirtyLog(1, 0, 8), GetDirtyLog(1), ClearDirtyLog(1, 0, 3),
              ClearDirtyLog(1, 64, 0), config=manual)
    assert out[2:] == [Dirty(tuple(range(8))), Ok(), Value(9), Dirty((1, 3, 4, 5, 6, 7)), Ok(),
                       Dirty(()), Errno(errno.EINVAL), Errno(errno.EINVAL)]


def test_model_refusals_and_worker_death() -> None:
    m = ModelBackend()
    out = run(m, *slot(), Mprotect(1, 0, 1, "none"), HostRead(1, 0), GuestRead(0, G))
    assert isinstance(out[3], WorkerDied)
    assert out[4] == Mmio(G, 8, False, bytes(8))  # a fresh VM, as the real worker restarts
    with pytest.raises(InvalidArgument):
        run(m, *slot(), GuestRead(0, G + 8))  # beyond the page's data word
    with pytest.raises(InvalidArgument):
        run(m, *slot(), GuestRead(0, 16 << 20))  # beyond the model's gfns
    with pytest.raises(InvalidArgument):
        ModelBackend(bug="no_such_bug")


def test_model_planted_bug_maps_an_op_wrongly() -> None:
    ops = (*slot(), GuestWrite(0, G, 7), MadviseDontneed(1, 0, 1), GuestRead(0, G))
    assert run(ModelBackend(), *ops)[-1] == Value(0)
    assert run(ModelBackend(bug="dontneed_not_zapping"), *ops)[-1] == Value(7)


# --- compare() and Comparator -----------------------------------------------------------------


def obs(outcome: Outcome) -> Observation:
    return Observation(outcome)


def test_compare_rules_per_op() -> None:
    read = GuestRead(0, G)
    assert compare(read, obs(Value(1)), obs(Value(1))) is None
    assert compare(read, obs(Value(1)), obs(Value(0))) is not None
    write = GuestWrite(0, G, 2, 2)
    assert compare(write, obs(Mmio(G, 2, True, b"\2\0")), obs(Mmio(G, 2, True, b"\2\0"))) is None
    assert compare(write, obs(Mmio(G, 2, True, b"\2\0")), obs(Mmio(G, 2, True, b"\3\0"))) \
        is not None
    assert compare(read, obs(EFAULT), obs(RunFailed(errno.EFAULT, 39, G))) is not None
    create = MemslotCreate(1, G, 4, 1)
    assert compare(create, obs(Errno(errno.EEXIST)), obs(Errno(errno.EINVAL))) is not None
    assert compare(create, obs(WorkerDied("a")), obs(WorkerDied("b"))) is None
    assert compare(create, obs(Ok()), obs(WorkerDied("b"))) is not None
    get = GetDirtyLog(1)
    assert compare(get, obs(Dirty((0, 1))), obs(Dirty((0,)))) is not None  # no bounds: equal
    bounds = DirtyBounds(frozenset({0}), frozenset({0, 1}))
    assert compare(get, obs(Dirty((0, 1))), obs(Dirty((0,))), bounds) is None
    lost = compare(get, obs(Dirty((0,))), obs(Dirty((1,))), bounds)
    assert lost is not None and lost.rule == "dirty-bounds-kernel"
    extra = compare(get, obs(Dirty((0, 2))), obs(Dirty((0,))), bounds)
    assert extra is not None and extra.rule == "dirty-bounds-model"
    assert compare(get, obs(Errno(errno.ENOENT)), obs(Dirty(())), bounds) is not None


def test_comparator_tracks_dirty_bounds() -> None:
    c = Comparator(BackendConfig())
    for op, outcome in ((MemslotCreate(1, G, 4, 1, flags=MEM_LOG_DIRTY_PAGES), Ok()),
                        (GuestWrite(0, G, 1), Value(1)), (GuestRead(0, G + 0x1000), Value(0)),
                        (GuestWrite(0, G + 0x2000, 1), EFAULT)):
        c.update(op, outcome)
    assert c.bounds(1) == DirtyBounds(frozenset({0}), frozenset({0, 1, 2}))
    c.update(MemslotMove(1, G + 0x40000), Ok())  # MOVE keeps the bitmap
    assert c.bounds(1) == DirtyBounds(frozenset({0}), frozenset({0, 1, 2}))
    assert c.compare(0, GetDirtyLog(1), obs(Dirty((0, 1))), obs(Dirty((0,)))) is None
    assert c.dirty_differs == 1
    assert c.bounds(1) == DirtyBounds(frozenset(), frozenset())  # GET cleared them
    c.update(MemslotSetFlags(1, 0), Ok())
    assert c.bounds(1) is None
    manual = Comparator(BackendConfig(manual_protect=True, initially_set=True))
    manual.update(MemslotCreate(2, G, 4, 1, flags=MEM_LOG_DIRTY_PAGES), Ok())
    manual.update(GetDirtyLog(2), Dirty((0, 1, 2, 3)))
    manual.update(ClearDirtyLog(2, 0, 4, (1, 3)), Ok())
    assert manual.bounds(2) == DirtyBounds(frozenset(), frozenset({0, 2}))


# --- case files -------------------------------------------------------------------------------


def sample_case() -> DiffCase:
    """The planted bug's minimal case, as a campaign saves it."""
    ops: tuple[Op, ...] = (*slot("anon", MEM_LOG_DIRTY_PAGES), GuestWrite(0, G + 2, 3, 2),
                           GetDirtyLog(1), ClearDirtyLog(1, 0, 8, (0, 2)),
                           MadviseDontneed(1, 0, 1), GuestRead(0, G, 4))
    real: tuple[Outcome, ...] = (Ok(), Ok(), Value(3), Dirty((0,)), Ok(), Ok(), Value(0))
    mismatch = compare(ops[-1], obs(Value(0x30000)), obs(real[-1]), step=6)
    return DiffCase(BackendConfig(vcpus=1, manual_protect=True, kernel_log=False), ops,
                    (*real[:-1], Value(0x30000)), real, mismatch, "dontneed_not_zapping")


def test_case_file_round_trip(tmp_path: Path) -> None:
    case = sample_case()
    path = save_case(case, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["mismatch"]["rule"] == "outcome"
    assert load_case(path) == case
    data["format"] = "kvmfuzz-diff/0"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidSchedule, match="kvmfuzz-diff/1"):
        load_case(path)
    data["format"], data["ops"][0]["op"] = FORMAT, "Reboot"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidSchedule, match="Reboot"):
        load_case(path)


# --- against the kernel -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> Iterator[KvmBackend]:
    backend = KvmBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.mark.kvm
@needs_kvm
def test_generated_schedules_agree(real: KvmBackend) -> None:
    result = run_campaign(real, ModelBackend(), 8, steps=50, seed_=0,
                          kernel_log=False)
    assert result.case is None, result.case.mismatch.describe() if result.case and \
        result.case.mismatch else ""
    assert result.full_schedules >= 8 and result.operations >= 8 * 50
    # guest_memfd regions are generated where the kernel has them, left out (and said so) where not
    regions = result.stats.regions_by_kind
    assert ("gmem" in result.kinds.kinds) == GMEM
    if GMEM:
        assert result.kinds.left_out == "" and regions["gmem"] > 0
    else:
        assert result.kinds.left_out == f"gmem left out: {GMEM_REASON}"
        assert regions and "gmem" not in regions


def test_campaign_region_kinds_follow_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run on a kernel without guest_memfd draws no gmem region (the model stands in for
    the kernel; the probe is faked), and one with guest_memfd does."""
    monkeypatch.setattr(harness, "guest_memfd_usable", lambda: (False, "faked: no guest_memfd"))
    without = run_campaign(ModelBackend(), ModelBackend(), 8, steps=50, seed_=0,
                           kernel_log=False)
    assert without.case is None
    assert without.kinds == RegionKinds(("anon", "memfd"), "gmem left out: faked: no guest_memfd")
    assert without.stats.regions_by_kind and "gmem" not in without.stats.regions_by_kind
    monkeypatch.setattr(harness, "guest_memfd_usable", lambda: (True, "faked"))
    with_gmem = run_campaign(ModelBackend(), ModelBackend(), 8, steps=50, seed_=0,
                             kernel_log=False)
    assert with_gmem.kinds == RegionKinds() and with_gmem.stats.regions_by_kind["gmem"] > 0
    # the kinds are the run's: given explicitly, the probe is not asked
    monkeypatch.setattr(harness, "guest_memfd_usable", lambda: pytest.fail("probed"))
    anon = run_campaign(ModelBackend(), ModelBackend(), 2, steps=20, seed_=0,
                        kernel_log=False, kinds=RegionKinds(("anon",), "anon only"))
    assert set(anon.stats.regions_by_kind) == {"anon"}
    with pytest.raises(InvalidArgument):
        run_campaign(ModelBackend(), ModelBackend(), 1, kinds=RegionKinds(()))


@pytest.mark.kvm
@needs_kvm
def test_planted_model_bug_found_shrunk_saved_replayed(real: KvmBackend, tmp_path: Path) -> None:
    model = ModelBackend(bug="dontneed_not_zapping")
    result = run_campaign(real, model, 200, steps=20, seed_=0,
                          out=tmp_path, kernel_log=False)
    case = result.case
    assert case is not None and case.mismatch is not None, result.summary()
    assert len(case.ops) <= 6, case.ops
    assert any(isinstance(op, MadviseDontneed) for op in case.ops)
    assert result.saved is not None and load_case(result.saved) == case
    again = replay(load_case(result.saved), real, ModelBackend(case.model_bug))
    assert again.mismatch is not None and again.mismatch.rule == case.mismatch.rule
    fixed = replay(case, real, ModelBackend())
    assert fixed.mismatch is None


@pytest.mark.kvm
@needs_kvm
def test_known_divergences_still_diverge(real: KvmBackend) -> None:
    """Each KNOWN_DIVERGENCES entry still shows; when the model is fixed, drop the entry."""
    probes: dict[str, tuple[Op, ...]] = {  # the ops; the last one diverges
        "get-dirty-log-bad-slot-id": (*slot(), GetDirtyLog(32767)),
        "clear-dirty-log-without-manual-protect": (
            *slot(flags=MEM_LOG_DIRTY_PAGES), ClearDirtyLog(1, 0, 8)),
    }
    assert set(probes) == set(KNOWN_DIVERGENCES)
    for name, ops in probes.items():
        if name.startswith("clear-") and not hasattr(dirty, "kvm_clear_dirty_log_protect"):
            continue  # a model without CLEAR_DIRTY_LOG uses the backend's (the kernel's rule)
        case = DiffCase(BackendConfig(vcpus=1, kernel_log=False), ops, (), ())
        got = replay(case, real, ModelBackend())
        assert got.mismatch is not None and got.mismatch.step == len(ops) - 1, name
        # the divergence is the last op's alone: the slot set-up before it agrees
        assert replay(attrs.evolve(case, ops=ops[:-1]), real, ModelBackend()).mismatch is None, name


def test_known_model_issues_still_fail() -> None:
    """Each KNOWN_MODEL_ISSUES entry still raises inside the model; when fixed, drop it."""
    probes: dict[str, tuple[tuple[Op, ...], str]] = {}
    assert set(probes) == set(KNOWN_MODEL_ISSUES)


def test_fixed_model_issues_stay_fixed() -> None:
    """Former KNOWN_MODEL_ISSUES entries: the schedule runs on the model without a violation."""
    fixed: dict[str, tuple[Op, ...]] = {
        # D1 used to report the read-only huge leaf of a READONLY slot whose logging was enabled
        "d1-readonly-logged-huge": (*slot(flags=MEM_READONLY), GuestRead(0, G),
                                    MemslotSetFlags(1, MEM_READONLY | MEM_LOG_DIRTY_PAGES)),
    }
    for name, ops in fixed.items():
        m = ModelBackend()
        m.reset(BackendConfig(vcpus=1))
        for op in ops:
            m.apply(op)
        assert name not in KNOWN_MODEL_ISSUES


@pytest.mark.kvm
@needs_kvm
def test_main_prints_figures_and_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    assert main(["--schedules", "2", "--steps", "20", "--seed", "3", "--out",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "schedules" in out and "operations/s" in out and "mismatches 0" in out
    assert "region kinds: anon, memfd" in out
    assert ("gmem left out" in out) == (not GMEM)
    path = save_case(sample_case(), tmp_path)
    assert main(["replay", str(path)]) == 1  # the model bug recorded in the file plants it
    assert "MISMATCH" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.kvm
@needs_kvm
def test_thousand_schedules_agree(real: KvmBackend) -> None:
    """The agreement campaign: 1000 schedules of >= 50 ops (pytest -m slow; several minutes)."""
    result = run_campaign(real, ModelBackend(), 1000, seed_=1)
    print(result.summary())
    assert result.case is None, result.case.mismatch.describe() if result.case and \
        result.case.mismatch else ""
    assert result.full_schedules >= 1000
