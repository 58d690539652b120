"""A minimal KVM harness: VM, vCPUs running the CPL3 guest accessor, memslots, dirty log.

Standard library only (ctypes for the system calls, see uapi.py). The pieces:

- ``Vm``: a VM fd with its system slot (code, mailboxes, identity page tables; built once,
  never written after the first KVM_RUN), vCPUs, KVM_SET_USER_MEMORY_REGION2,
  KVM_CREATE_GUEST_MEMFD, GET/CLEAR_DIRTY_LOG, and explicit teardown.
- ``Vcpu``: one accessor; ``access()`` writes its mailbox, runs until the accessor's port-I/O
  report (one exit; two when the access itself exits for MMIO) and decodes the outcome.
- ``Region``: host memory that backs memslots (anon, memfd, guest_memfd) and the mm operations
  that fire the MMU notifiers on it.
- ``kvm_usable()``: whether this machine can run all of it, and why not.
- ``guest_memfd_usable()`` / ``region_kinds()``: whether this KVM offers guest_memfd with the
  flags a ``gmem`` region needs, and so which region kinds a run may create (and why not gmem).

Thread use: a ``Vcpu`` belongs to one thread at a time; ``Vm`` ioctls may be issued from
another thread while vCPUs run (KVM serialises memslot updates itself).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from typing import Final, NamedTuple

from kvmfuzz.errors import InvalidArgument
from kvmfuzz.real import accessor as acc
from kvmfuzz.real import uapi
from kvmfuzz.real.ops import (
    Errno,
    Exit,
    Mmio,
    Ok,
    Outcome,
    RegionKind,
    RunFailed,
    Value,
)

PAGE_SIZE: Final = 4096
KVM_DEV: Final = "/dev/kvm"
_CR0_PE, _CR0_ET, _CR0_NE, _CR0_WP, _CR0_PG = 1, 0x10, 0x20, 1 << 16, 1 << 31
_CR4_PAE = 0x20
_EFER_LME, _EFER_LMA = 0x100, 0x400
_RFLAGS_IOPL3 = 0x3002
_MAX_EXITS_PER_ACCESS = 16

REGION_KINDS: Final[tuple[RegionKind, ...]] = ("anon", "memfd", "gmem")
GMEM_FLAGS: Final = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED

_PROTS: Final = {"none": uapi.PROT_NONE, "r": uapi.PROT_READ,
                 "rw": uapi.PROT_READ | uapi.PROT_WRITE}


class Kvm:
    """The /dev/kvm system fd."""

    def __init__(self) -> None:
        self.fd = os.open(KVM_DEV, os.O_RDWR | os.O_CLOEXEC)
        try:
            version = uapi.ioctl_ok(self.fd, uapi.KVM_GET_API_VERSION, what="KVM_GET_API_VERSION")
            if version != uapi.KVM_API_VERSION:
                raise uapi.SysError(errno.ENOTSUP, f"KVM API version {version}, expected 12")
            self.vcpu_mmap_size = uapi.ioctl_ok(self.fd, uapi.KVM_GET_VCPU_MMAP_SIZE,
                                                what="KVM_GET_VCPU_MMAP_SIZE")
        except BaseException:
            os.close(self.fd)
            raise

    def check_extension(self, cap: int) -> int:
        ret, err = uapi.ioctl(self.fd, uapi.KVM_CHECK_EXTENSION, cap)
        return 0 if err else ret

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Region:
    """Host memory for memslots: ``npages`` mapped read-write at ``addr``.

    ``anon``: MAP_PRIVATE|MAP_ANONYMOUS. ``memfd``: a memfd mapped MAP_SHARED. ``gmem``: a
    guest_memfd created on ``vm`` with MMAP|INIT_SHARED, mapped MAP_SHARED. Every mm operation
    returns an errno (0 = success): errnos are observations.
    """

    def __init__(self, kind: RegionKind, npages: int, vm: Vm | None = None,
                 thp: bool = False) -> None:
        self.kind: RegionKind = kind
        self.npages = npages
        self.size = npages * PAGE_SIZE
        self.fd = -1
        if kind == "memfd":
            fd, err = uapi.memfd_create("kvmfuzz-region")
            if err:
                raise uapi.SysError(err, f"memfd_create: {os.strerror(err)}")
            self.fd = fd
            os.ftruncate(fd, self.size)
        elif kind == "gmem":
            if vm is None:
                raise InvalidArgument("a gmem region needs its VM")
            fd, err = vm.create_guest_memfd(self.size, GMEM_FLAGS)
            if err:
                raise uapi.SysError(err, f"KVM_CREATE_GUEST_MEMFD: {os.strerror(err)} "
                                         "(see guest_memfd_usable())")
            self.fd = fd
        elif kind != "anon":
            raise InvalidArgument(f"region kind {kind!r}: expected anon, memfd or gmem")
        addr, err = uapi.mmap(0, self.size, uapi.PROT_READ | uapi.PROT_WRITE, self._map_flags(),
                              self.fd, 0)
        if err:
            self._close_fd()
            raise uapi.SysError(err, f"mmap {kind} region: {os.strerror(err)}")
        self.addr = addr
        if thp:
            uapi.madvise(addr, self.size, uapi.MADV_HUGEPAGE)

    def _map_flags(self) -> int:
        if self.fd < 0:
            return uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_NORESERVE
        return uapi.MAP_SHARED

    def check_range(self, page: int, npages: int) -> None:
        if page < 0 or npages <= 0 or page + npages > self.npages:
            raise InvalidArgument(
                f"pages [{page}, {page + npages}) outside the {self.npages}-page {self.kind} "
                "region")

    def check_bytes(self, offset: int, size: int) -> None:
        if offset < 0 or offset + size > self.size:
            raise InvalidArgument(f"bytes [{offset:#x}, +{size}) outside the region")

    def hva(self, page: int) -> int:
        return self.addr + page * PAGE_SIZE

    # host accesses
    def read(self, offset: int, size: int, checked: bool) -> Outcome:
        self.check_bytes(offset, size)
        if checked:
            data, err = uapi.process_read(self.addr + offset, size)
            if err:
                return Errno(err)
        else:
            data = uapi.read_mem(self.addr + offset, size)
        return Value(int.from_bytes(data, "little"))

    def write(self, offset: int, value: int, size: int, checked: bool) -> Outcome:
        self.check_bytes(offset, size)
        data = value.to_bytes(size, "little")
        if checked:
            err = uapi.process_write(self.addr + offset, data)
            return Errno(err) if err else Ok()
        uapi.write_mem(self.addr + offset, data)
        return Ok()

    # mm operations firing MMU notifiers
    def dontneed(self, page: int, npages: int) -> int:
        self.check_range(page, npages)
        return uapi.madvise(self.hva(page), npages * PAGE_SIZE, uapi.MADV_DONTNEED)

    def protect(self, page: int, npages: int, prot: str) -> int:
        self.check_range(page, npages)
        return uapi.mprotect(self.hva(page), npages * PAGE_SIZE, _PROTS[prot])

    def _map_at(self, page: int, npages: int) -> int:
        addr, err = uapi.mmap(self.hva(page), npages * PAGE_SIZE,
                              uapi.PROT_READ | uapi.PROT_WRITE, self._map_flags() | uapi.MAP_FIXED,
                              self.fd, page * PAGE_SIZE if self.fd >= 0 else 0)
        if not err and addr != self.hva(page):
            raise uapi.SysError(errno.EFAULT, "mmap(MAP_FIXED) moved the mapping")
        return err

    def remap(self, page: int, npages: int, how: str) -> int:
        self.check_range(page, npages)
        length = npages * PAGE_SIZE
        if how == "mmap_fixed":
            return self._map_at(page, npages)
        if how == "munmap_mmap":
            err = uapi.munmap(self.hva(page), length)
            return err or self._map_at(page, npages)
        if how == "mremap":
            tmp, err = uapi.mmap(0, length, uapi.PROT_NONE,
                                 uapi.MAP_PRIVATE | uapi.MAP_ANONYMOUS | uapi.MAP_NORESERVE)
            if err:
                return err
            flags = uapi.MREMAP_MAYMOVE | uapi.MREMAP_FIXED
            _, err = uapi.mremap(self.hva(page), length, length, flags, tmp)
            if err:
                uapi.munmap(tmp, length)
                return err
            _, err = uapi.mremap(tmp, length, length, flags, self.hva(page))
            if err:  # leave the range mapped (fresh) rather than a hole
                uapi.munmap(tmp, length)
                self._map_at(page, npages)
                return err
            # a moved range keeps its protection; remap promises read-write
            return uapi.mprotect(self.hva(page), length, uapi.PROT_READ | uapi.PROT_WRITE)
        raise InvalidArgument(f"remap how={how!r}: expected mmap_fixed, munmap_mmap or mremap")

    def cow_replace(self, page: int, npages: int) -> int:
        """Fork a child that holds the pages; store each page's first byte back (COW break)."""
        self.check_range(page, npages)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: wait for the parent, never return into Python code paths
            try:
                os.close(wfd)
                os.read(rfd, 1)
            finally:
                os._exit(0)
        os.close(rfd)
        first_err = 0
        try:
            for p in range(page, page + npages):
                data, err = uapi.process_read(self.hva(p), 1)
                err = err or uapi.process_write(self.hva(p), data)
                first_err = first_err or err
        finally:
            os.close(wfd)
            os.waitpid(pid, 0)
        return first_err

    def punch_hole(self, page: int, npages: int) -> int:
        self.check_range(page, npages)
        if self.fd < 0:
            raise InvalidArgument("punch_hole needs a memfd or gmem region, not anon")
        return uapi.fallocate(self.fd, uapi.FALLOC_FL_PUNCH_HOLE | uapi.FALLOC_FL_KEEP_SIZE,
                              page * PAGE_SIZE, npages * PAGE_SIZE)

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        if self.addr:
            uapi.munmap(self.addr, self.size)
            self.addr = 0
        self._close_fd()


