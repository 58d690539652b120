"""Each op's observed effect on the real kernel (the behaviours in real-kvm-facts.md)."""

from __future__ import annotations

import errno

import pytest

from kvmfuzz.errors import InvalidArgument
from kvmfuzz.real.backend import KvmBackend
from kvmfuzz.real.harness import guest_memfd_usable, kvm_usable
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
    Remap,
    RunFailed,
    Value,
)

USABLE, REASON = kvm_usable()
pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not USABLE, reason=f"needs a usable /dev/kvm: {REASON}")]
GMEM, GMEM_REASON = guest_memfd_usable()
needs_gmem = pytest.mark.skipif(
    not GMEM, reason=f"needs guest_memfd with MMAP|INIT_SHARED: {GMEM_REASON}")

GPA = 0x400000  # slot 1
NPAGES = 16


def run(kvm: KvmBackend, *ops: Op) -> list[Outcome]:
    return [o.outcome for o in kvm.apply_all(ops)]


def one(kvm: KvmBackend, op: Op) -> Outcome:
    return kvm.apply(op).outcome


def slot_with(kvm: KvmBackend, kind: str = "anon", flags: int = 0) -> None:
    assert run(kvm, CreateRegion(1, NPAGES, kind),  # type: ignore[arg-type]
               MemslotCreate(1, GPA, NPAGES, 1, flags=flags)) == [Ok(), Ok()]


def test_dontneed_anon_reads_zero(kvm: KvmBackend) -> None:
    slot_with(kvm)
    assert run(kvm, GuestWrite(0, GPA, 7), MadviseDontneed(1, 0, 1), GuestRead(0, GPA),
               HostRead(1, 0)) == [Value(7), Ok(), Value(0), Value(0)]


def test_dontneed_memfd_keeps_content(kvm: KvmBackend) -> None:
    slot_with(kvm, "memfd")
    assert run(kvm, GuestWrite(0, GPA, 7), MadviseDontneed(1, 0, 1),
               GuestRead(1, GPA)) == [Value(7), Ok(), Value(7)]


def test_mprotect_read_only_then_write_is_efault(kvm: KvmBackend) -> None:
    slot_with(kvm)
    out = run(kvm, GuestWrite(0, GPA, 1), Mprotect(1, 0, 1, "r"), GuestWrite(0, GPA, 2),
              GuestRead(0, GPA), Mprotect(1, 0, 1, "rw"), GuestWrite(0, GPA, 3),
              GuestRead(1, GPA))
    assert out == [Value(1), Ok(), RunFailed(errno.EFAULT), Value(1), Ok(), Value(3), Value(3)]


def test_prot_none_read_is_efault(kvm: KvmBackend) -> None:
    slot_with(kvm)
    out = run(kvm, GuestWrite(0, GPA, 1), Mprotect(1, 0, 1, "none"), GuestRead(0, GPA),
              HostRead(1, 0, checked=True), Mprotect(1, 0, 1, "rw"), GuestRead(0, GPA))
    assert out == [Value(1), Ok(), RunFailed(errno.EFAULT), Errno(errno.EFAULT), Ok(), Value(1)]


def test_deleted_slot_is_mmio(kvm: KvmBackend) -> None:
    slot_with(kvm)
    out = run(kvm, GuestWrite(0, GPA, 5), MemslotDelete(1), GuestRead(0, GPA),
              GuestWrite(1, GPA + 8, 0x1122), HostRead(1, 8))
    assert out == [Value(5), Ok(), Mmio(GPA, 8, False, bytes(8)),
                   Mmio(GPA + 8, 8, True, (0x1122).to_bytes(8, "little")), Value(0)]


def test_move_content_follows(kvm: KvmBackend) -> None:
    slot_with(kvm)
    new = 0x800000
    out = run(kvm, GuestWrite(0, GPA + 0x1000, 9), MemslotMove(1, new),
              GuestRead(0, new + 0x1000), GuestRead(1, GPA + 0x1000))
    assert out == [Value(9), Ok(), Value(9), Mmio(GPA + 0x1000, 8, False, bytes(8))]


