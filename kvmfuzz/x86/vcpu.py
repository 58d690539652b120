"""A vCPU: guest accesses as the hardware performs them, and the exit-handling loop.

The "hardware" part is model-only (reference §2.2): a guest access looks up the vCPU's TLB,
else walks the current root; a leaf that allows the access completes it (A/D set, TLB
filled, the page's content token read or written); an MMIO SPTE takes the RSVD/misconfig
path; anything else is an EPT violation handled by ``kvm_mmu_page_fault`` inside the SRCU read
section that ``vcpu_run`` holds across exit handling. RETRY / FIXED / SPURIOUS re-enter the
guest; EMULATE ends in an MMIO exit; a negative value exits to userspace (-EFAULT, memory-fault).

Before each guest entry the vCPU processes its requests (``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``,
which puts an obsolete root under mmu_lock, and ``KVM_REQ_TLB_FLUSH``) and reloads its root
(``kvm_mmu_reload``), as ``vcpu_enter_guest`` does.

The EPT violation's error code says "present" when the leaf granted any of R/W/X (an
access-tracked SPTE, RWX = 0, is a not-present fault even though it is MMU-present). The vCPU
keeps the MMIO-info cache (``mmio_gfn`` / ``mmio_gen`` / ``mmio_access``). Ghost: every completed
guest write to a dirty-logged slot is recorded as "written since harvest" (D5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from kvmfuzz.errors import NoProgress
from kvmfuzz.points import Point
from kvmfuzz.sched.scheduler import Actor
from kvmfuzz.sched.traps import Op, preempt
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.fault import (
    RET_PF_EMULATE,
    RET_PF_NAMES,
    RET_PF_RETRY,
    PageFault,
    kvm_mmu_page_fault,
)
from kvmfuzz.x86.mmu import (
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
    KVM_REQ_TLB_FLUSH,
    kvm_mmu_free_obsolete_roots,
    kvm_mmu_reload,
)
from kvmfuzz.x86.tdp_mmu import KvmMmuPage, Source
from kvmfuzz.x86.tlb import Tlb, TlbEntry

if TYPE_CHECKING:
    from kvmfuzz.virt.kvm import Memslot, Vm


@attrs.frozen
class Access:
    """One guest access that completed through a translation (ghost, for invariant 11)."""

    vcpu: str
    gfn: int
    pfn: int
    write: bool
    token: int  # value read, or value written
    source: Source | None
    via_tlb: bool


@attrs.frozen
class AccessResult:
    """How a guest access ended: ``ok`` (value), ``mmio``, ``efault`` or ``memory_fault``."""

    outcome: str
    value: int | None = None
    retries: int = 0

    def __str__(self) -> str:
        return f"{self.outcome}" + (f" {self.value:#x}" if self.value is not None else "")


@attrs.define(eq=False)
class Vcpu:
    """``struct kvm_vcpu`` (x86 parts the protocol touches)."""

    vm: Vm
    id: int
    actor: Actor
    as_id: int = 0
    root: KvmMmuPage | None = None
    requests: set[str] = attrs.field(factory=set)
    tlb: Tlb = attrs.field(factory=Tlb)
    fault: PageFault | None = None  # the fault being handled (ghost view of the stack frame)
    last_access: Access | None = None
    mmio_gfn: int = 0  # vcpu->arch.mmio_gfn (0: nothing cached)
    mmio_access: int = 0
    mmio_gen: int = 0

    @property
    def name(self) -> str:
        return self.actor.name

    def walk_leaf(self, gfn: int) -> tuple[int, int, KvmMmuPage | None, int]:
        """The hardware page walk: (spte, level, table, index) of the last SPTE on the path."""
        vm = self.vm
        sp = self.root
        # unreachable(true): callers walk the vCPU's own loaded root (hardware_access asserts it;
        #   handle_mmio_page_fault runs inside the vCPU's fault), which only the vCPU itself drops
        if sp is None:
            return S.SHADOW_NONPRESENT_VALUE, 0, None, 0
        geo = vm.arch.geo
        while True:
            idx = geo.index(gfn, sp.level)
            spte = sp.spt[idx]
            if not S.is_shadow_present_pte(spte) or S.is_last_spte(spte, sp.level):
                return spte, sp.level, sp, idx
            sp = vm.arch.sp_by_pfn[S.spte_to_pfn(spte)]


def kvm_check_requests(vm: Vm, vcpu: Vcpu) -> Op[None]:
    """vcpu_enter_guest(): service KVM_REQ_MMU_FREE_OBSOLETE_ROOTS and KVM_REQ_TLB_FLUSH."""
    if KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in vcpu.requests:
        vcpu.requests.discard(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)
        yield from kvm_mmu_free_obsolete_roots(vm, vcpu, vcpu.actor)
    # unreachable(true): nothing makes KVM_REQ_TLB_FLUSH: remote flushes drop the TLB entries directly
    #   (x86/tlb.py)
    if KVM_REQ_TLB_FLUSH in vcpu.requests:
        vcpu.requests.discard(KVM_REQ_TLB_FLUSH)
        vcpu.tlb.flush_all()


def hardware_access(vm: Vm, vcpu: Vcpu, gfn: int, write: bool, exec_: bool,
                    token: int) -> tuple[str, PageFault | None, int | None]:
    """The CPU's access: TLB, else page walk. Returns ("done", None, value) or a fault."""
    m = vm.arch.masks
    assert vcpu.root is not None
    entry = vcpu.tlb.lookup(vcpu.root.id, gfn)
    if entry is not None and (entry.writable or not write) and (entry.executable or not exec_):
        return "done", None, _do_access(vm, vcpu, gfn, entry.pfn, write, token, entry.source, True)
    spte, level, sp, idx = vcpu.walk_leaf(gfn)
    if S.is_mmio_spte(m, spte):
        return "fault", PageFault(gfn, write, exec_, False, True, _private(vm, gfn)), None
    mmu_present = S.is_shadow_present_pte(spte)
    # PFERR_PRESENT: EPT exit qualification "readable|writable|executable" (legacy: P).
    present = mmu_present and bool(spte & (S.VMX_EPT_RWX_MASK if m.ept else S.PT_PRESENT_MASK))
    if mmu_present and S.is_access_allowed(m, spte, write=write, exec=exec_):
        assert sp is not None
        if m.ad_enabled and vm.config.ad_bits:  # hardware A/D assists (atomic OR)
            sp.spt[idx] = spte | m.accessed_mask | (m.dirty_mask if write else 0)
        pages = vm.arch.geo.pages(level)
        offset = gfn & (pages - 1)
        pfn = S.spte_to_pfn(spte) + offset
        src = sp.src.get(idx)
        src = src.offset(offset) if src is not None else None
        vcpu.tlb.fill(TlbEntry(vcpu.root.id, gfn, pfn, S.is_writable_pte(spte),
                               S.is_executable_pte(m, spte), src, gfn - offset, pages))
        return "done", None, _do_access(vm, vcpu, gfn, pfn, write, token, src, False)
    return "fault", PageFault(gfn, write, exec_, present, False, _private(vm, gfn)), None


