"""``ModelBackend``: the uAPI op vocabulary (ops.py) executed on the Python model of KVM.

It implements the same ``Backend`` protocol as ``KvmBackend`` (reset / apply / close), so a
differential driver (diff.py) can run one sequential schedule on the model and on the kernel
and compare every observation. Each op is started on a ``Driver`` actor and run to completion
(``Driver.finish``) before the next one: the model's invariants are checked after every
scheduler step, as in the stateful machine, but nothing is interleaved.

How the real uAPI maps onto the model (the model's vocabulary is smaller; what is missing is
emulated here, from the model's own primitives, and listed so that it can be reported):

Geometry and addresses
  ``VmConfig(level_bits=3, root_level=4)``: 4096 gfns, so guest physical addresses map 1:1 to
  gfns (``gfn = gpa >> 12``) for ``gpa < 16 MiB``; ops outside that raise InvalidArgument. The
  kernel's fan-out (``level_bits=9``) is not usable: ``build_vm`` maps the whole gfn space in
  the VMM's mm page by page (2**36 pages). The geometry only decides which SPTE level maps a
  page, which a guest cannot observe at this level. THP is on in the model (huge = 8 pages);
  ``CreateRegion.thp`` is ignored.
  Each region gets its own window of the model's single VMM mapping (hva pages, aligned to a
  host huge page) and, for guest_memfd, its own range of the model's single guest_memfd file
  (file 0): separate files in the kernel, disjoint offsets of one file here.
Memory content
  The model stores one integer token per 4 KiB page, not bytes. The backend keeps, for each
  token, the value of the page's first 8 bytes (the *data word*): a guest or host write of
  ``size`` bytes at byte offset ``o`` of the word makes a new token whose word is the old word
  with those bytes replaced (the old token is learnt from a ``PageAllocator`` that records
  what each write overwrote); a read returns the bytes of the current token's word (token 0:
  a fresh page, all zero). Accesses beyond the first 8 bytes of a page raise InvalidArgument.
Region kinds
  anon: the model's mm (private anonymous memory) as is.
  memfd: the model has no file-backed mappings. A memfd page keeps its content when its PTE
  is zapped (DONTNEED, replacement); the backend runs the model's zap (the MMU-notifier
  protocol under test) and then repopulates the page with the saved token (a fresh anonymous
  page: a not-present PTE being filled, which needs no notifier). Punch hole = the zap
  without the repopulation.
  gmem (guest_memfd with MMAP|INIT_SHARED, bound by a slot that then ignores its uaddr): the
  model's guest_memfd serves only private faults, so the backend makes the slot's gfns private
  (KVM_SET_MEMORY_ATTRIBUTES through the model, undone when the slot is deleted) and every
  guest access to them takes the model's private path (``kvm_gmem_get_pfn``). Host reads and
  writes through the mmap touch the file's folio (allocated on first use, like the mmap
  fault). VMA operations on a gmem region only change what host accesses see (protection);
  they reach neither the model nor the guest, as on the kernel.
Protections
  The model's mm knows writable and read-only VMAs, not PROT_NONE. PROT_NONE is emulated as
  munmap of the pages (notifier zap, the VMA gone: GUP fails, the guest gets EFAULT on reads
  and writes) with the content tokens saved here and put back (mmap, repopulate) when the
  protection returns. DONTNEED / punch hole of a PROT_NONE page drops the saved anon / memfd
  content, as on the kernel.
Host operations
  DONTNEED: the model's ``dontneed``. Remap ``mmap_fixed`` / ``munmap_mmap``: ``munmap`` +
  ``mmap`` (anon: fresh zero pages; memfd: content put back). ``mremap`` (absent from the
  model): the same, content put back, i.e. new page tables with the old content. CowReplace:
  the model's ``migrate`` of each read-write anon page (a new pfn, the same content, under a
  notifier bracket); shared pages keep theirs; EFAULT when a page of the range is not
  read-write (the host's own store fails there).
Memslots and dirty log
  Memslot ops map to the model's ``memslot`` (``KVM_SET_USER_MEMORY_REGION2``) with hva and
  guest_memfd offsets translated; unaligned guest addresses are EINVAL here (the model counts
  in pages). ``KVM_CLEAR_DIRTY_LOG``: the model's ``kvm_clear_dirty_log_protect`` when
  kvmfuzz.virt.dirty has one (run on ``vmm0``), else the one written below from the model's
  primitives (slots_lock, mmu_lock, the bitmap, ``kvm_arch_mmu_enable_log_dirty_pt_masked``,
  the TLB flush), checks in the kernel's order.
  The model's slot ids are 0..7 (``KVM_USER_MEM_SLOTS`` = 8); a kernel id >= 8 is only
  accepted by the kernel, so schedules use ids below 8 (or an id beyond both limits).
Outcomes
  ``ok`` -> Value (a write echoes its value); ``mmio`` -> Mmio(gpa, size, direction, data of a
  write / zeros for a read); ``efault`` -> RunFailed(EFAULT); ``memory_fault`` ->
  RunFailed(EFAULT, KVM_EXIT_MEMORY_FAULT, gpa). Negative errnos -> Errno. A host access that
  would kill the real worker (an unchecked load from PROT_NONE, an unchecked store to a
  read-only page) gives WorkerDied and a fresh VM, as KvmBackend does.

Planted model bugs (``bug=``, see ``MODEL_BUGS``) are wrong mappings of one op, so that the
differential has something to find; any name from ``kvmfuzz.bugs`` is passed to the model
itself (``VmConfig.bug``).
"""

