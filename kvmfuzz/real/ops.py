"""The shared operation vocabulary of a sequential, uAPI-level schedule, and its observations.

Ops are frozen attrs values with resolved arguments (ids, page numbers, byte values), so a
schedule can be stored, replayed, compared, and driven either against the real kernel
(``KvmBackend``) or against the Python model (plugged in later through ``Backend``).

Identifiers: ``vcpu`` 0..config.vcpus-1; ``region`` a host mapping created by ``CreateRegion``
(any int the caller picks); ``slot`` a memslot id (0 is the accessor's system slot and is
refused). Units: ``gpa`` and ``offset`` in bytes, ``page`` / ``npages`` in 4 KiB pages,
``size`` in bytes (1, 2, 4 or 8, naturally aligned).

Observations are equal when their outcomes are: the kernel-log lines and the elapsed time
ride along but do not take part in ``==``.
"""

from __future__ import annotations

import errno as _errno
from typing import Literal, TypeAlias

import attrs

from kvmfuzz.errors import InvalidArgument

RegionKind: TypeAlias = Literal["anon", "memfd", "gmem"]
Prot: TypeAlias = Literal["none", "r", "rw"]
RemapHow: TypeAlias = Literal["mmap_fixed", "munmap_mmap", "mremap"]

ACCESS_SIZES = (1, 2, 4, 8)
MEM_LOG_DIRTY_PAGES = 1 << 0  # KVM_MEM_LOG_DIRTY_PAGES
MEM_READONLY = 1 << 1  # KVM_MEM_READONLY


