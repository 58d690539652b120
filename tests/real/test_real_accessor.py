"""The guest accessor: its checked-in bytes, the system image, and a CPL3 roundtrip."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmfuzz.real import accessor as acc
from kvmfuzz.real import uapi
from kvmfuzz.real.backend import KvmBackend
from kvmfuzz.real.harness import guest_memfd_support, guest_memfd_usable, kvm_usable, region_kinds
from kvmfuzz.real.ops import (
    CreateRegion,
    GuestRead,
    GuestWrite,
    HostRead,
    HostWrite,
    MemslotCreate,
    Ok,
    Value,
)

USABLE, REASON = kvm_usable()
kvm_only = pytest.mark.skipif(not USABLE, reason=f"needs a usable /dev/kvm: {REASON}")

SOURCE = Path(acc.__file__).parent / "guest" / "accessor.S"


@pytest.mark.skipif(shutil.which("as") is None or shutil.which("objcopy") is None,
                    reason="binutils (as, objcopy) not installed")
def test_checked_in_bytes_match_the_source(tmp_path: Path) -> None:
    obj, binary = tmp_path / "accessor.o", tmp_path / "accessor.bin"
    subprocess.run(["as", "--64", "-o", str(obj), str(SOURCE)], check=True)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(obj), str(binary)],
                   check=True)
    assert binary.read_bytes() == acc.ACCESSOR_CODE


def test_system_image_layout() -> None:
    image = acc.system_image()
    assert len(image) == acc.SYSTEM_SIZE
    assert image[:len(acc.ACCESSOR_CODE)] == acc.ACCESSOR_CODE
    pml4e, = struct.unpack_from("<Q", image, acc.PML4_GPA)
    assert pml4e & ~0xFFF == acc.PDPT_GPA and pml4e & 0x7 == 0x7  # present, writable, user
    # 4 KiB leaves: code read-only, mailbox writable, data writable
    def pte(gpa: int) -> int:
        return int(struct.unpack_from("<Q", image, acc.PT_GPA + 8 * (gpa >> 12))[0])
    assert pte(acc.CODE_GPA) & 0x2 == 0
    assert pte(acc.MAILBOX_GPA) & 0x2 == 0x2
    assert pte(acc.DATA_GPA_MIN) == acc.DATA_GPA_MIN | 0x67
    # a 2 MiB leaf above the 4 KiB window
    pde, = struct.unpack_from("<Q", image, acc.PD_GPA + 8 * (acc.SMALL_PAGES_END >> 21))
    assert pde == acc.SMALL_PAGES_END | 0xE7
    iomap, = struct.unpack_from("<H", image, acc.TSS_GPA + 102)
    assert iomap == acc.TSS_IOMAP_BASE and image[acc.TSS_GPA + acc.TSS_LIMIT] == 0xFF


def test_kvm_usable_gives_a_reason() -> None:
    usable, reason = kvm_usable()
    assert isinstance(usable, bool) and reason


def test_guest_memfd_probe_gives_a_reason() -> None:
    usable, reason = guest_memfd_usable()
    assert isinstance(usable, bool) and reason
    kinds = region_kinds()
    assert ("gmem" in kinds.kinds) == usable
    assert kinds.left_out == ("" if usable else f"gmem left out: {reason}")
    # the verdict names what is missing
    none, why = guest_memfd_support(0, 0)
    assert not none and "KVM_CAP_GUEST_MEMFD is 0" in why
    mmap_only, why = guest_memfd_support(1, uapi.GUEST_MEMFD_FLAG_MMAP)
    assert not mmap_only and "INIT_SHARED" in why and "MMAP|" not in why
    neither, why = guest_memfd_support(1, 0)
    assert not neither and "MMAP|INIT_SHARED" in why
    both, why = guest_memfd_support(1, uapi.GUEST_MEMFD_FLAG_MMAP
                                    | uapi.GUEST_MEMFD_FLAG_INIT_SHARED | 1 << 2)
    assert both and why


@pytest.mark.kvm
@kvm_only
@pytest.mark.parametrize("size", [1, 2, 4, 8])
def test_roundtrip(kvm: KvmBackend, size: int) -> None:
    gpa = 0x200000
    value = int.from_bytes(bytes(range(0xA1, 0xA1 + size)), "little")
    assert kvm.apply(CreateRegion(1, 4)).outcome == Ok()
    kvm.apply(MemslotCreate(1, gpa, 4, 1))
    assert kvm.apply(GuestWrite(0, gpa + 8, value, size)).outcome == Value(value)
    assert kvm.apply(GuestRead(1, gpa + 8, size)).outcome == Value(value)
    assert kvm.apply(HostRead(1, 8, size)).outcome == Value(value)
    kvm.apply(HostWrite(1, 16, 0x0123456789ABCDEF))
    assert kvm.apply(GuestRead(0, gpa + 16)).outcome == Value(0x0123456789ABCDEF)
    # a narrow read of a wide host value is zero-extended, little endian
    assert kvm.apply(GuestRead(0, gpa + 16, size)).outcome == Value(
        0x0123456789ABCDEF & ((1 << 8 * size) - 1))