from __future__ import annotations

import errno
import inspect
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs

from kvmfuzz import bugs
from kvmfuzz.config import VmConfig
from kvmfuzz.driver import HVA_BASE, Driver
from kvmfuzz.errors import InvalidArgument, ModelError
from kvmfuzz.host.pages import PageAllocator
from kvmfuzz.points import Point
from kvmfuzz.real import accessor as acc
from kvmfuzz.real.ops import (
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
    Prot,
    PunchHole,
    RegionKind,
    Remap,
    RunFailed,
    Value,
    WorkerDied,
)
from kvmfuzz.sched.traps import Op as ModelOp
from kvmfuzz.sched.traps import mutex_lock, write_lock
from kvmfuzz.virt import dirty
from kvmfuzz.virt.kvm import KVM_MEM_GUEST_MEMFD, KVM_USER_MEM_SLOTS, Vm
from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs_range

PAGE: Final = acc.PAGE_SIZE
WORD: Final = 8  # the data word: the first 8 bytes of each page
LEVEL_BITS: Final = 3
ROOT_LEVEL: Final = 4
KVM_EXIT_MEMORY_FAULT: Final = 39
MAX_MODEL_VCPUS: Final = 4

MODEL_BUGS: Final[dict[str, str]] = {
    "dontneed_not_zapping": "MADV_DONTNEED of anonymous memory leaves the content in place",
    "punch_hole_not_zeroing": "PUNCH_HOLE of a memfd / guest_memfd leaves the content in place",
    "mprotect_ignored": "mprotect() changes nothing (PROT_READ pages stay guest-writable)",
    "dirty_log_drops_first": "KVM_GET_DIRTY_LOG loses the lowest dirty page of each harvest",
    "move_keeps_content_at_old_gpa": "MOVE is reported done but the slot stays where it was",
}


def known_bugs() -> tuple[str, ...]:
    """Names accepted by ``ModelBackend(bug=...)``: the backend's and the model's own."""
    return tuple(sorted(MODEL_BUGS)) + tuple(sorted(bugs.BY_NAME))


@attrs.define(eq=False)
class _TokenPages(PageAllocator):
    """The model's page allocator, recording which token each write overwrote."""

    overwritten: dict[int, int] = attrs.field(factory=dict)

    def write(self, pfn: int, token: int) -> None:
        self.overwritten[token] = self.read(pfn)
        super().write(pfn, token)