def _private(vm: Vm, gfn: int) -> bool:
    """KVM_X86_SW_PROTECTED_VM sets PFERR_PRIVATE_ACCESS from the attributes at fault entry."""
    return vm.kvm_mem_is_private(gfn)


def _do_access(vm: Vm, vcpu: Vcpu, gfn: int, pfn: int, write: bool, token: int,
               src: Source | None, via_tlb: bool) -> int:
    if write:
        vm.pages.write(pfn, token)
        value = token
        _note_guest_write(vm, vcpu, gfn, src)
    else:
        value = vm.pages.read(pfn)
    vcpu.last_access = Access(vcpu.name, gfn, pfn, write, value, src, via_tlb)
    return value


def _note_guest_write(vm: Vm, vcpu: Vcpu, gfn: int, src: Source | None) -> None:
    """Ghost (D5): a guest write to a logged slot, once the enable ioctl has returned."""
    slot = vm.memslots[vcpu.as_id].search(gfn)
    if (src is None or slot is None or slot.serial != src.slot_serial or not slot.logging
            or slot.serial in vm.ghost.dirty_enable_in_flight):
        return
    written = vm.arch.ghost.written.get(slot.serial)
    if written is not None:
        written.add(gfn)


def kvm_vcpu_access(vm: Vm, vcpu: Vcpu, gfn: int, write: bool, exec_: bool = False,
                    private: bool | None = None) -> Op[AccessResult]:
    """A guest load/store/fetch of ``gfn``: KVM_RUN until the access completes or exits."""
    actor = vcpu.actor
    retries = idle_retries = 0
    token = vm.new_token() if write else 0
    early_slot: Memslot | None = None  # planted memslot_lookup_outside_srcu only
    while True:
        yield from kvm_check_requests(vm, vcpu)
        yield from kvm_mmu_reload(vm, vcpu, actor)
        if vm.bug("memslot_lookup_outside_srcu"):
            # planted: the memslot is looked up before entering the guest, outside kvm->srcu
            # (vcpu_enter_guest() drops it around guest entry), and used by the exit handler
            early_slot = vm.memslots[vcpu.as_id].search(gfn)
        yield from preempt(Point.VCPU_GUEST_ACCESS)
        yield from kvm_check_requests(vm, vcpu)  # a request made while we were preempted
        if vcpu.root is None:
            continue
        status, fault, value = hardware_access(vm, vcpu, gfn, write, exec_, token)
        if status == "done":
            vm.ghost.event("access.write" if write else "access.read")
            return AccessResult("ok", value, retries)
        assert fault is not None
        if private is not None and vm.config.private_mem:
            fault.is_private = private
        idx = vm.srcu.read_lock(actor)  # vcpu_run(): SRCU across exit handling
        fault.slot = vm.srcu_view(actor, vm.memslots[vcpu.as_id]).search(gfn)
        if vm.bug("memslot_lookup_outside_srcu"):
            fault.slot = early_slot
        vcpu.fault = fault
        try:
            r = yield from kvm_mmu_page_fault(vm, vcpu, actor, fault)
        finally:
            vcpu.fault = None
            vm.srcu_read_unlock(actor, idx)
        vm.ghost.event("fault.ret." + RET_PF_NAMES.get(r, str(r)))
        if r < 0:
            outcome = "memory_fault" if fault.why.startswith("private") else "efault"
            return AccessResult(outcome, None, retries)
        if r == RET_PF_EMULATE:
            return AccessResult("mmio", None, retries)
        if r == RET_PF_RETRY:
            retries += 1
            quiet = (not vm.ghost.windows and vm.mmu_invalidate_in_progress == 0
                     and vm.slots_lock.owner is None)
            idle_retries = idle_retries + 1 if quiet else 0
            if idle_retries > vm.config.max_fault_retries:
                raise NoProgress(
                    f"{vcpu.name}: fault on gfn {gfn:#x} retried {idle_retries} times with no "
                    f"invalidation, memslot update or attribute change pending "
                    f"({vm.describe_invalidation()}; last reason {fault.why or '?'})",
                    title="I12-fault-progress")
        yield from preempt(Point.VCPU_REENTER)