def _nonneg(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise InvalidArgument(f"{attribute.name}={value}: expected >= 0")


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise InvalidArgument(f"{attribute.name}={value}: expected > 0")


def _access_size(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value not in ACCESS_SIZES:
        raise InvalidArgument(f"{attribute.name}={value}: expected one of {ACCESS_SIZES}")


def _fits(value: int, size: int, what: str) -> None:
    if not 0 <= value < 1 << (8 * size):
        raise InvalidArgument(f"{what}={value:#x} does not fit in {size} bytes")


# --- configuration --------------------------------------------------------------------------


@attrs.frozen
class BackendConfig:
    """One VM: how many vCPUs, and how dirty logging is set up (KVM_ENABLE_CAP before slots).

    ``manual_protect``: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with MANUAL_PROTECT_ENABLE (GET no
    longer clears; CLEAR_DIRTY_LOG re-protects). ``initially_set``: also INITIALLY_SET (a newly
    logged slot starts all dirty). ``op_timeout_s``: the caller's patience for one op before
    the worker is declared hung, killed and restarted. ``kernel_log``: collect new /dev/kmsg
    lines into each observation (if readable).
    """

    vcpus: int = 1
    manual_protect: bool = False
    initially_set: bool = False
    op_timeout_s: float = 20.0
    kernel_log: bool = True

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.vcpus <= 16:
            raise InvalidArgument(f"vcpus={self.vcpus}: expected 1..16")
        if self.initially_set and not self.manual_protect:
            raise InvalidArgument("initially_set needs manual_protect")
        if self.op_timeout_s <= 0:
            raise InvalidArgument(f"op_timeout_s={self.op_timeout_s}: expected > 0")


# --- operations -----------------------------------------------------------------------------


@attrs.frozen
class CreateRegion:
    """Map ``npages`` of host memory: private anonymous, a shared memfd, or a guest_memfd
    (KVM_CREATE_GUEST_MEMFD with MMAP|INIT_SHARED) mapped shared. ``thp``: MADV_HUGEPAGE."""

    region: int
    npages: int = attrs.field(validator=_positive)
    kind: RegionKind = "anon"
    thp: bool = False


@attrs.frozen
class GuestRead:
    """The accessor on ``vcpu`` loads ``size`` bytes at ``gpa`` (one KVM_RUN round trip)."""

    vcpu: int = attrs.field(validator=_nonneg)
    gpa: int = attrs.field(validator=_nonneg)
    size: int = attrs.field(default=8, validator=_access_size)


@attrs.frozen
class GuestWrite:
    """The accessor on ``vcpu`` stores ``value`` (``size`` bytes, little endian) at ``gpa``."""

    vcpu: int = attrs.field(validator=_nonneg)
    gpa: int = attrs.field(validator=_nonneg)
    value: int = 0
    size: int = attrs.field(default=8, validator=_access_size)

    def __attrs_post_init__(self) -> None:
        _fits(self.value, self.size, "value")


@attrs.frozen
class HostRead:
    """The host loads ``size`` bytes at byte ``offset`` of a region. ``checked=False`` is a
    plain load (a PROT_NONE page kills the worker: observed as WorkerDied); ``checked=True``
    goes through process_vm_readv and observes EFAULT instead."""

    region: int
    offset: int = attrs.field(validator=_nonneg)
    size: int = attrs.field(default=8, validator=_access_size)
    checked: bool = False


@attrs.frozen
class HostWrite:
    """The host stores ``value`` at byte ``offset`` of a region (see HostRead for ``checked``)."""

    region: int
    offset: int = attrs.field(validator=_nonneg)
    value: int = 0
    size: int = attrs.field(default=8, validator=_access_size)
    checked: bool = False

    def __attrs_post_init__(self) -> None:
        _fits(self.value, self.size, "value")


@attrs.frozen
class MadviseDontneed:
    """madvise(MADV_DONTNEED) on pages of a region (anon: zero-fill after; shared: refetch)."""

    region: int
    page: int = attrs.field(validator=_nonneg)
    npages: int = attrs.field(validator=_positive)


@attrs.frozen
class Mprotect:
    """mprotect() pages of a region to PROT_NONE, PROT_READ or PROT_READ|PROT_WRITE."""

    region: int
    page: int = attrs.field(validator=_nonneg)
    npages: int = attrs.field(validator=_positive)
    prot: Prot = "rw"


@attrs.frozen
class Remap:
    """Replace the mapping of pages of a region. ``mmap_fixed``: mmap(MAP_FIXED) over it with the
    region's own backing (anon: fresh zero pages; memfd/gmem: the same file offset);
    ``munmap_mmap``: the same through munmap then mmap; ``mremap``: move the pages away and
    back (content kept, page tables moved twice). Protection becomes read-write."""

    region: int
    page: int = attrs.field(validator=_nonneg)
    npages: int = attrs.field(validator=_positive)
    how: RemapHow = "mmap_fixed"


@attrs.frozen
class CowReplace:
    """Page replacement by copy-on-write: fork a child that holds the pages, store each page's
    first byte back to itself (breaking COW: same content, a new host page for a private
    mapping), then end the child. Shared mappings keep their pages."""

    region: int
    page: int = attrs.field(validator=_nonneg)
    npages: int = attrs.field(validator=_positive)


@attrs.frozen
class PunchHole:
    """fallocate(PUNCH_HOLE|KEEP_SIZE) on a memfd or guest_memfd region's file."""

    region: int
    page: int = attrs.field(validator=_nonneg)
    npages: int = attrs.field(validator=_positive)


@attrs.frozen
class MemslotCreate:
    """KVM_SET_USER_MEMORY_REGION2 binding ``npages`` of a region from ``region_page`` at ``gpa``.

    ``flags`` is passed raw (MEM_LOG_DIRTY_PAGES, MEM_READONLY, or unknown bits to probe
    EINVAL); a gmem region adds KVM_MEM_GUEST_MEMFD with its fd and offset. Re-creating an
    existing slot id with other parameters is how uaddr/size changes are probed.
    """

    slot: int
    gpa: int = attrs.field(validator=_nonneg)
    npages: int = attrs.field(validator=_nonneg)
    region: int
    region_page: int = attrs.field(default=0, validator=_nonneg)
    flags: int = attrs.field(default=0, validator=_nonneg)


@attrs.frozen
class MemslotDelete:
    """KVM_SET_USER_MEMORY_REGION2 with size 0 (an unknown slot probes EINVAL)."""

    slot: int


@attrs.frozen
class MemslotMove:
    """KVM_SET_USER_MEMORY_REGION2 with a new gpa and the slot's other parameters (KVM_MR_MOVE)."""

    slot: int
    gpa: int = attrs.field(validator=_nonneg)


@attrs.frozen
class MemslotSetFlags:
    """KVM_SET_USER_MEMORY_REGION2 with new flags and the slot's other parameters (e.g. toggle
    dirty logging: KVM_MR_FLAGS_ONLY; toggling READONLY is EINVAL)."""

    slot: int
    flags: int = attrs.field(validator=_nonneg)


@attrs.frozen
class GetDirtyLog:
    """KVM_GET_DIRTY_LOG of a slot: observed as the dirty page indices (relative to the slot)."""

    slot: int


@attrs.frozen
class ClearDirtyLog:
    """KVM_CLEAR_DIRTY_LOG over ``[first_page, first_page + npages)`` of a slot, clearing
    ``pages`` (slot-relative indices inside that range) or, if None, the whole range."""

    slot: int
    first_page: int = attrs.field(validator=_nonneg)
    npages: int = attrs.field(validator=_nonneg)
    pages: tuple[int, ...] | None = None


Op: TypeAlias = (
    CreateRegion | GuestRead | GuestWrite | HostRead | HostWrite | MadviseDontneed | Mprotect
    | Remap | CowReplace | PunchHole | MemslotCreate | MemslotDelete | MemslotMove
    | MemslotSetFlags | GetDirtyLog | ClearDirtyLog
)
OP_TYPES: tuple[type, ...] = (
    CreateRegion, GuestRead, GuestWrite, HostRead, HostWrite, MadviseDontneed, Mprotect, Remap,
    CowReplace, PunchHole, MemslotCreate, MemslotDelete, MemslotMove, MemslotSetFlags,
    GetDirtyLog, ClearDirtyLog,
)


# --- outcomes -------------------------------------------------------------------------------


@attrs.frozen
class Ok:
    """The operation succeeded and has nothing to report."""


@attrs.frozen
class Value:
    """A read (guest or host) returned ``value``; a successful guest write echoes its value."""

    value: int


@attrs.frozen
class Mmio:
    """The guest access exited with KVM_EXIT_MMIO: ``data`` is what a write carried, or what
    the host supplied to a read (zeros, so the guest read 0)."""

    gpa: int
    size: int
    is_write: bool
    data: bytes


@attrs.frozen
class RunFailed:
    """KVM_RUN returned an error (EFAULT: the hva could not be faulted in). The accessor's
    command was abandoned (RIP rewound to the command loop)."""

    errno: int
    exit_reason: int = 0
    fault_gpa: int | None = None

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


@attrs.frozen
class Exit:
    """KVM_RUN returned an exit the accessor never asks for (SHUTDOWN, INTERNAL_ERROR, ...)."""

    reason: int
    detail: str = ""


@attrs.frozen
class Errno:
    """A host system call or VM ioctl failed with ``errno``."""

    errno: int

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


@attrs.frozen
class Dirty:
    """KVM_GET_DIRTY_LOG's bitmap as the sorted slot-relative indices of dirty pages."""

    pages: tuple[int, ...]


@attrs.frozen
class WorkerDied:
    """The worker process died (signal, exit) or hung during the op; it was restarted with the
    same config, so everything built before (regions, slots, memory) is gone."""

    detail: str


Outcome: TypeAlias = Ok | Value | Mmio | RunFailed | Exit | Errno | Dirty | WorkerDied


@attrs.frozen
class Observation:
    """What one op did: its outcome; new kernel-log lines and the time taken on the side."""

    outcome: Outcome
    kernel_log: tuple[str, ...] = attrs.field(default=(), eq=False)
    elapsed_ns: int = attrs.field(default=0, eq=False)