class Vcpu:
    """One vCPU running the accessor; ``access()`` is one command."""

    def __init__(self, vm: Vm, index: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = uapi.ioctl_ok(vm.fd, uapi.KVM_CREATE_VCPU, index, what="KVM_CREATE_VCPU")
        self.run = 0
        try:
            run, err = uapi.mmap(0, vm.kvm.vcpu_mmap_size, uapi.PROT_READ | uapi.PROT_WRITE,
                                 uapi.MAP_SHARED, self.fd, 0)
            if err:
                raise uapi.SysError(err, f"mmap kvm_run: {os.strerror(err)}")
            self.run = run
            self._setup_registers()
        except BaseException:
            self.close()
            raise
        assert vm.system is not None
        self.mailbox = vm.system.addr + acc.mailbox_gpa(index)
        self._exit_reason = ctypes.c_uint32.from_address(run + uapi.RUN_EXIT_REASON)
        self._io_port = ctypes.c_uint16.from_address(run + uapi.RUN_IO_PORT)
        self._io_direction = ctypes.c_uint8.from_address(run + uapi.RUN_IO_DIRECTION)
        self._mmio_addr = ctypes.c_uint64.from_address(run + uapi.RUN_MMIO_PHYS_ADDR)
        self._mmio_len = ctypes.c_uint32.from_address(run + uapi.RUN_MMIO_LEN)
        self._mmio_is_write = ctypes.c_uint8.from_address(run + uapi.RUN_MMIO_IS_WRITE)
        self._result = ctypes.c_uint64.from_address(self.mailbox + acc.MB_RESULT)

    def _setup_registers(self) -> None:
        sregs = uapi.KvmSregs()
        uapi.ioctl_ok(self.fd, uapi.KVM_GET_SREGS, sregs, what="KVM_GET_SREGS")
        code = uapi.KvmSegment(base=0, limit=0xFFFFFFFF, selector=0x1B, type=0xB, present=1,
                               dpl=3, db=0, s=1, l=1, g=1)
        data = uapi.KvmSegment(base=0, limit=0xFFFFFFFF, selector=0x23, type=0x3, present=1,
                               dpl=3, db=1, s=1, l=0, g=1)
        sregs.cs = code
        sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
        sregs.tr = uapi.KvmSegment(base=acc.TSS_GPA, limit=acc.TSS_LIMIT, selector=0x28,
                                   type=0xB, present=1, dpl=0, db=0, s=0, l=0, g=0)
        sregs.ldt = uapi.KvmSegment(base=0, limit=0xFFFF, selector=0, type=0x2, present=1)
        sregs.cr0 = _CR0_PE | _CR0_ET | _CR0_NE | _CR0_WP | _CR0_PG
        sregs.cr3 = acc.PML4_GPA
        sregs.cr4 = _CR4_PAE
        sregs.efer = _EFER_LME | _EFER_LMA
        uapi.ioctl_ok(self.fd, uapi.KVM_SET_SREGS, sregs, what="KVM_SET_SREGS")
        self._regs = uapi.KvmRegs(rip=acc.CODE_GPA + acc.ACCESSOR_ENTRY,
                                  rbx=acc.mailbox_gpa(self.index), rflags=_RFLAGS_IOPL3)
        self.rewind()

    def rewind(self) -> None:
        """Put the accessor back at its command loop (after a failed KVM_RUN)."""
        uapi.ioctl_ok(self.fd, uapi.KVM_SET_REGS, self._regs, what="KVM_SET_REGS")

    def access(self, cmd: int, gpa: int, value: int = 0) -> Outcome:
        """Run one accessor command to its report; MMIO reads are answered with zeros."""
        uapi.write_mem(self.mailbox, struct.pack("<QQQ", cmd, gpa, value))
        mmio: Mmio | None = None
        for _ in range(_MAX_EXITS_PER_ACCESS):
            _, err = uapi.ioctl(self.fd, uapi.KVM_RUN)
            if err == errno.EINTR or err == errno.EAGAIN:
                continue
            reason = self._exit_reason.value
            if err:
                fault_gpa = None
                if reason == uapi.KVM_EXIT_MEMORY_FAULT:
                    fault_gpa = ctypes.c_uint64.from_address(self.run + 40).value
                self.rewind()
                return RunFailed(err, reason, fault_gpa)
            if reason == uapi.KVM_EXIT_IO:
                if (self._io_port.value != acc.ACCESSOR_PORT
                        or self._io_direction.value != uapi.KVM_EXIT_IO_OUT):
                    return Exit(reason, f"port {self._io_port.value:#x} "
                                        f"dir {self._io_direction.value}")
                return mmio if mmio is not None else Value(self._result.value)
            if reason == uapi.KVM_EXIT_MMIO:
                length = self._mmio_len.value
                is_write = bool(self._mmio_is_write.value)
                data_addr = self.run + uapi.RUN_MMIO_DATA
                if is_write:
                    data = uapi.read_mem(data_addr, length)
                else:
                    data = bytes(length)
                    uapi.write_mem(data_addr, data)
                if mmio is not None:
                    return Exit(reason, f"second MMIO exit at {self._mmio_addr.value:#x}")
                mmio = Mmio(self._mmio_addr.value, length, is_write, data)
                continue
            if reason == uapi.KVM_EXIT_INTR:
                continue
            detail = uapi.read_mem(self.run + uapi.RUN_UNION, 32).hex()
            return Exit(reason, f"{uapi.EXIT_NAMES.get(reason, '?')} union={detail}")
        return Exit(self._exit_reason.value, f"no report after {_MAX_EXITS_PER_ACCESS} exits")

    def close(self) -> None:
        if self.run:
            uapi.munmap(self.run, self.vm.kvm.vcpu_mmap_size)
            self.run = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vm:
    """A default-type VM with the accessor's system slot and ``vcpus`` accessors."""

    def __init__(self, kvm: Kvm, vcpus: int = 1, manual_protect: bool = False,
                 initially_set: bool = False) -> None:
        if not 1 <= vcpus <= acc.MAX_VCPUS:
            raise InvalidArgument(f"vcpus={vcpus}: expected 1..{acc.MAX_VCPUS}")
        self.kvm = kvm
        self.fd = uapi.ioctl_ok(kvm.fd, uapi.KVM_CREATE_VM, 0, what="KVM_CREATE_VM")
        self.vcpus: list[Vcpu] = []
        self.system: Region | None = None
        try:
            if manual_protect:
                mode = uapi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
                if initially_set:
                    mode |= uapi.KVM_DIRTY_LOG_INITIALLY_SET
                cap = uapi.KvmEnableCap(cap=uapi.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)
                cap.args[0] = mode
                uapi.ioctl_ok(self.fd, uapi.KVM_ENABLE_CAP, cap, what="KVM_ENABLE_CAP")
            system = Region("anon", acc.SYSTEM_SIZE // PAGE_SIZE)
            self.system = system
            uapi.write_mem(system.addr, acc.system_image())
            err = self.set_memory_region(acc.SYSTEM_SLOT, 0, acc.SYSTEM_GPA, acc.SYSTEM_SIZE,
                                         system.addr)
            if err:
                raise uapi.SysError(err, f"system memslot: {os.strerror(err)}")
            for i in range(vcpus):
                self.vcpus.append(Vcpu(self, i))
        except BaseException:
            self.close()
            raise

    def set_memory_region(self, slot: int, flags: int, gpa: int, size: int, uaddr: int,
                          gmem_fd: int = 0, gmem_offset: int = 0) -> int:
        """KVM_SET_USER_MEMORY_REGION2: errno (0 = success)."""
        region = uapi.KvmUserspaceMemoryRegion2(
            slot=slot & 0xFFFFFFFF, flags=flags & 0xFFFFFFFF, guest_phys_addr=gpa,
            memory_size=size, userspace_addr=uaddr, guest_memfd_offset=gmem_offset,
            guest_memfd=gmem_fd & 0xFFFFFFFF)
        return uapi.ioctl(self.fd, uapi.KVM_SET_USER_MEMORY_REGION2, region)[1]

    def create_guest_memfd(self, size: int, flags: int) -> tuple[int, int]:
        args = uapi.KvmCreateGuestMemfd(size=size, flags=flags)
        return uapi.ioctl(self.fd, uapi.KVM_CREATE_GUEST_MEMFD, args)

    def get_dirty_log(self, slot: int, npages: int) -> tuple[int, tuple[int, ...]]:
        """KVM_GET_DIRTY_LOG: ``(errno, dirty page indices)``."""
        nbytes = max(8, (npages + 63) // 64 * 8)
        bitmap = ctypes.create_string_buffer(nbytes)
        log = uapi.KvmDirtyLog(slot=slot & 0xFFFFFFFF,
                               dirty_bitmap=ctypes.addressof(bitmap))
        err = uapi.ioctl(self.fd, uapi.KVM_GET_DIRTY_LOG, log)[1]
        if err:
            return err, ()
        bits = int.from_bytes(bitmap.raw, "little")
        return 0, tuple(i for i in range(npages) if bits >> i & 1)

    def clear_dirty_log(self, slot: int, first_page: int, npages: int,
                        pages: tuple[int, ...] | None) -> int:
        """KVM_CLEAR_DIRTY_LOG: clear ``pages`` (slot-relative) or the whole range: errno."""
        nbytes = max(8, (npages + 63) // 64 * 8)
        bits = (1 << npages) - 1 if pages is None else sum(
            1 << (p - first_page) for p in set(pages) if first_page <= p < first_page + npages)
        bitmap = ctypes.create_string_buffer(bits.to_bytes(nbytes, "little"), nbytes)
        clear = uapi.KvmClearDirtyLog(slot=slot & 0xFFFFFFFF, num_pages=npages & 0xFFFFFFFF,
                                      first_page=first_page,
                                      dirty_bitmap=ctypes.addressof(bitmap))
        return uapi.ioctl(self.fd, uapi.KVM_CLEAR_DIRTY_LOG, clear)[1]

    def close(self) -> None:
        """Tear down explicitly: kvm_run mappings and vCPU fds first, then the VM fd."""
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.system is not None:
            self.system.close()
            self.system = None


def kvm_usable() -> tuple[bool, str]:
    """Whether /dev/kvm can run the CPL3 accessor here: ``(usable, reason)``."""
    if not os.path.exists(KVM_DEV):
        return False, f"{KVM_DEV} does not exist"
    if not os.access(KVM_DEV, os.R_OK | os.W_OK):
        return False, f"{KVM_DEV} is not readable and writable by uid {os.getuid()}"
    try:
        kvm = Kvm()
    except OSError as exc:
        return False, f"cannot use {KVM_DEV}: {exc}"
    try:
        missing = [name for name, cap in (("USER_MEMORY2", uapi.KVM_CAP_USER_MEMORY2),
                                          ("READONLY_MEM", uapi.KVM_CAP_READONLY_MEM))
                   if not kvm.check_extension(cap)]
        if missing:
            return False, f"KVM lacks capabilities {missing}"
        vm = Vm(kvm, vcpus=1)
        try:
            outcome = vm.vcpus[0].access(acc.CMD_READ[8], acc.CODE_GPA)
        finally:
            vm.close()
        expected = int.from_bytes(acc.ACCESSOR_CODE[:8], "little")
        if outcome != Value(expected):
            return False, f"the CPL3 accessor does not run: {outcome}"
        return True, "ok"
    except OSError as exc:
        return False, f"KVM VM setup failed: {exc}"
    finally:
        kvm.close()


def guest_memfd_support(cap: int, flags: int) -> tuple[bool, str]:
    """The verdict for a VM's KVM_CAP_GUEST_MEMFD ``cap`` and KVM_CAP_GUEST_MEMFD_FLAGS
    ``flags``: ``(usable, reason)``; a ``gmem`` region needs guest_memfd with MMAP and
    INIT_SHARED (host mmap of memory the guest sees as shared)."""
    if not cap:
        return False, (f"KVM_CAP_GUEST_MEMFD is 0 and KVM_CAP_GUEST_MEMFD_FLAGS {flags:#x}: "
                       "this KVM has no guest_memfd")
    missing = [name for name, bit in (("MMAP", uapi.GUEST_MEMFD_FLAG_MMAP),
                                      ("INIT_SHARED", uapi.GUEST_MEMFD_FLAG_INIT_SHARED))
               if not flags & bit]
    if missing:
        return False, (f"KVM_CAP_GUEST_MEMFD_FLAGS is {flags:#x}: guest_memfd lacks "
                       f"{'|'.join(missing)}")
    return True, f"guest_memfd with flags {flags:#x} (MMAP|INIT_SHARED)"


def guest_memfd_usable() -> tuple[bool, str]:
    """Whether this KVM can create the guest_memfd of a ``gmem`` region (MMAP|INIT_SHARED on a
    default-type VM): ``(usable, reason)``. Asks the capabilities of a fresh VM fd (the flags
    depend on the VM type); nothing is cached."""
    try:
        kvm = Kvm()
    except OSError as exc:
        return False, f"cannot use {KVM_DEV}: {exc}"
    try:
        vm_fd, err = uapi.ioctl(kvm.fd, uapi.KVM_CREATE_VM, 0)
        if err:
            return False, f"KVM_CREATE_VM: {os.strerror(err)}"
        try:
            caps = []
            for cap in (uapi.KVM_CAP_GUEST_MEMFD, uapi.KVM_CAP_GUEST_MEMFD_FLAGS):
                ret, err = uapi.ioctl(vm_fd, uapi.KVM_CHECK_EXTENSION, cap)
                caps.append(0 if err else ret)
        finally:
            os.close(vm_fd)
        return guest_memfd_support(*caps)
    finally:
        kvm.close()


class RegionKinds(NamedTuple):
    """The region kinds a run may create (``REGION_KINDS`` order) and why any is left out."""

    kinds: tuple[RegionKind, ...] = REGION_KINDS
    left_out: str = ""  # "" when every kind is in

    def describe(self) -> str:
        """``anon, memfd, gmem`` or ``anon, memfd (gmem left out: <reason>)``."""
        used = ", ".join(self.kinds)
        return f"{used} ({self.left_out})" if self.left_out else used


def region_kinds() -> RegionKinds:
    """The region kinds this KVM can back memslots with: all of ``REGION_KINDS``, or, where
    ``guest_memfd_usable()`` says no, all but ``gmem``, with its reason. Probe once per run."""
    usable, reason = guest_memfd_usable()
    if usable:
        return RegionKinds()
    return RegionKinds(tuple(k for k in REGION_KINDS if k != "gmem"),
                       f"gmem left out: {reason}")


def resolve_region_kinds(kinds: RegionKinds | None) -> RegionKinds:
    """A run's region kinds: ``kinds`` as given (checked: some of ``REGION_KINDS``, nothing
    else), or, for None, this KVM's (``region_kinds()``, probed once)."""
    if kinds is None:
        return region_kinds()
    if not kinds.kinds or not set(kinds.kinds) <= set(REGION_KINDS):
        raise InvalidArgument(f"region kinds {kinds.kinds}: expected some of {REGION_KINDS}")
    return kinds