@attrs.define(eq=False)
class _Region:
    """A host region as the backend maps it onto the model."""

    kind: RegionKind
    npages: int
    hva: int  # first hva page, relative to driver.HVA_BASE
    gmem_pgoff: int  # first page in the model's guest_memfd file 0 (gmem regions)
    prot: list[Prot]
    saved: dict[int, int] = attrs.field(factory=dict)  # page -> token while PROT_NONE

    def check_range(self, page: int, npages: int) -> None:
        if page < 0 or npages <= 0 or page + npages > self.npages:
            raise InvalidArgument(
                f"pages [{page}, {page + npages}) outside the {self.npages}-page {self.kind} "
                "region")


@attrs.frozen
class _Slot:
    gpa: int
    npages: int
    region: int
    region_page: int
    flags: int


def _runs(pages: list[int]) -> Iterator[tuple[int, int]]:
    """Contiguous runs ``(first, npages)`` of sorted page numbers."""
    i = 0
    while i < len(pages):
        j = i
        while j + 1 < len(pages) and pages[j + 1] == pages[j] + 1:
            j += 1
        yield pages[i], j - i + 1
        i = j + 1


def _merge(word: int, value: int, offset: int, size: int) -> int:
    mask = ((1 << (8 * size)) - 1) << (8 * offset)
    return (word & ~mask) | (value << (8 * offset) & mask)


def _extract(word: int, offset: int, size: int) -> int:
    return (word >> (8 * offset)) & ((1 << (8 * size)) - 1)