def test_readonly_slot_write_is_mmio(kvm: KvmBackend) -> None:
    slot_with(kvm, flags=MEM_READONLY)
    out = run(kvm, HostWrite(1, 0, 4), GuestRead(0, GPA), GuestWrite(0, GPA, 6),
              HostRead(1, 0))
    assert out == [Ok(), Value(4), Mmio(GPA, 8, True, (6).to_bytes(8, "little")), Value(4)]


@pytest.mark.parametrize(("kind", "how", "kept"), [
    ("anon", "mmap_fixed", False), ("anon", "munmap_mmap", False), ("anon", "mremap", True),
    ("memfd", "mmap_fixed", True), ("memfd", "munmap_mmap", True), ("memfd", "mremap", True),
])
def test_remap(kvm: KvmBackend, kind: str, how: str, kept: bool) -> None:
    slot_with(kvm, kind)
    out = run(kvm, GuestWrite(0, GPA + 0x2000, 8), Remap(1, 1, 3, how),  # type: ignore[arg-type]
              GuestRead(0, GPA + 0x2000), GuestWrite(1, GPA + 0x2008, 1), HostRead(1, 0x2008))
    assert out == [Value(8), Ok(), Value(8 if kept else 0), Value(1), Value(1)]


def test_cow_replace_keeps_content_and_coherence(kvm: KvmBackend) -> None:
    slot_with(kvm)
    out = run(kvm, GuestWrite(0, GPA, 0xAB), GuestRead(1, GPA), CowReplace(1, 0, 2),
              GuestRead(0, GPA), GuestWrite(1, GPA, 0xCD), HostRead(1, 0))
    assert out == [Value(0xAB), Value(0xAB), Ok(), Value(0xAB), Value(0xCD), Value(0xCD)]


def test_memfd_punch_hole_reads_zero(kvm: KvmBackend) -> None:
    slot_with(kvm, "memfd")
    assert run(kvm, GuestWrite(0, GPA, 3), PunchHole(1, 0, 1), GuestRead(0, GPA),
               HostRead(1, 0)) == [Value(3), Ok(), Value(0), Value(0)]


@needs_gmem
def test_guest_memfd_shared_coherence_and_punch(kvm: KvmBackend) -> None:
    slot_with(kvm, "gmem")
    out = run(kvm, HostWrite(1, 0, 0x55), GuestRead(0, GPA), GuestWrite(1, GPA + 8, 0x66),
              HostRead(1, 8), PunchHole(1, 0, 1), GuestRead(0, GPA + 8), HostRead(1, 0))
    assert out == [Ok(), Value(0x55), Value(0x66), Value(0x66), Ok(), Value(0), Value(0)]


@needs_gmem
def test_guest_memfd_slot_ignores_vma_ops(kvm: KvmBackend) -> None:
    slot_with(kvm, "gmem")
    out = run(kvm, GuestWrite(0, GPA, 0x77), Mprotect(1, 0, 1, "none"), GuestRead(0, GPA),
              GuestWrite(0, GPA, 0x78), Mprotect(1, 0, 1, "rw"), HostRead(1, 0))
    assert out == [Value(0x77), Ok(), Value(0x77), Value(0x78), Ok(), Value(0x78)]


@needs_gmem
def test_guest_memfd_slot_cannot_move_or_change_flags(kvm: KvmBackend) -> None:
    slot_with(kvm, "gmem")
    assert run(kvm, MemslotMove(1, 0x800000), MemslotSetFlags(1, MEM_LOG_DIRTY_PAGES)) == [
        Errno(errno.EINVAL), Errno(errno.EINVAL)]


def test_dirty_log_written_subset_of_reported(kvm: KvmBackend) -> None:
    slot_with(kvm)
    assert one(kvm, GetDirtyLog(1)) == Errno(errno.ENOENT)  # logging off
    assert one(kvm, MemslotSetFlags(1, MEM_LOG_DIRTY_PAGES)) == Ok()
    written = {2, 5, 11}
    run(kvm, *(GuestWrite(i % 2, GPA + p * 0x1000, p + 1) for i, p in enumerate(written)))
    first = one(kvm, GetDirtyLog(1))
    assert isinstance(first, Dirty) and written <= set(first.pages)
    second = one(kvm, GetDirtyLog(1))  # GET cleared and re-protected: nothing new
    assert second == Dirty(())
    run(kvm, GuestWrite(0, GPA + 0x7000, 1))
    assert one(kvm, GetDirtyLog(1)) == Dirty((7,))
    assert one(kvm, MemslotSetFlags(1, 0)) == Ok()
    assert one(kvm, GetDirtyLog(1)) == Errno(errno.ENOENT)


