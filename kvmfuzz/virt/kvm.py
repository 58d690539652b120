"""``struct kvm`` and ``struct kvm_memory_slot`` / ``struct kvm_memslots`` (include/linux/kvm_host.h).

The state of the generic protocol, field for field where the protocol reads it:
``mmu_invalidate_seq / _in_progress / _range_start / _range_end``, ``mn_active_invalidate_count``,
``mn_memslots_update_rcuwait``, two memslot sets per address space with their generation,
``mem_attr_array``, and the locks (``slots_lock``, ``slots_arch_lock``, ``mmu_lock``,
``mn_invalidate_lock``, ``srcu``). ``arch`` is the x86 MMU (kvmfuzz.x86.mmu.KvmArch).

Beside the kernel's state the Vm keeps *ghost* bookkeeping (``Ghost``) that the kernel does not
have but the invariants need: open invalidation windows and their phase, which memslot set
each SRCU reader saw, the in-flight faults. Ghost state is written by the model at the step
it describes and never read by the modelled kernel code.

Simplifications: memslot trees (gfn rb-tree, hva interval tree, id hash) are one dict per set
searched in slot-id order (same answers, stable order); ``last_used_slot`` caches are not
modelled; slots_arch_lock users inside SRCU (shadow-root rmap allocation) do not exist in a
TDP-only model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from kvmfuzz.config import VmConfig
from kvmfuzz.host.mm import Mm
from kvmfuzz.host.pages import PageAllocator
from kvmfuzz.sched.locks import Mutex, RcuWait, RwLock, SpinLock, Srcu
from kvmfuzz.sched.scheduler import Actor, Scheduler
from kvmfuzz.units import INVALID_GPA, GfnRange, HvaRange

if TYPE_CHECKING:
    from kvmfuzz.virt.guest_memfd import GmemFile
    from kvmfuzz.x86.mmu import KvmArch
    from kvmfuzz.x86.vcpu import Vcpu

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_GUEST_MEMFD = 1 << 2
KVM_MEMSLOT_INVALID = 1 << 16
KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3
KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS = 1 << 63
KVM_LPAGE_MIXED_FLAG = 1 << 31
KVM_USER_MEM_SLOTS = 8  # the model's slot-id limit (the kernel's is 32764)

FLAG_NAMES = {KVM_MEM_LOG_DIRTY_PAGES: "LOG_DIRTY", KVM_MEM_READONLY: "READONLY",
              KVM_MEM_GUEST_MEMFD: "GUEST_MEMFD", KVM_MEMSLOT_INVALID: "INVALID"}


def format_flags(flags: int) -> str:
    names = [n for bit, n in FLAG_NAMES.items() if flags & bit]
    return "|".join(names) or "0"


@attrs.define(eq=False)
class Memslot:
    """``struct kvm_memory_slot``. Identity state: the sets point at the same object."""

    id: int
    as_id: int
    base_gfn: int
    npages: int
    userspace_addr: int  # hva page of base_gfn
    flags: int
    dirty_bitmap: list[int] | None = None  # 64-bit words; second buffer not modelled
    lpage_info: dict[int, list[int]] = attrs.field(factory=dict)  # level -> disallow_lpage
    gmem_file: GmemFile | None = None
    gmem_pgoff: int = 0
    freed: bool = False
    serial: int = 0  # ghost: distinct per allocated struct, for messages

    @property
    def gfns(self) -> GfnRange:
        return GfnRange(self.base_gfn, self.base_gfn + self.npages)

    @property
    def hvas(self) -> HvaRange:
        return HvaRange(self.userspace_addr, self.userspace_addr + self.npages)

    def gfn_to_hva(self, gfn: int) -> int:
        """__gfn_to_hva_memslot()."""
        return self.userspace_addr + (gfn - self.base_gfn)

    def hva_to_gfn(self, hva: int) -> int:
        """hva_to_gfn_memslot()."""
        return self.base_gfn + (hva - self.userspace_addr)

    @property
    def invalid(self) -> bool:
        return bool(self.flags & KVM_MEMSLOT_INVALID)

    @property
    def readonly(self) -> bool:
        return bool(self.flags & KVM_MEM_READONLY)

    @property
    def logging(self) -> bool:
        """kvm_slot_dirty_track_enabled() for LOG_DIRTY (write-tracking is not modelled)."""
        return bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES)

    @property
    def has_gmem(self) -> bool:
        """kvm_slot_has_gmem()."""
        return bool(self.flags & KVM_MEM_GUEST_MEMFD)

    def describe(self) -> str:
        return (f"slot {self.id}#{self.serial} as{self.as_id} {self.gfns} hva {self.userspace_addr:#x}"
                f" flags {format_flags(self.flags)}{' (freed)' if self.freed else ''}")


@attrs.define(eq=False)
class KvmMemslots:
    """``struct kvm_memslots``: one of the two sets of an address space."""

    as_id: int
    node_idx: int
    generation: int
    slots: dict[int, Memslot] = attrs.field(factory=dict)
    version: int = 0  # ghost: bumped by every change, to catch readers of a changed set

    def ordered(self) -> list[Memslot]:
        return [self.slots[i] for i in sorted(self.slots)]

    def search(self, gfn: int) -> Memslot | None:
        """search_memslots(): the slot whose gfn range holds ``gfn``."""
        for slot in self.ordered():
            if gfn in slot.gfns:
                return slot
        return None

    def hva_overlaps(self, rng: HvaRange) -> list[Memslot]:
        """kvm_for_each_memslot_in_hva_range(): slots whose hva range meets ``rng``."""
        return [s for s in self.ordered() if s.hvas.overlaps(rng)]

    def gfn_overlaps(self, rng: GfnRange) -> list[Memslot]:
        """kvm_for_each_memslot_in_gfn_range()."""
        return [s for s in self.ordered() if s.gfns.overlaps(rng)]


@attrs.define(eq=False)
class Window:
    """Ghost: one invalidation window (notifier start..end, attributes, gmem, zap range)."""

    kind: str  # "mn", "attr", "gmem", "zap"
    serial: int
    actor: str
    hvas: HvaRange | None = None
    gfns: list[GfnRange] = attrs.field(factory=list)  # ranges it added (range_add)
    phase: str = "started"  # started -> begun -> returned (start done) -> ended -> done
    began: bool = False
    ended: bool = False
    target: GfnRange | None = None  # attr: changed gfns; gmem: punched indexes (file ``gmem``)
    gmem: int = -1
    slots_seen_start: tuple[int, ...] = ()
    slots_seen_end: tuple[int, ...] | None = None


@attrs.define(eq=False)
class Ghost:
    """Bookkeeping for invariants; written by the model, never read by modelled kernel code."""

    windows: list[Window] = attrs.field(factory=list)
    next_window: int = 0
    begun: int = 0  # begin calls without their end (must equal in_progress)
    seq_history: list[int] = attrs.field(factory=list)
    srcu_views: dict[str, list[tuple[KvmMemslots, int]]] = attrs.field(factory=dict)
    swaps: int = 0
    swap_waited: int = 0
    last_swap_count: int = 0
    events: list[str] = attrs.field(factory=list)  # coverage labels, drained by the driver
    warnings: list[str] = attrs.field(factory=list)  # kernel WARN_ONs that fired
    dirty_enable_in_flight: set[int] = attrs.field(factory=set)  # slot serials
    slot_state: dict[int, str] = attrs.field(factory=dict)  # serial -> live/invalid/zapped/dead
    get_in_flight: set[int] = attrs.field(factory=set)  # slot serials with a GET before its flush
    next_token: int = 1

    def open(self, kind: str, actor: Actor, hvas: HvaRange | None = None) -> Window:
        w = Window(kind, self.next_window, actor.name, hvas)
        self.next_window += 1
        self.windows.append(w)
        return w

    def close(self, w: Window) -> None:
        w.phase = "done"
        self.windows.remove(w)

    def event(self, label: str) -> None:
        self.events.append(label)


@attrs.define(eq=False)
class Vm:
    """``struct kvm``."""

    config: VmConfig
    sched: Scheduler
    pages: PageAllocator
    mm: Mm
    arch: KvmArch
    slots_lock: Mutex = attrs.field(factory=lambda: Mutex("slots_lock"))
    slots_arch_lock: Mutex = attrs.field(factory=lambda: Mutex("slots_arch_lock"))
    mmu_lock: RwLock = attrs.field(factory=lambda: RwLock("mmu_lock"))
    mn_invalidate_lock: SpinLock = attrs.field(factory=lambda: SpinLock("mn_invalidate_lock"))
    srcu: Srcu = attrs.field(factory=lambda: Srcu("kvm->srcu"))
    mn_memslots_update_rcuwait: RcuWait = attrs.field(
        factory=lambda: RcuWait("mn_memslots_update_rcuwait"))
    memslot_sets: list[list[KvmMemslots]] = attrs.field(factory=list)  # __memslots[as][2]
    memslots: list[KvmMemslots] = attrs.field(factory=list)  # active set per as (RCU pointer)
    mmu_invalidate_seq: int = 0
    mmu_invalidate_in_progress: int = 0
    mmu_invalidate_range_start: int = INVALID_GPA
    mmu_invalidate_range_end: int = INVALID_GPA
    mn_active_invalidate_count: int = 0
    mem_attr_array: dict[int, int] = attrs.field(factory=dict)
    vcpus: list[Vcpu] = attrs.field(factory=list)
    gmem_files: list[GmemFile] = attrs.field(factory=list)
    nr_memslots_dirty_logging: int = 0
    ghost: Ghost = attrs.field(factory=Ghost)
    next_slot_serial: int = 1
    killed: str | None = None  # KVM_BUG_ON: the VM is dead

    def bug(self, name: str) -> bool:
        """Is the planted bug ``name`` active? (kvmfuzz.bugs lists them)."""
        return self.config.bug == name

    def new_token(self) -> int:
        token = self.ghost.next_token
        self.ghost.next_token += 1
        return token

    def inactive_memslots(self, as_id: int) -> KvmMemslots:
        """kvm_get_inactive_memslots()."""
        active = self.memslots[as_id]
        a, b = self.memslot_sets[as_id]
        return b if active is a else a

    def kvm_mem_is_private(self, gfn: int) -> bool:
        """kvm_mem_is_private(): only meaningful for VMs with private memory."""
        return self.config.private_mem and bool(
            self.mem_attr_array.get(gfn, 0) & KVM_MEMORY_ATTRIBUTE_PRIVATE)

    def kvm_bug(self, why: str) -> None:
        """KVM_BUG_ON(): the VM is marked dead; recorded, checked by an invariant."""
        if self.killed is None:
            self.killed = why

    def srcu_view(self, actor: Actor, slots: KvmMemslots) -> KvmMemslots:
        """Ghost: ``actor`` (inside its SRCU read section) dereferenced ``slots``."""
        self.ghost.srcu_views.setdefault(actor.name, []).append((slots, slots.version))
        return slots

    def srcu_read_unlock(self, actor: Actor, idx: int) -> None:
        """srcu_read_unlock(&kvm->srcu) plus dropping the ghost views of that section."""
        self.srcu.read_unlock(actor, idx)
        # unreachable(false): no actor nests kvm->srcu read sections: vcpu_run's (vCPUs) and
        #   __kvm_handle_hva_range's (mm actors) are the only ones
        if not actor.srcu_idx:
            self.ghost.srcu_views.pop(actor.name, None)

    def describe_invalidation(self) -> str:
        rs, re_ = self.mmu_invalidate_range_start, self.mmu_invalidate_range_end
        rng = "INVALID" if rs == INVALID_GPA else f"[{rs:#x}, {re_:#x})"
        return (f"in_progress={self.mmu_invalidate_in_progress} range={rng} "
                f"seq={self.mmu_invalidate_seq} mn_active={self.mn_active_invalidate_count}")

    def state_json(self) -> dict[str, Any]:
        return {"in_progress": self.mmu_invalidate_in_progress,
                "seq": self.mmu_invalidate_seq,
                "mn_active": self.mn_active_invalidate_count}