def kvm_clear_dirty_log_protect(vm: Vm, actor: Any, slot_id: int, first_page: int,
                                num_pages: int, bits: int) -> ModelOp[int]:
    """kvm_vm_ioctl_clear_dirty_log() -> kvm_clear_dirty_log_protect() (virt/kvm/kvm_main.c),
    written from the model's primitives for a model without it (``ModelBackend`` uses the
    model's own when kvmfuzz.virt.dirty has one). ``bits``: the user bitmap, bit i = page
    ``first_page + i``."""
    yield from mutex_lock(vm.slots_lock, actor, Point.SLOTS_LOCK)
    try:
        if first_page & 63:
            return -errno.EINVAL
        if not 0 <= slot_id < KVM_USER_MEM_SLOTS:
            return -errno.EINVAL
        slot = vm.memslots[0].slots.get(slot_id)
        if slot is None or slot.dirty_bitmap is None:
            return -errno.ENOENT
        if (first_page > slot.npages or num_pages > slot.npages - first_page
                or (num_pages < slot.npages - first_page and num_pages & 63)):
            return -errno.EINVAL
        yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
        flush = False
        bitmap = slot.dirty_bitmap
        for n in range((num_pages + 63) // 64):
            offset = first_page + 64 * n
            i = offset // 64
            mask = (bits >> (64 * n)) & ((1 << 64) - 1)
            if not mask:
                continue
            mask &= bitmap[i]  # atomic_long_fetch_andnot(): the bits really cleared
            bitmap[i] &= ~mask
            if mask:
                flush = True
                enable: Any = dirty.kvm_arch_mmu_enable_log_dirty_pt_masked  # None or an Op
                protect = enable(vm, actor, slot, offset, mask)
                if inspect.isgenerator(protect):  # an Op in newer models
                    yield from protect
        vm.mmu_lock.write_unlock(actor)
        if flush:
            kvm_flush_remote_tlbs_range(vm, actor, slot.base_gfn, slot.npages)
        vm.ghost.event("dirty_log.clear" + (".nonempty" if flush else ".empty"))
        return 0
    finally:
        vm.slots_lock.release(actor)


class ModelBackend:
    """The op vocabulary on the Python model (see the module docstring for the mapping)."""

    def __init__(self, bug: str | None = None, check: bool = True) -> None:
        if bug in ("", "none"):
            bug = None
        if bug is not None and bug not in MODEL_BUGS:
            bugs.lookup(bug)  # raises InvalidArgument for an unknown name
        self.bug = bug
        self.check = check
        self.config = BackendConfig()
        self._driver: Driver | None = None
        self.regions: dict[int, _Region] = {}
        self.slots: dict[int, _Slot] = {}
        self.words: dict[int, int] = {0: 0}
        self._next_hva = 0
        self._next_pgoff = 0
        self._dispatch: dict[type, Callable[[Any], Outcome]] = {
            CreateRegion: self._create_region, GuestRead: self._guest_read,
            GuestWrite: self._guest_write, HostRead: self._host_read,
            HostWrite: self._host_write, MadviseDontneed: self._dontneed,
            Mprotect: self._mprotect, Remap: self._remap, CowReplace: self._cow_replace,
            PunchHole: self._punch_hole, MemslotCreate: self._slot_create,
            MemslotDelete: self._slot_delete, MemslotMove: self._slot_move,
            MemslotSetFlags: self._slot_set_flags, GetDirtyLog: self._get_dirty_log,
            ClearDirtyLog: self._clear_dirty_log,
        }

    # --- Backend ----------------------------------------------------------------------------

    def reset(self, config: BackendConfig | None = None) -> None:
        if config is not None:
            self.config = config
        cfg = self.config
        if cfg.vcpus > MAX_MODEL_VCPUS:
            raise InvalidArgument(f"vcpus={cfg.vcpus}: the model has at most {MAX_MODEL_VCPUS}")
        model_bug = self.bug if self.bug is not None and self.bug not in MODEL_BUGS else None
        vm_config = VmConfig(nr_vcpus=cfg.vcpus, level_bits=LEVEL_BITS, root_level=ROOT_LEVEL,
                             thp=True, private_mem=True, manual_protect=cfg.manual_protect,
                             initially_set=cfg.initially_set, bug=model_bug)
        driver = Driver(vm_config, check=self.check)
        pages = _TokenPages()  # before anything is allocated: build_vm allocates nothing
        driver.vm.pages = pages
        driver.vm.mm.pages = pages
        self._driver = driver
        self.regions = {}
        self.slots = {}
        self.words = {0: 0}
        self._next_hva = 0
        self._next_pgoff = 0

    def apply(self, op: Op) -> Observation:
        handler = self._dispatch.get(type(op))
        if handler is None:
            raise InvalidArgument(f"not an op: {op!r}")
        if self._driver is None:
            raise InvalidArgument("apply() before reset()")
        start = time.perf_counter_ns()
        outcome = handler(op)
        return Observation(outcome, (), time.perf_counter_ns() - start)

    def close(self) -> None:
        self._driver = None
        self.regions = {}
        self.slots = {}

    # --- model plumbing ---------------------------------------------------------------------

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            raise InvalidArgument("no model VM: call reset() first")
        return self._driver

    @property
    def vm(self) -> Vm:
        return self.driver.vm

    @property
    def max_gfn(self) -> int:
        return self.vm.arch.geo.max_gfn

    def _run(self, op: str, actor: str, **args: Any) -> Any:
        """Start ``op`` on ``actor`` and run it to completion; its result."""
        drv = self.driver
        before = len(drv.results)
        drv.start(op, actor, **args)
        drv.finish()
        if len(drv.results) != before + 1:
            raise ModelError(f"{op} on {actor} did not complete")
        result = drv.results[-1][2]
        drv.steps.clear()  # nothing replays them; keep memory flat over long schedules
        drv.results.clear()
        drv.drain_events()
        return result

    def _run_gen(self, name: str, gen: ModelOp[Any]) -> Any:
        """Run a model generator written here (e.g. CLEAR_DIRTY_LOG) on ``vmm0``."""
        drv = self.driver
        box: list[Any] = []
        drv.vm.sched.start(drv.vm.sched.actor("vmm0"), name, gen, box.append)
        drv.finish()
        drv.steps.clear()
        drv.drain_events()
        if len(box) != 1:
            raise ModelError(f"{name} did not complete")
        return box[0]

    def _region(self, region: int) -> _Region:
        try:
            return self.regions[region]
        except KeyError:
            raise InvalidArgument(
                f"unknown region {region}; known: {sorted(self.regions)}") from None

    def _hva(self, r: _Region, page: int) -> int:
        """Absolute model hva page of ``page`` of region ``r``."""
        return HVA_BASE + r.hva + page

    def _content(self, r: _Region, page: int) -> int:
        """The token a host read of ``page`` would see (no populate)."""
        if r.kind == "gmem":
            folio = self.vm.gmem_files[0].folios.get(r.gmem_pgoff + page)
            return self.vm.pages.read(folio.head) if folio is not None else 0
        if r.prot[page] == "none":
            return r.saved.get(page, 0)
        mapping = self.vm.mm.lookup(self._hva(r, page))
        return self.vm.pages.read(mapping.pfn) if mapping is not None else 0

    def _populate(self, r: _Region, page: int, token: int) -> None:
        """Fill a not-present PTE with ``token``'s content (no notifier: nothing to zap)."""
        if token == 0:
            return
        mm = self.vm.mm
        hva = self._hva(r, page)
        mapping = mm.lookup(hva) or mm.handle_mm_fault(hva)
        if mapping is None:
            raise ModelError(f"repopulating region page {page}: hva {hva:#x} is not mapped")
        self.vm.pages.write(mapping.pfn, token)

    def _word(self, token: int) -> int:
        try:
            return self.words[token]
        except KeyError:
            raise ModelError(f"content token {token} has no known data word") from None

    def _record_write(self, token: int, value: int, offset: int, size: int) -> None:
        pages = self.vm.pages
        assert isinstance(pages, _TokenPages)
        old = pages.overwritten.pop(token, 0)
        self.words[token] = _merge(self._word(old), value, offset, size)

    def _mm_range(self, op: str, r: _Region, page: int, npages: int, **extra: Any) -> None:
        self._run(op, "mm0", hva=r.hva + page, npages=npages, **extra)

    # --- handlers: regions and host accesses ------------------------------------------------

    def _create_region(self, op: CreateRegion) -> Outcome:
        if op.region in self.regions:
            raise InvalidArgument(f"region {op.region} exists")
        huge = self.vm.mm.huge_pages
        hva = self._next_hva
        span = -(-op.npages // huge) * huge
        if HVA_BASE + hva + span > HVA_BASE + self.max_gfn:
            raise InvalidArgument(f"the model's VMM mapping has no room for {op.npages} pages")
        self._next_hva += span
        pgoff = 0
        if op.kind == "gmem":
            pgoff = self._next_pgoff
            if pgoff + op.npages > self.vm.gmem_files[0].npages:
                raise InvalidArgument("the model's guest_memfd file is full")
            self._next_pgoff += op.npages
        elif op.kind not in ("anon", "memfd"):
            raise InvalidArgument(f"region kind {op.kind!r}: expected anon, memfd or gmem")
        self.regions[op.region] = _Region(op.kind, op.npages, hva, pgoff, ["rw"] * op.npages)
        return Ok()

    def _host_location(self, region: int, offset: int, size: int) -> tuple[_Region, int, int]:
        r = self._region(region)
        if offset < 0 or offset + size > r.npages * PAGE:
            raise InvalidArgument(f"bytes [{offset:#x}, +{size}) outside the region")
        page, off = divmod(offset, PAGE)
        if off + size > WORD:
            raise InvalidArgument(f"offset {offset:#x}: the model tracks only the first {WORD} "
                                  "bytes of each page")
        return r, page, off

    def _died(self, why: str) -> Outcome:
        """What KvmBackend reports when its worker dies: a fresh VM, same config."""
        self.reset()
        return WorkerDied(f"model: {why} (the real worker would be killed)")

    def _host_read(self, op: HostRead) -> Outcome:
        r, page, off = self._host_location(op.region, op.offset, op.size)
        if r.prot[page] == "none":
            if not op.checked:
                return self._died("unchecked host load from a PROT_NONE page")
            return Errno(errno.EFAULT)
        return Value(_extract(self._word(self._content(r, page)), off, op.size))

    def _host_write(self, op: HostWrite) -> Outcome:
        r, page, off = self._host_location(op.region, op.offset, op.size)
        if r.prot[page] != "rw":
            if not op.checked:
                return self._died(f"unchecked host store to a PROT_{r.prot[page].upper()} page")
            return Errno(errno.EFAULT)
        vm = self.vm
        if r.kind == "gmem":
            f = vm.gmem_files[0]
            index = r.gmem_pgoff + page
            folio = f.folios.get(index)
            if folio is None:  # the mmap fault: kvm_gmem_get_folio() allocates it zeroed
                folio = vm.pages.alloc(1, "gmem")
                f.folios[index] = folio
            token = vm.new_token()
            vm.pages.write(folio.head, token)
        else:
            if not self._run("host_write", "mm0", hva=r.hva + page):
                raise ModelError(f"host_write to read-write region page {page} failed")
            mapping = vm.mm.lookup(self._hva(r, page))
            assert mapping is not None
            token = vm.pages.read(mapping.pfn)
        self._record_write(token, op.value, off, op.size)
        return Ok()

    # --- handlers: mm operations ------------------------------------------------------------

    def _dontneed(self, op: MadviseDontneed) -> Outcome:
        r = self._region(op.region)
        r.check_range(op.page, op.npages)
        pages = range(op.page, op.page + op.npages)
        if r.kind == "gmem":
            return Ok()  # a shared mapping: the next host access refetches the same folio
        if r.kind == "anon" and self.bug == "dontneed_not_zapping":
            return Ok()
        kept = {p: self._content(r, p) for p in pages if r.prot[p] != "none"} \
            if r.kind == "memfd" else {}
        if r.kind == "anon":
            for p in pages:
                r.saved.pop(p, None)
        self._mm_range("dontneed", r, op.page, op.npages)
        for p, token in kept.items():
            self._populate(r, p, token)
        return Ok()

    def _mprotect(self, op: Mprotect) -> Outcome:
        r = self._region(op.region)
        r.check_range(op.page, op.npages)
        pages = list(range(op.page, op.page + op.npages))
        if self.bug == "mprotect_ignored":
            return Ok()
        if r.kind != "gmem":
            if op.prot == "none":
                going = [p for p in pages if r.prot[p] != "none"]
                for p in going:
                    r.saved[p] = self._content(r, p)
                for first, n in _runs(going):
                    self._mm_range("munmap", r, first, n)
            else:
                back = [p for p in pages if r.prot[p] == "none"]
                for first, n in _runs(back):
                    self._mm_range("mmap", r, first, n)
                for p in back:
                    self._populate(r, p, r.saved.pop(p, 0))
                self._mm_range("mprotect", r, op.page, op.npages, writable=op.prot == "rw")
        for p in pages:
            r.prot[p] = op.prot
        return Ok()

    def _remap(self, op: Remap) -> Outcome:
        r = self._region(op.region)
        r.check_range(op.page, op.npages)
        if op.how not in ("mmap_fixed", "munmap_mmap", "mremap"):
            raise InvalidArgument(f"remap how={op.how!r}")
        pages = range(op.page, op.page + op.npages)
        if r.kind != "gmem":
            keep = r.kind == "memfd" or op.how == "mremap"
            kept = {p: self._content(r, p) for p in pages} if keep else {}
            self._mm_range("munmap", r, op.page, op.npages)
            self._mm_range("mmap", r, op.page, op.npages)
            for p in pages:
                r.saved.pop(p, None)
                r.prot[p] = "rw"  # before repopulating: the new mapping is read-write
            for p, token in kept.items():
                self._populate(r, p, token)
        else:
            for p in pages:
                r.prot[p] = "rw"
        return Ok()

    def _cow_replace(self, op: CowReplace) -> Outcome:
        r = self._region(op.region)
        r.check_range(op.page, op.npages)
        failed = False
        for p in range(op.page, op.page + op.npages):
            if r.prot[p] != "rw":
                failed = True  # the host's read or store-back of this page fails
            elif r.kind == "anon":
                self._run("migrate", "mm0", hva=r.hva + p)
        return Errno(errno.EFAULT) if failed else Ok()

    def _punch_hole(self, op: PunchHole) -> Outcome:
        r = self._region(op.region)
        r.check_range(op.page, op.npages)
        if r.kind == "anon":
            raise InvalidArgument("punch_hole needs a memfd or gmem region, not anon")
        if self.bug == "punch_hole_not_zeroing":
            return Ok()
        if r.kind == "gmem":
            res = self._run("punch_hole", "vmm0", start=r.gmem_pgoff + op.page,
                            end=r.gmem_pgoff + op.page + op.npages)
            return Errno(-res) if res else Ok()
        for p in range(op.page, op.page + op.npages):
            r.saved.pop(p, None)
        self._mm_range("dontneed", r, op.page, op.npages)
        return Ok()

    # --- handlers: guest accesses -----------------------------------------------------------

    def _guest_access(self, vcpu: int, gpa: int, size: int, write: bool, value: int) -> Outcome:
        if vcpu >= self.config.vcpus:
            raise InvalidArgument(f"vcpu {vcpu}: the VM has {self.config.vcpus}")
        if not acc.DATA_GPA_MIN <= gpa <= acc.IDENTITY_MAP_END - size:
            raise InvalidArgument(f"gpa {gpa:#x} outside the accessor's data range")
        if gpa % size:
            raise InvalidArgument(f"gpa {gpa:#x} not aligned to its size {size}")
        gfn, off = divmod(gpa, PAGE)
        if gfn >= self.max_gfn:
            raise InvalidArgument(f"gpa {gpa:#x} beyond the model's {self.max_gfn} gfns")
        if off + size > WORD:
            raise InvalidArgument(f"gpa {gpa:#x}: the model tracks only the first {WORD} bytes "
                                  "of each page")
        private = self.vm.kvm_mem_is_private(gfn)  # guest_memfd slots: see the docstring
        res = self._run("access", f"vcpu{vcpu}", gfn=gfn, write=write, private=private)
        if res.outcome == "ok":
            if write:
                self._record_write(res.value, value, off, size)
                return Value(value)
            return Value(_extract(self._word(res.value), off, size))
        if res.outcome == "mmio":
            data = value.to_bytes(size, "little") if write else bytes(size)
            return Mmio(gpa, size, write, data)
        if res.outcome == "efault":
            return RunFailed(errno.EFAULT)
        if res.outcome == "memory_fault":
            return RunFailed(errno.EFAULT, KVM_EXIT_MEMORY_FAULT, gpa - off)
        raise ModelError(f"unknown access outcome {res}")

    def _guest_read(self, op: GuestRead) -> Outcome:
        return self._guest_access(op.vcpu, op.gpa, op.size, False, 0)

    def _guest_write(self, op: GuestWrite) -> Outcome:
        return self._guest_access(op.vcpu, op.gpa, op.size, True, op.value)

    # --- handlers: memslots -----------------------------------------------------------------

    @staticmethod
    def _user_slot(slot: int) -> None:
        if slot == acc.SYSTEM_SLOT:
            raise InvalidArgument(f"slot {slot} is the accessor's system slot")

    def _known_slot(self, slot: int) -> _Slot:
        self._user_slot(slot)
        try:
            return self.slots[slot]
        except KeyError:
            raise InvalidArgument(f"unknown slot {slot}; known: {sorted(self.slots)}") from None

    def _set_attributes(self, gfn: int, npages: int, private: bool) -> None:
        res = self._run("set_attributes", "vmm0", start=gfn, end=gfn + npages, private=private)
        if res:
            raise ModelError(f"set_attributes [{gfn:#x}, +{npages}) private={private}: {res}")

    def _set_region(self, slot: int, gpa: int, npages: int, region: int, region_page: int,
                    flags: int) -> int:
        """KVM_SET_USER_MEMORY_REGION2 as the real backend issues it: 0 or a negative errno."""
        r = self._region(region)
        if region_page + npages > r.npages:
            raise InvalidArgument(
                f"slot {slot}: pages [{region_page}, {region_page + npages}) outside region "
                f"{region} ({r.npages} pages)")
        if gpa % PAGE:
            return -errno.EINVAL  # __kvm_set_memory_region(): guest_phys_addr unaligned
        gfn = gpa // PAGE
        if gfn + npages > self.max_gfn:
            raise InvalidArgument(f"gpa {gpa:#x} + {npages} pages beyond the model's "
                                  f"{self.max_gfn} gfns")
        gmem_offset = -1
        if r.kind == "gmem":
            flags |= KVM_MEM_GUEST_MEMFD
            gmem_offset = r.gmem_pgoff + region_page
        if self.bug == "move_keeps_content_at_old_gpa":
            old = self.slots.get(slot)
            if old is not None and npages and old.gpa != gpa and old.npages == npages \
                    and old.region == region and old.region_page == region_page:
                return 0
        result: int = self._run("memslot", "vmm0", slot=slot, as_id=0, flags=flags, gfn=gfn,
                                npages=npages, hva=r.hva + region_page, gmem_offset=gmem_offset)
        return result

    def _update_slot(self, slot: int, new: _Slot | None) -> None:
        """After a successful update: track it; a guest_memfd slot's gfns are private."""
        old = self.slots.pop(slot, None)
        if new is not None:
            self.slots[slot] = new
        if old is not None and self.regions[old.region].kind == "gmem" and (
                new is None or new.gpa != old.gpa):
            self._set_attributes(old.gpa // PAGE, old.npages, False)
        if new is not None and self.regions[new.region].kind == "gmem" and (
                old is None or new.gpa != old.gpa):
            self._set_attributes(new.gpa // PAGE, new.npages, True)

    @staticmethod
    def _errno(res: int) -> Outcome:
        return Errno(-res) if res else Ok()

    def _slot_create(self, op: MemslotCreate) -> Outcome:
        self._user_slot(op.slot)
        res = self._set_region(op.slot, op.gpa, op.npages, op.region, op.region_page, op.flags)
        if not res:
            new = _Slot(op.gpa, op.npages, op.region, op.region_page, op.flags) \
                if op.npages else None
            self._update_slot(op.slot, new)
        return self._errno(res)

    def _slot_delete(self, op: MemslotDelete) -> Outcome:
        self._user_slot(op.slot)
        state = self.slots.get(op.slot)
        if state is None:
            res = self._run("memslot", "vmm0", slot=op.slot, as_id=0, flags=0, gfn=0, npages=0,
                            hva=0, gmem_offset=-1)
            return self._errno(res)
        res = self._set_region(op.slot, state.gpa, 0, state.region, state.region_page,
                               state.flags)
        if not res:
            self._update_slot(op.slot, None)
        return self._errno(res)

    def _slot_move(self, op: MemslotMove) -> Outcome:
        state = self._known_slot(op.slot)
        res = self._set_region(op.slot, op.gpa, state.npages, state.region, state.region_page,
                               state.flags)
        if not res:
            self._update_slot(op.slot, attrs.evolve(state, gpa=op.gpa))
        return self._errno(res)

    def _slot_set_flags(self, op: MemslotSetFlags) -> Outcome:
        state = self._known_slot(op.slot)
        res = self._set_region(op.slot, state.gpa, state.npages, state.region,
                               state.region_page, op.flags)
        if not res:
            self._update_slot(op.slot, attrs.evolve(state, flags=op.flags))
        return self._errno(res)

    # --- handlers: dirty log ----------------------------------------------------------------

    def _get_dirty_log(self, op: GetDirtyLog) -> Outcome:
        res = self._run("get_dirty_log", "vmm0", slot=op.slot)
        if isinstance(res, int):
            return Errno(-res)
        state = self.slots.get(op.slot)
        npages = state.npages if state is not None else 0
        bits = sum(word << (64 * i) for i, word in enumerate(res))
        pages = tuple(i for i in range(npages) if bits >> i & 1)
        if self.bug == "dirty_log_drops_first":
            pages = pages[1:]
        return Dirty(pages)

    def _clear_dirty_log(self, op: ClearDirtyLog) -> Outcome:
        if op.pages is None:
            bits = (1 << op.npages) - 1
        else:
            bits = sum(1 << (p - op.first_page) for p in set(op.pages)
                       if op.first_page <= p < op.first_page + op.npages)
        actor = self.vm.sched.actor("vmm0")
        model_clear: Any = getattr(dirty, "kvm_clear_dirty_log_protect", None)
        if model_clear is not None:  # the model's own: (vm, actor, as_id, slot, first, num, words)
            words = [(bits >> (64 * i)) & ((1 << 64) - 1) for i in range((op.npages + 63) // 64)]
            gen = model_clear(self.vm, actor, 0, op.slot, op.first_page, op.npages, words)
        else:
            gen = kvm_clear_dirty_log_protect(self.vm, actor, op.slot, op.first_page, op.npages,
                                              bits)
        return self._errno(self._run_gen("clear_dirty_log", gen))