def test_dirty_log_guest_read_may_set_dirty(kvm: KvmBackend) -> None:
    """Shadow MMU: a read of a writable host page maps it writable (guest PTE D=1) and marks
    it dirty; a read of a never-touched page (zero page) does not. reported ⊆ accessed."""
    assert run(kvm, CreateRegion(1, NPAGES), HostWrite(1, 0x1000, 5),
               MemslotCreate(1, GPA, NPAGES, 1, flags=MEM_LOG_DIRTY_PAGES),
               GuestRead(0, GPA + 0x1000), GuestRead(0, GPA + 0x3000), GetDirtyLog(1),
               GuestRead(0, GPA + 0x1000), GetDirtyLog(1)) == [
        Ok(), Ok(), Ok(), Value(5), Value(0), Dirty((1,)), Value(5), Dirty(())]


def test_dirty_log_manual_protect(kvm: KvmBackend) -> None:
    kvm.reset(BackendConfig(vcpus=1, manual_protect=True))
    slot_with(kvm, flags=MEM_LOG_DIRTY_PAGES)
    run(kvm, GuestWrite(0, GPA + 0x3000, 1), GuestWrite(0, GPA + 0x4000, 1))
    assert one(kvm, GetDirtyLog(1)) == Dirty((3, 4))
    assert one(kvm, GetDirtyLog(1)) == Dirty((3, 4))  # GET no longer clears
    assert one(kvm, ClearDirtyLog(1, 0, NPAGES, (3,))) == Ok()
    assert one(kvm, GetDirtyLog(1)) == Dirty((4,))
    run(kvm, GuestWrite(0, GPA + 0x3000, 2))  # re-protected by CLEAR: dirty again
    assert one(kvm, GetDirtyLog(1)) == Dirty((3, 4))


def test_dirty_log_initially_set(kvm: KvmBackend) -> None:
    kvm.reset(BackendConfig(vcpus=1, manual_protect=True, initially_set=True))
    slot_with(kvm, flags=MEM_LOG_DIRTY_PAGES)
    assert one(kvm, GetDirtyLog(1)) == Dirty(tuple(range(NPAGES)))


def test_memslot_errnos(kvm: KvmBackend) -> None:
    slot_with(kvm)
    assert run(kvm,
               MemslotCreate(2, GPA + 0x1000, 1, 1),  # overlaps slot 1
               MemslotCreate(2, GPA + 0x10800, 1, 1),  # unaligned gpa
               MemslotCreate(1, GPA, NPAGES - 1, 1),  # changing the size
               MemslotCreate(1, GPA, NPAGES, 1, region_page=0, flags=1 << 7),  # unknown flag
               MemslotDelete(9),  # no such slot
               MemslotSetFlags(1, MEM_READONLY),  # toggling READONLY
               MemslotCreate(40000, 0x900000, 1, 1),  # bad slot id
               ) == [Errno(errno.EEXIST), Errno(errno.EINVAL), Errno(errno.EINVAL),
                     Errno(errno.EINVAL), Errno(errno.EINVAL), Errno(errno.EINVAL),
                     Errno(errno.EINVAL)]


def test_caller_errors_raise(kvm: KvmBackend) -> None:
    slot_with(kvm)
    for op in (GuestRead(0, 0x1000), GuestRead(0, GPA + 4), GuestRead(5, GPA),
               HostRead(9, 0), MemslotDelete(0), MemslotMove(7, GPA)):
        with pytest.raises(InvalidArgument):
            kvm.apply(op)
    assert one(kvm, GuestRead(0, GPA)) == Value(0)  # still usable


def test_observation_equality_ignores_side_channels() -> None:
    assert Observation(Value(1), ("a line",), 5) == Observation(Value(1))
