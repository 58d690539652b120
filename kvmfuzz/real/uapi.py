"""The KVM and mm user ABI, standard library only: ioctl numbers, struct layouts, libc calls.

Sources: include/uapi/linux/kvm.h (kvm_userspace_memory_region2, kvm_create_guest_memfd,
kvm_dirty_log, kvm_clear_dirty_log, kvm_enable_cap, kvm_run), arch/x86/include/uapi/asm/kvm.h
(kvm_regs, kvm_sregs, kvm_segment, kvm_dtable), include/uapi/asm-generic/mman-common.h and
include/uapi/linux/falloc.h. Only x86-64 is supported.

Every system call goes through ctypes' libc with ``use_errno``: the GIL is released for the
whole call (vCPU threads spin in KVM_RUN while a host thread mutates), and a failure comes back
as a positive errno (``SysResult``) instead of an exception, because errnos are observations.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Final

# --- ioctl encoding (include/uapi/asm-generic/ioctl.h) --------------------------------------

_IOC_NONE: Final = 0
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2


def _ioc(direction: int, nr: int, size: int, kind: int = 0xAE) -> int:
    return (direction << 30) | (size << 16) | (kind << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# --- structures -----------------------------------------------------------------------------

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class KvmUserspaceMemoryRegion2(ctypes.Structure):
    _fields_ = (
        ("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
        ("userspace_addr", u64), ("guest_memfd_offset", u64), ("guest_memfd", u32),
        ("pad1", u32), ("pad2", u64 * 14),
    )


class KvmCreateGuestMemfd(ctypes.Structure):
    _fields_ = (("size", u64), ("flags", u64), ("reserved", u64 * 6))


class KvmDirtyLog(ctypes.Structure):
    _fields_ = (("slot", u32), ("padding1", u32), ("dirty_bitmap", u64))


class KvmClearDirtyLog(ctypes.Structure):
    _fields_ = (("slot", u32), ("num_pages", u32), ("first_page", u64), ("dirty_bitmap", u64))


class KvmEnableCap(ctypes.Structure):
    _fields_ = (("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64))


class KvmRegs(ctypes.Structure):
    _fields_ = tuple((name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"))


class KvmSegment(ctypes.Structure):
    _fields_ = (
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8),
        ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
        ("unusable", u8), ("padding", u8),
    )


class KvmDtable(ctypes.Structure):
    _fields_ = (("base", u64), ("limit", u16), ("padding", u16 * 3))


class KvmSregs(ctypes.Structure):
    _fields_ = (
        ("cs", KvmSegment), ("ds", KvmSegment), ("es", KvmSegment), ("fs", KvmSegment),
        ("gs", KvmSegment), ("ss", KvmSegment), ("tr", KvmSegment), ("ldt", KvmSegment),
        ("gdt", KvmDtable), ("idt", KvmDtable),
        ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64), ("efer", u64),
        ("apic_base", u64), ("interrupt_bitmap", u64 * 4),
    )


assert ctypes.sizeof(KvmUserspaceMemoryRegion2) == 160
assert ctypes.sizeof(KvmCreateGuestMemfd) == 64
assert ctypes.sizeof(KvmRegs) == 144
assert ctypes.sizeof(KvmSregs) == 312

# --- ioctls ---------------------------------------------------------------------------------

KVM_GET_API_VERSION: Final = _io(0x00)
KVM_CREATE_VM: Final = _io(0x01)
KVM_CHECK_EXTENSION: Final = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE: Final = _io(0x04)
KVM_CREATE_VCPU: Final = _io(0x41)
KVM_GET_DIRTY_LOG: Final = _iow(0x42, ctypes.sizeof(KvmDirtyLog))
KVM_SET_USER_MEMORY_REGION2: Final = _iow(0x49, ctypes.sizeof(KvmUserspaceMemoryRegion2))
KVM_RUN: Final = _io(0x80)
KVM_GET_REGS: Final = _ior(0x81, ctypes.sizeof(KvmRegs))
KVM_SET_REGS: Final = _iow(0x82, ctypes.sizeof(KvmRegs))
KVM_GET_SREGS: Final = _ior(0x83, ctypes.sizeof(KvmSregs))
KVM_SET_SREGS: Final = _iow(0x84, ctypes.sizeof(KvmSregs))
KVM_ENABLE_CAP: Final = _iow(0xA3, ctypes.sizeof(KvmEnableCap))
KVM_CLEAR_DIRTY_LOG: Final = _iowr(0xC0, ctypes.sizeof(KvmClearDirtyLog))
KVM_CREATE_GUEST_MEMFD: Final = _iowr(0xD4, ctypes.sizeof(KvmCreateGuestMemfd))

KVM_API_VERSION: Final = 12

# capabilities
KVM_CAP_READONLY_MEM: Final = 31
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: Final = 168
KVM_CAP_USER_MEMORY2: Final = 231
KVM_CAP_GUEST_MEMFD: Final = 234
KVM_CAP_GUEST_MEMFD_FLAGS: Final = 244

KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: Final = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET: Final = 1 << 1

# memslot flags
KVM_MEM_LOG_DIRTY_PAGES: Final = 1 << 0
KVM_MEM_READONLY: Final = 1 << 1
KVM_MEM_GUEST_MEMFD: Final = 1 << 2

GUEST_MEMFD_FLAG_MMAP: Final = 1 << 0
GUEST_MEMFD_FLAG_INIT_SHARED: Final = 1 << 1

# exit reasons and kvm_run offsets (the union starts at byte 32)
KVM_EXIT_UNKNOWN: Final = 0
KVM_EXIT_IO: Final = 2
KVM_EXIT_HLT: Final = 5
KVM_EXIT_MMIO: Final = 6
KVM_EXIT_SHUTDOWN: Final = 8
KVM_EXIT_FAIL_ENTRY: Final = 9
KVM_EXIT_INTR: Final = 10
KVM_EXIT_INTERNAL_ERROR: Final = 17
KVM_EXIT_MEMORY_FAULT: Final = 39
KVM_EXIT_IO_OUT: Final = 1

RUN_EXIT_REASON: Final = 8
RUN_IO_DIRECTION: Final = 32
RUN_IO_SIZE: Final = 33
RUN_IO_PORT: Final = 34
RUN_IO_DATA_OFFSET: Final = 40
RUN_MMIO_PHYS_ADDR: Final = 32
RUN_MMIO_DATA: Final = 40
RUN_MMIO_LEN: Final = 48
RUN_MMIO_IS_WRITE: Final = 52
RUN_UNION: Final = 32

EXIT_NAMES: Final = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 17: "INTERNAL_ERROR", 24: "SYSTEM_EVENT",
    39: "MEMORY_FAULT",
}

# --- mm constants ---------------------------------------------------------------------------

PROT_NONE: Final = 0
PROT_READ: Final = 1
PROT_WRITE: Final = 2
PROT_EXEC: Final = 4
MAP_SHARED: Final = 0x01
MAP_PRIVATE: Final = 0x02
MAP_FIXED: Final = 0x10
MAP_ANONYMOUS: Final = 0x20
MAP_NORESERVE: Final = 0x4000
MAP_FAILED: Final = (1 << 64) - 1
MADV_DONTNEED: Final = 4
MADV_HUGEPAGE: Final = 14
MREMAP_MAYMOVE: Final = 1
MREMAP_FIXED: Final = 2
FALLOC_FL_KEEP_SIZE: Final = 0x01
FALLOC_FL_PUNCH_HOLE: Final = 0x02
MFD_CLOEXEC: Final = 0x0001

# --- libc -----------------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int
_mmap = _libc.mmap
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long)
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int
_mprotect = _libc.mprotect
_mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_mprotect.restype = ctypes.c_int
_madvise = _libc.madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_madvise.restype = ctypes.c_int
_mremap = _libc.mremap
_mremap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int,
                    ctypes.c_void_p)
_mremap.restype = ctypes.c_void_p
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
_fallocate.restype = ctypes.c_int
_memfd_create = _libc.memfd_create
_memfd_create.argtypes = (ctypes.c_char_p, ctypes.c_uint)
_memfd_create.restype = ctypes.c_int


class _Iovec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


_process_vm_readv = _libc.process_vm_readv
_process_vm_readv.argtypes = (ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                              ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong)
_process_vm_readv.restype = ctypes.c_ssize_t
_process_vm_writev = _libc.process_vm_writev
_process_vm_writev.argtypes = _process_vm_readv.argtypes
_process_vm_writev.restype = ctypes.c_ssize_t


class SysError(OSError):
    """A system call that the harness itself needs failed (not an observation)."""


def _errno() -> int:
    return ctypes.get_errno()


CArg = ctypes.Structure | ctypes.Array[Any] | int | None


def ioctl(fd: int, request: int, arg: CArg = None) -> tuple[int, int]:
    """ioctl(2): ``(return value, errno)``; errno is 0 on success.

    ``arg`` is None, an int (passed by value) or a ctypes object (passed by reference).
    """
    if arg is None:
        carg: ctypes.c_void_p | int | None = None
    elif isinstance(arg, int):
        carg = ctypes.c_void_p(arg)
    else:
        carg = ctypes.addressof(arg)
    ret = _ioctl(fd, request, carg)
    return (ret, 0) if ret >= 0 else (ret, _errno())


def ioctl_ok(fd: int, request: int, arg: CArg = None, what: str = "ioctl") -> int:
    """ioctl(2) that must succeed (harness plumbing): raises SysError otherwise."""
    ret, err = ioctl(fd, request, arg)
    if err:
        raise SysError(err, f"{what}: {os.strerror(err)}")
    return ret


def mmap(addr: int, length: int, prot: int, flags: int, fd: int = -1, offset: int = 0
         ) -> tuple[int, int]:
    """mmap(2): ``(address, errno)``."""
    ret = _mmap(addr or None, length, prot, flags, fd, offset)
    if ret is None or ret == MAP_FAILED:
        return 0, _errno()
    return int(ret), 0


def munmap(addr: int, length: int) -> int:
    return 0 if _munmap(addr, length) == 0 else _errno()


def mprotect(addr: int, length: int, prot: int) -> int:
    return 0 if _mprotect(addr, length, prot) == 0 else _errno()


def madvise(addr: int, length: int, advice: int) -> int:
    return 0 if _madvise(addr, length, advice) == 0 else _errno()


def mremap(old: int, old_len: int, new_len: int, flags: int, new: int = 0) -> tuple[int, int]:
    ret = _mremap(old, old_len, new_len, flags, new or None)
    if ret is None or ret == MAP_FAILED:
        return 0, _errno()
    return int(ret), 0


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    return 0 if _fallocate(fd, mode, offset, length) == 0 else _errno()


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> tuple[int, int]:
    ret = _memfd_create(name.encode(), flags)
    return (ret, 0) if ret >= 0 else (-1, _errno())


def process_read(addr: int, size: int) -> tuple[bytes, int]:
    """Read our own memory without faulting the process: ``(data, errno)`` (EFAULT if bad)."""
    buf = ctypes.create_string_buffer(size)
    local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), size)
    remote = _Iovec(addr, size)
    ret = _process_vm_readv(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if ret != size:
        return b"", _errno() if ret < 0 else 14  # EFAULT on a short read
    return buf.raw, 0


def process_write(addr: int, data: bytes) -> int:
    """Write our own memory without faulting the process: errno (EFAULT if not writable)."""
    buf = ctypes.create_string_buffer(data, len(data))
    local = _Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    remote = _Iovec(addr, len(data))
    ret = _process_vm_writev(os.getpid(), ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if ret != len(data):
        return _errno() if ret < 0 else 14
    return 0


def read_mem(addr: int, size: int) -> bytes:
    """A plain load from our own memory (a bad address kills the process: SIGSEGV)."""
    return ctypes.string_at(addr, size)


def write_mem(addr: int, data: bytes) -> None:
    """A plain store to our own memory (a bad address kills the process: SIGSEGV)."""
    ctypes.memmove(addr, data, len(data))
