"""MMU-notifier callbacks and the mmu_invalidate_* primitives (virt/kvm/kvm_main.c, kvm_host.h).

Models, in the kernel's order of locks and checks (reference §2.1, §2.6):
``kvm_mmu_invalidate_begin / _range_add / _end``, ``mmu_invalidate_retry_gfn`` and its
``_unsafe`` pre-check, ``__kvm_handle_hva_range`` (take ``mmu_lock`` and call ``on_lock`` only
when a memslot overlaps: the no-memslot optimisation), ``kvm_mmu_notifier_invalidate_range_start
/ _end`` (``mn_active_invalidate_count`` and the wake-up of the memslot updater), and the aging
callbacks (lockless on x86 since CONFIG_KVM_MMU_LOCKLESS_AGING).

Left out: gfn_to_pfn caches (``gfn_to_pfn_cache_invalidate_start``), ``kvm_arch_guest_memory_reclaimed``
(a no-op without SEV), the ``release`` callback (VM teardown is not modelled).
Kernel WARN_ONs are recorded with ``warn`` and reported by the invariant ``W0-kernel-warning``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from kvmfuzz.points import Point
from kvmfuzz.sched.traps import Op, mutex_lock, preempt, write_lock
from kvmfuzz.units import INVALID_GPA, GfnRange, HvaRange
from kvmfuzz.virt.kvm import Memslot, Vm, Window

if TYPE_CHECKING:
    from kvmfuzz.sched.scheduler import Actor


@attrs.frozen
class KvmGfnRange:
    """``struct kvm_gfn_range``: a gfn range inside one slot, handed to arch handlers."""

    start: int
    end: int
    slot: Memslot
    may_block: bool = True

    @property
    def gfns(self) -> GfnRange:
        return GfnRange(self.start, self.end)


def warn(vm: Vm, what: str) -> None:
    """WARN_ON_ONCE(): recorded; the invariant W0 reports it."""
    vm.ghost.warnings.append(what)


def kvm_mmu_invalidate_begin(vm: Vm, actor: Actor, window: Window | None) -> None:
    """kvm_mmu_invalidate_begin(): in_progress++, reset the range when it goes 0 -> 1."""
    vm.mmu_lock.assert_held_write(actor)
    vm.mmu_invalidate_in_progress += 1
    if vm.mmu_invalidate_in_progress == 1 or vm.bug("begin_resets_nested_range"):
        vm.mmu_invalidate_range_start = INVALID_GPA
        vm.mmu_invalidate_range_end = INVALID_GPA
    vm.ghost.begun += 1
    # unreachable(false): every caller passes its ghost Window (MMU notifier, attributes, guest_memfd,
    #   kvm_zap_gfn_range)
    if window is not None:
        window.began = True
        window.phase = "begun"


def kvm_mmu_invalidate_range_add(vm: Vm, window: Window | None, start: int, end: int) -> None:
    """kvm_mmu_invalidate_range_add(): widen [range_start, range_end) to cover [start, end)."""
    if vm.mmu_invalidate_in_progress == 0:
        warn(vm, f"range_add [{start:#x}, {end:#x}) with in_progress == 0")
    if vm.mmu_invalidate_range_start == INVALID_GPA:
        vm.mmu_invalidate_range_start = start
        vm.mmu_invalidate_range_end = end
    else:
        vm.mmu_invalidate_range_start = min(vm.mmu_invalidate_range_start, start)
        if vm.bug("range_add_keeps_end"):
            pass  # planted: the hull is not widened at the end
        else:
            vm.mmu_invalidate_range_end = max(vm.mmu_invalidate_range_end, end)
    # unreachable(false): every caller passes its ghost Window (MMU notifier, attributes, guest_memfd,
    #   kvm_zap_gfn_range)
    if window is not None:
        window.gfns.append(GfnRange(start, end))


def kvm_mmu_invalidate_end(vm: Vm, actor: Actor, window: Window | None) -> None:
    """kvm_mmu_invalidate_end(): seq++, smp_wmb(), in_progress--."""
    vm.mmu_lock.assert_held_write(actor)
    vm.mmu_invalidate_seq += 1
    vm.ghost.seq_history.append(vm.mmu_invalidate_seq)
    vm.mmu_invalidate_in_progress -= 1
    if vm.mmu_invalidate_in_progress < 0:
        vm.kvm_bug("mmu_invalidate_in_progress < 0")  # KVM_BUG_ON
    if vm.mmu_invalidate_range_start == INVALID_GPA:
        warn(vm, "invalidate_end with no range added")
    vm.ghost.begun -= 1
    # unreachable(false): every caller passes its ghost Window (MMU notifier, attributes, guest_memfd,
    #   kvm_zap_gfn_range)
    if window is not None:
        window.ended = True
        window.phase = "ended"


def mmu_invalidate_retry_gfn(vm: Vm, actor: Actor, mmu_seq: int, gfn: int) -> bool:
    """mmu_invalidate_retry_gfn(): must this fault retry? (caller holds mmu_lock)."""
    vm.mmu_lock.assert_held(actor)
    if vm.mmu_invalidate_in_progress and not vm.bug("retry_ignores_in_progress"):
        if vm.mmu_invalidate_range_start == INVALID_GPA:
            warn(vm, "retry_gfn with in_progress but no range")
            return True
        end = vm.mmu_invalidate_range_end
        if vm.bug("retry_range_end_off_by_one"):
            end -= 1
        if vm.mmu_invalidate_range_start <= gfn < end:
            return True
    if vm.bug("retry_ignores_seq"):
        return False
    return vm.mmu_invalidate_seq != mmu_seq


def mmu_invalidate_retry_gfn_unsafe(vm: Vm, mmu_seq: int, gfn: int) -> bool:
    """mmu_invalidate_retry_gfn_unsafe(): the lockless pre-check (READ_ONCE, may miss)."""
    if (vm.mmu_invalidate_in_progress
            and vm.mmu_invalidate_range_start <= gfn < vm.mmu_invalidate_range_end):
        return True
    return vm.mmu_invalidate_seq != mmu_seq


Handler = Callable[[Vm, "Actor", KvmGfnRange], Op[bool]]
OnLock = Callable[[Vm, "Actor", Window | None], None]


def __kvm_handle_hva_range(vm: Vm, actor: Actor, rng: HvaRange, *, on_lock: OnLock | None,
                           handler: Handler | None, flush_on_ret: bool, lockless: bool,
                           window: Window | None) -> Op[tuple[bool, bool]]:
    """__kvm_handle_hva_range(): walk the slots overlapping ``rng`` under SRCU.

    ``mmu_lock`` is taken (and ``on_lock`` called) only on the first overlapping slot; with
    no overlapping slot nothing is locked and nothing begins. Returns (found, handler result).
    """
    found = False
    ret = False
    idx = vm.srcu.read_lock(actor)
    seen: list[int] = []
    for as_id in range(vm.config.nr_as):
        slots = vm.srcu_view(actor, vm.memslots[as_id])
        for slot in slots.hva_overlaps(rng):
            hva_start = max(rng.start, slot.userspace_addr)
            hva_end = min(rng.end, slot.userspace_addr + slot.npages)
            gfn_range = KvmGfnRange(slot.hva_to_gfn(hva_start), slot.hva_to_gfn(hva_end - 1) + 1,
                                    slot)
            seen.append(slot.serial)
            if not found:
                found = True
                if not lockless:
                    yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
                    # unreachable(false): the callers that take mmu_lock (lockless=False:
                    #   invalidate_range_start/end) always pass on_lock; on_lock=None comes only with lockless
                    #   aging or the planted notifier_always_lockless
                    if on_lock is not None:
                        on_lock(vm, actor, window)
            if handler is not None:
                ret |= yield from handler(vm, actor, gfn_range)
    locked = found and not lockless
    # unreachable(true): only with the calibration bug calib_no_memslot_optimisation (the last conjunct)
    if (not found and on_lock is not None and not lockless
            and vm.bug("calib_no_memslot_optimisation")):
        # Calibration: no lock elision (as before 071064f14d87): lock and begin/end anyway. A
        # start that found no slot records an empty gfn range (5.13 recorded the hva range, which
        # held no slot's gfn), so that end's "no range added" WARN keeps its meaning.
        yield from write_lock(vm.mmu_lock, actor, Point.MMU_LOCK_WRITE)
        on_lock(vm, actor, window)
        # unreachable: inside the calib_no_memslot_optimisation block above
        if on_lock is kvm_mmu_invalidate_begin and vm.mmu_invalidate_range_start == INVALID_GPA:
            vm.mmu_invalidate_range_start = vm.mmu_invalidate_range_end = 0
        locked = True
    if window is not None:
        if window.phase in ("ending", "ended"):
            window.slots_seen_end = tuple(seen)
        else:
            window.slots_seen_start = tuple(seen)
    if flush_on_ret and ret:
        from kvmfuzz.x86.tlb import kvm_flush_remote_tlbs
        kvm_flush_remote_tlbs(vm, actor)
    if locked:
        vm.mmu_lock.write_unlock(actor)
    vm.srcu_read_unlock(actor, idx)
    return found, ret


def kvm_mmu_unmap_gfn_range(vm: Vm, actor: Actor, rng: KvmGfnRange,
                            window: Window | None = None) -> Op[bool]:
    """kvm_mmu_unmap_gfn_range(): range_add, then the arch unmap (returns "flush needed")."""
    from kvmfuzz.x86.mmu import kvm_unmap_gfn_range
    if vm.bug("unmap_before_range_add"):
        flush = yield from kvm_unmap_gfn_range(vm, actor, rng)  # may yield mmu_lock
        kvm_mmu_invalidate_range_add(vm, window, rng.start, rng.end)
        return flush
    kvm_mmu_invalidate_range_add(vm, window, rng.start, rng.end)
    return (yield from kvm_unmap_gfn_range(vm, actor, rng))


def kvm_mmu_notifier_invalidate_range_start(vm: Vm, actor: Actor, rng: HvaRange) -> Op[None]:
    """kvm_mmu_notifier_invalidate_range_start()."""
    window = vm.ghost.open("mn", actor, rng)
    yield from mutex_lock(vm.mn_invalidate_lock, actor, Point.MN_INVALIDATE_LOCK)
    vm.mn_active_invalidate_count += 1
    vm.mn_invalidate_lock.release(actor)
    yield from preempt(Point.MN_START_COUNTED)  # S2 (gpc) runs unlocked before the slot walk

    def handler(vm: Vm, actor: Actor, r: KvmGfnRange) -> Op[bool]:
        return kvm_mmu_unmap_gfn_range(vm, actor, r, window)

    elide = vm.bug("notifier_always_lockless")  # planted: the lock elision for every range
    found, _ = yield from __kvm_handle_hva_range(
        vm, actor, rng, on_lock=None if elide else kvm_mmu_invalidate_begin,
        handler=None if elide else handler, flush_on_ret=True, lockless=elide, window=window)
    vm.ghost.event("mn.start." + ("slot" if found else "noslot"))
    window.phase = "returned"


def kvm_mmu_notifier_invalidate_range_end(vm: Vm, actor: Actor, rng: HvaRange) -> Op[None]:
    """kvm_mmu_notifier_invalidate_range_end()."""
    window = next(w for w in reversed(vm.ghost.windows)
                  if w.kind == "mn" and w.actor == actor.name and w.hvas == rng
                  and w.phase == "returned")
    window.phase = "ending"
    elide = vm.bug("notifier_always_lockless")
    yield from __kvm_handle_hva_range(
        vm, actor, rng, on_lock=None if elide else kvm_mmu_invalidate_end, handler=None,
        flush_on_ret=False, lockless=elide, window=window)
    yield from preempt(Point.MN_END_BEFORE_COUNT)  # mmu_lock and SRCU dropped, count not yet
    yield from mutex_lock(vm.mn_invalidate_lock, actor, Point.MN_INVALIDATE_LOCK)
    if vm.mn_active_invalidate_count == 0:
        warn(vm, "mn_active_invalidate_count underflow")
    else:
        vm.mn_active_invalidate_count -= 1
    wake = vm.mn_active_invalidate_count == 0
    vm.mn_invalidate_lock.release(actor)
    if wake and not vm.bug("end_forgets_wakeup"):
        vm.mn_memslots_update_rcuwait.wake_up()
    vm.ghost.close(window)


def kvm_mmu_notifier_age(vm: Vm, actor: Actor, rng: HvaRange, *, test_only: bool,
                         flush: bool) -> Op[bool]:
    """kvm_mmu_notifier_clear_flush_young / clear_young / test_young (lockless aging).

    x86 elides the flush of clear_flush_young (CONFIG_KVM_ELIDE_TLB_FLUSH_IF_YOUNG).
    """
    from kvmfuzz.x86.aging import kvm_age_gfn, kvm_test_age_gfn

    def handler(vm: Vm, actor: Actor, r: KvmGfnRange) -> Op[bool]:
        if test_only:
            return kvm_test_age_gfn(vm, actor, r)
        return kvm_age_gfn(vm, actor, r)

    _, young = yield from __kvm_handle_hva_range(
        vm, actor, rng, on_lock=None, handler=handler,
        flush_on_ret=flush and vm.bug("calib_aging_always_flushes"), lockless=True, window=None)
    return young


@attrs.define(eq=False)
class KvmMmuNotifier:
    """The ``struct mmu_notifier`` KVM registers on the VMM's mm."""

    vm: Vm

    def invalidate_range_start(self, actor: Actor, rng: HvaRange) -> Op[None]:
        return kvm_mmu_notifier_invalidate_range_start(self.vm, actor, rng)

    def invalidate_range_end(self, actor: Actor, rng: HvaRange) -> Op[None]:
        return kvm_mmu_notifier_invalidate_range_end(self.vm, actor, rng)

    def clear_flush_young(self, actor: Actor, rng: HvaRange) -> Op[bool]:
        return kvm_mmu_notifier_age(self.vm, actor, rng, test_only=False, flush=True)

    def clear_young(self, actor: Actor, rng: HvaRange) -> Op[bool]:
        return kvm_mmu_notifier_age(self.vm, actor, rng, test_only=False, flush=False)

    def test_young(self, actor: Actor, rng: HvaRange) -> Op[bool]:
        return kvm_mmu_notifier_age(self.vm, actor, rng, test_only=True, flush=False)
