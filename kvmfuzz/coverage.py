"""Protocol coverage: which situations a campaign produced, measured against a closed universe.

Line coverage says little about a concurrent protocol; a KVM developer wants to know which
*situations* a campaign reached. Four measures, each counted against a universe written down in
this module (never "whatever was seen"), with every impossible item listed with its reason so
that the denominators are honest:

points
    (operation kind, preemption point): ``SITES`` lists, per kind of operation (``KINDS``, a
    grouping of the driver's ``OPS``), every ``Point`` its code can stop at, from reading the
    model's yield sites (a static table: each entry names the kernel path). ``IMPOSSIBLE_POINTS``
    are sites the model's lock discipline never lets an actor stop at.
outcomes
    ``OUTCOMES``: ghost events (``vm.ghost.event``) and facts derived from them while watching
    the steps: RET_PF_* results, retry reasons, exits, memslot change x invalidation pending x
    in-flight fault holding SRCU, notifier with / without a memslot, waits, attribute conversions
    x mapping state, SPTE transition kinds. Some are impossible in the model (with the reason).
pairs
    (site where an actor is stopped, kind of operation that takes a scheduler step meanwhile):
    the interleavings, e.g. ``fault@FAULT_PFN_RESOLVED x invalidate``. Universe: every site x
    every kind; a pair is impossible when its site is.
branches
    coverage.py branch coverage of ``kvmfuzz/{virt,x86,host,sched}`` collected during the
    campaign (``BranchCollector``; start it before the model is imported, or import-time lines
    are credited from the source and their branches left out). "Protocol branches" leave out
    the arcs ``classify_arcs`` puts in an ``ARC_CLASSES`` class, among them those the model
    source marks unreachable (``# unreachable: <reason>``, see ``unreachable_markers``), each
    with its reason in the report.

How it is observed: ``CoverageCollector.on_step`` is the driver's per-step hook
(``Driver.observe``; the campaign installs it through ``KvmMachine.observe_steps``). It sees each
scheduler step (actor, operation, point reached), the ghost events the step emitted (it wraps
``vm.ghost.events`` so that it sees them before the machine drains them), the VM state after the
step (SRCU readers, ``mn_active_invalidate_count``) and access results. ``finish_example`` takes a
coverage-over-time sample and emits every point of the example as a ``hypothesis.event()``.

A ``CoverageReport`` is a plain value: JSON round-trip, merge (union; counts add) for xdist
workers and several runs, a terminal table per area and a self-contained HTML page.
``python -m kvmfuzz coverage --seconds N --out DIR [--merge A.json ...]`` runs a campaign with
branch coverage and writes ``DIR/coverage.json`` and ``DIR/index.html``.

The universe is that of the correct model; a planted bug may emit events outside it (reported
as "unknown", not counted).
"""

from __future__ import annotations

import argparse
import ast
import html
import io
import json
import math
import re
import sys
import tempfile
import time
import tokenize
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from kvmfuzz.points import Point

if TYPE_CHECKING:
    from kvmfuzz.driver import Driver
    from kvmfuzz.sched.scheduler import TraceStep

FORMAT = "kvmfuzz-coverage/1"
MODEL_PACKAGES = ("kvmfuzz.virt", "kvmfuzz.x86", "kvmfuzz.host", "kvmfuzz.sched")

# -- the closed universe ------------------------------------------------------------------------

# kind -> (what it is, the driver operations of that kind)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fault": ("vCPU guest access: kvm_mmu_page_fault(), fast and slow TDP path", ("access",)),
    "invalidate": ("host mm change inside mmu_notifier invalidate_range_start/end",
                   ("dontneed", "munmap", "mprotect", "migrate", "thp_split", "thp_collapse")),
    "age": ("host aging: clear_flush_young / clear_young / test_young (lockless)",
            ("age", "clear_young", "test_young")),
    "memslot": ("KVM_SET_USER_MEMORY_REGION2: kvm_set_memslot()", ("memslot",)),
    "attributes": ("KVM_SET_MEMORY_ATTRIBUTES: kvm_vm_set_mem_attributes()", ("set_attributes",)),
    "punch_hole": ("guest_memfd fallocate(PUNCH_HOLE): kvm_gmem_punch_hole()", ("punch_hole",)),
    "dirty_log": ("KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG / KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
                  ("get_dirty_log", "clear_dirty_log", "enable_manual_protect")),
    "zap_gfn_range": ("kvm_zap_gfn_range() (MTRR / CR0.CD / APICv inhibit)", ("zap_gfn_range",)),
    "host_atomic": ("host only, one atomic step, no notifier: mmap, a VMM write to guest memory",
                    ("mmap", "host_write")),
}
OP_KIND: dict[str, str] = {op: kind for kind, (_, ops) in KINDS.items() for op in ops}

_P = Point
# kind -> ((point, where the kind's code stops there), ...): every yield site of the model.
SITES: dict[str, tuple[tuple[Point, str], ...]] = {
    "fault": (
        (_P.VCPU_GUEST_ACCESS, "kvm_vcpu_access(): about to enter the guest"),
        (_P.MMU_LOCK_READ, "kvm_tdp_mmu_alloc_root() / kvm_mmu_free_obsolete_roots() / the fault's "
         "read_lock(mmu_lock)"),
        (_P.FAST_PF_CMPXCHG, "fast_page_fault(): lockless read done, cmpxchg not yet"),
        (_P.FAST_PF_MARK_DIRTY, "fast_page_fault(): W set, mark_page_dirty_in_slot() not yet"),
        (_P.FAULT_TOPUP_CACHES, "kvm_tdp_mmu_page_fault(): mmu_topup_memory_caches()"),
        (_P.FAULT_SEQ_SNAPSHOT, "kvm_mmu_faultin_pfn(): mmu_invalidate_seq snapshotted"),
        (_P.FAULT_GUP, "__kvm_mmu_faultin_pfn(): before hva_to_pfn()"),
        (_P.FAULT_GMEM_GET_PFN, "kvm_mmu_faultin_pfn_private(): before kvm_gmem_get_pfn()"),
        (_P.FAULT_PFN_RESOLVED, "pfn resolved (GUP or guest_memfd), mmu_lock not yet taken"),
        (_P.FAULT_BEFORE_MMU_LOCK, "kvm_tdp_mmu_page_fault(): pre-checked, before read_lock()"),
        (_P.TDP_MAP_STEP_DOWN, "kvm_tdp_mmu_map(): a table linked or split, stepping down"),
        (_P.VCPU_REENTER, "kvm_vcpu_access(): fault handled, about to re-enter the guest"),
    ),
    "invalidate": (
        (_P.MN_INVALIDATE_LOCK, "invalidate_range_start/end: spin_lock(mn_invalidate_lock)"),
        (_P.MN_START_COUNTED, "invalidate_range_start: mn_active_invalidate_count raised"),
        (_P.MMU_LOCK_WRITE, "__kvm_handle_hva_range(): write_lock(mmu_lock) on the first slot"),
        (_P.TDP_MMU_YIELD, "kvm_unmap_gfn_range() -> tdp_mmu_zap_leafs(): cond_resched"),
        (_P.HOST_PTE_CHANGE, "host mm: start returned, page tables not yet changed"),
        (_P.MN_END_BEFORE_COUNT, "invalidate_range_end: end done, count not yet lowered"),
    ),
    "age": (
        (_P.AGE_SPTE, "__kvm_tdp_mmu_age_gfn_range(): accessed leaf read, not yet aged"),
    ),
    "memslot": (
        (_P.SLOTS_LOCK, "kvm_set_memory_region(): mutex_lock(slots_lock)"),
        (_P.SLOTS_ARCH_LOCK, "kvm_set_memslot() / kvm_invalidate_memslot(): slots_arch_lock"),
        (_P.MN_INVALIDATE_LOCK, "kvm_swap_active_memslots(): spin_lock(mn_invalidate_lock)"),
        (_P.SWAP_WAIT_MN_ACTIVE, "kvm_swap_active_memslots(): asleep until the count drops"),
        (_P.SYNCHRONIZE_SRCU, "kvm_swap_active_memslots(): synchronize_srcu()"),
        (_P.MMU_LOCK_WRITE, "kvm_mmu_zap_all_fast() / kvm_mmu_zap_memslot(): write_lock()"),
        (_P.MMU_LOCK_READ, "zap invalidated roots / eager split / wrprot / recovery: read_lock()"),
        (_P.TDP_MMU_YIELD, "a zap, split, write-protect or recovery walk: cond_resched"),
        (_P.TDP_RECOVER_HUGE, "recover_huge_pages_range(): about to build a huge SPTE"),
        (_P.TDP_SPLIT_ALLOC, "dirty-log enable: eager split allocating a table"),
        (_P.DIRTY_LOG_ENABLE_WRPROT, "kvm_mmu_slot_apply_flags(): split done, not yet wrprot"),
        (_P.GMEM_INVALIDATE_LOCK, "kvm_gmem_bind() / kvm_gmem_unbind(): filemap_invalidate_lock"),
    ),
    "attributes": (
        (_P.SLOTS_LOCK, "kvm_vm_set_mem_attributes(): mutex_lock(slots_lock)"),
        (_P.MMU_LOCK_WRITE, "kvm_handle_gfn_range(): write_lock(mmu_lock) on the first slot"),
        (_P.TDP_MMU_YIELD, "kvm_arch_pre_set_memory_attributes() zap: cond_resched"),
        (_P.ATTR_STORE, "before storing one gfn's attribute (no mmu_lock)"),
    ),
    "punch_hole": (
        (_P.GMEM_INVALIDATE_LOCK, "kvm_gmem_punch_hole(): filemap_invalidate_lock"),
        (_P.MMU_LOCK_WRITE, "__kvm_gmem_invalidate_begin / _end: write_lock(mmu_lock)"),
        (_P.TDP_MMU_YIELD, "kvm_mmu_unmap_gfn_range() zap: cond_resched"),
        (_P.GMEM_TRUNCATE, "SPTEs zapped, folios not yet freed"),
    ),
    "dirty_log": (
        (_P.SLOTS_LOCK, "GET / CLEAR / ENABLE_CAP: mutex_lock(slots_lock)"),
        (_P.MMU_LOCK_WRITE, "GET / CLEAR: write_lock(mmu_lock), or re-taken after an allocation"),
        (_P.TDP_SPLIT_ALLOC, "INITIALLY_SET: kvm_tdp_mmu_try_split_huge_pages() allocating"),
        (_P.TDP_MMU_YIELD, "INITIALLY_SET: the split walk's cond_resched"),
        (_P.DIRTY_LOG_BEFORE_FLUSH, "KVM_GET_DIRTY_LOG: mmu_lock dropped, flush not yet done"),
        (_P.CLEAR_DIRTY_LOG_BEFORE_FLUSH, "KVM_CLEAR_DIRTY_LOG: mmu_lock dropped, flush not yet done"),
    ),
    "zap_gfn_range": (
        (_P.MMU_LOCK_WRITE, "kvm_zap_gfn_range(): write_lock(mmu_lock)"),
        (_P.TDP_MMU_YIELD, "kvm_tdp_mmu_zap_leafs(): cond_resched"),
    ),
    "host_atomic": (),
}

# Points no operation can stop at, whatever the schedule: the lock is never found taken (an
# uncontended acquisition does not yield, see sched/traps.py).
IMPOSSIBLE_POINTS: dict[Point, str] = {
    Point.MMU_LOCK_READ: (
        "read_lock(mmu_lock) waits only for a writer, and no writer holds mmu_lock across a "
        "preemption point: every write section either has no yield or drops the lock first "
        "(tdp_mmu_iter_cond_resched, TDP_SPLIT_ALLOC), so a reader never finds it write-held"),
    Point.MN_INVALIDATE_LOCK: (
        "mn_invalidate_lock (a spinlock) is never held across a preemption point: notifier "
        "start/end and kvm_swap_active_memslots() drop it before every yield, so it is never "
        "found taken"),
    Point.SLOTS_ARCH_LOCK: (
        "every taker of slots_arch_lock holds slots_lock (the TDP-only model has no user inside "
        "SRCU, such as shadow-root rmap allocation), so it is never contended"),
}

# Pair-specific impossibilities beyond those of their site: (kind, point, running kind) -> why.
# None are known: any idle actor of the running kind can start an operation and take a step
# (perhaps only to block) while another is stopped anywhere, with 2 mm, 2 vmm (3 in the
# WeavingMachine's VM) and up to 3 vCPUs.
IMPOSSIBLE_PAIRS: dict[tuple[str, Point, str], str] = {}

_L3 = ("no 1G leaf exists: the host maps at most PMD-sized THPs (host_pfn_mapping_level() <= 2) "
       "and private faults are order 0")
_CHANGES = ("CREATE", "DELETE", "MOVE", "FLAGS_ONLY")


@attrs.frozen
class Outcome:
    """One outcome of the closed table: ``label`` (a ghost event or a derived fact)."""

    label: str
    area: str
    description: str
    impossible: str | None = None


def _outcomes() -> tuple[Outcome, ...]:
    """The closed outcome table (see the module docstring)."""
    o: list[Outcome] = []

    def add(area: str, label: str, description: str, impossible: str | None = None) -> None:
        o.append(Outcome(label, area, description, impossible))

    # fault: results, retry reasons, exits
    add("fault", "access.read", "a guest read completed")
    add("fault", "access.write", "a guest write completed")
    for ret, what in (("FIXED", "the fault installed or fixed an SPTE"),
                      ("SPURIOUS", "the SPTE already allowed the access"),
                      ("RETRY", "the fault gave up and the vCPU re-enters"),
                      ("EMULATE", "MMIO: emulate (exit to userspace)"),
                      ("EFAULT", "-EFAULT (memory-fault or EFAULT exit)")):
        add("fault", f"fault.ret.{ret}", f"RET_PF_{ret}: {what}")
    add("fault", "fault.ret.WRITE_PROTECTED", "RET_PF_WRITE_PROTECTED",
        "write-tracking is not modelled: make_spte() is never asked to write-protect a tracked gfn")
    for ret in ("CONTINUE", "INVALID"):
        add("fault", f"fault.ret.{ret}", f"RET_PF_{ret}",
            "internal: kvm_mmu_page_fault() never returns it to the vCPU loop (INVALID from the "
            "MMIO and fast paths falls through to the TDP fault)")
    same_step = ("the model reads the SPTE and does its cmpxchg in one atomic step (no preemption "
                 "point between them in kvm_tdp_mmu_map()), so no other CPU can change it in between")
    for label, what, impossible in (
            ("in-progress", "is_page_fault_stale(): gfn inside the invalidation in progress", None),
            ("seq-changed", "is_page_fault_stale(): mmu_invalidate_seq moved since the snapshot", None),
            ("obsolete_root", "is_page_fault_stale(): the vCPU's root is obsolete", None),
            ("cmpxchg", "tdp_mmu_map_handle_target_level(): cmpxchg lost", same_step),
            ("cmpxchg_link", "kvm_tdp_mmu_map(): linking / splitting a table lost its cmpxchg",
             same_step),
            ("frozen_spte", "kvm_tdp_mmu_map(): stepped into a table removed meanwhile (FROZEN)",
             None),
            ("invalid_slot", "kvm_mmu_faultin_pfn(): the memslot is being deleted / moved", None),
            ("precheck1", "mmu_invalidate_retry_gfn_unsafe() before resolving the pfn", None),
            ("precheck2", "mmu_invalidate_retry_gfn_unsafe() after resolving the pfn", None),
            ("mmio_spte_zapped", "handle_mmio_page_fault(): the MMIO SPTE is gone",
             "the hardware walk and handle_mmio_page_fault()'s lockless walk run in one atomic step "
             "(kvm_check_requests() between them never yields: MMU_LOCK_READ is unreachable)")):
        add("fault", f"fault.retry.{label}", f"retry: {what}", impossible)
    add("fault", "fast_pf.fixed.tracked", "fast page fault restored an access-tracked SPTE")
    add("fault", "fast_pf.fixed.wrprot", "fast page fault made a write-protected SPTE writable")
    add("fault", "fast_pf.cmpxchg_lost", "fast page fault lost its cmpxchg (retries)")
    add("fault", "fast_pf.gave_up", "fast page fault retried more than 4 times")
    add("fault", "exit.mmio", "the access ended in an MMIO exit")
    add("fault", "exit.memory_fault", "the access ended in KVM_EXIT_MEMORY_FAULT")
    add("fault", "exit.efault", "the access ended in -EFAULT (no host page)")
    add("fault", "fault.exit.memory_fault", "memory-fault exit: private/shared mismatch")
    add("fault", "fault.exit.efault", "EFAULT: GUP found no (writable) host page")
    add("fault", "fault.emulate.ro_slot", "a write to a read-only memslot: MMIO exit")
    add("fault", "fault.mmio_cache_hit", "the vCPU's MMIO-info cache answered")
    # invalidate
    add("invalidate", "mn.start.slot", "notifier start overlapping a memslot (mmu_lock, begin)")
    add("invalidate", "mn.start.noslot", "notifier start with no memslot (nothing locked)")
    # age
    add("age", "spte.age", "an accessed SPTE aged (A cleared or access-tracked)")
    add("age", "spte.age.lost", "aging lost its cmpxchg (the SPTE stays young)")
    # memslot
    for change in _CHANGES:
        for inval in ("inval-pending", "quiet"):
            for srcu in ("fault-srcu", "no-fault-srcu"):
                add("memslot", f"memslot.{change}.{inval}.{srcu}",
                    f"{change}; an invalidation {'was' if inval != 'quiet' else 'was not'} "
                    f"pending during the update; a vCPU fault "
                    f"{'held' if srcu == 'fault-srcu' else 'did not hold'} SRCU at its "
                    "synchronize_srcu()")
    add("memslot", "swap.waited", "kvm_swap_active_memslots() waited for mn_active_invalidate_count")
    add("memslot", "srcu.waited", "synchronize_srcu() waited for a reader")
    add("memslot", "dirty_log.enable", "dirty logging enabled on a slot (split, write-protect)")
    add("memslot", "dirty_log.disable", "dirty logging disabled (huge-page recovery)")
    add("memslot", "zap_all_fast", "kvm_mmu_zap_all_fast(): every root obsoleted")
    add("memslot", "mmio_gen.wrap", "the MMIO generation wrapped (zap all)")
    # attributes
    add("attributes", "attr.noop", "the range already had the attributes")
    for direction in ("to_private", "to_shared"):
        add("attributes", f"attr.{direction}.noslot", f"{direction} over no memslot (no begin/end)")
        for state, what in (("unmapped", "nothing mapped"), ("mapped", "4K SPTEs zapped"),
                            ("huge", "a huge SPTE zapped")):
            add("attributes", f"attr.{direction}.{state}", f"{direction} over a slot: {what}")
    # punch_hole
    add("punch_hole", "gmem.punch.slot", "hole punched in a bound range (begin/end)")
    add("punch_hole", "gmem.punch.noslot", "hole punched where no memslot is bound")
    # dirty_log
    for label, what in (("get.nonempty", "GET harvested dirty pages and re-protected them"),
                        ("get.empty", "GET found nothing dirty"),
                        ("get.manual", "GET with manual protect (no re-protection)"),
                        ("clear.nonempty", "CLEAR re-protected pages"),
                        ("clear.empty", "CLEAR cleared nothing"),
                        ("manual_protect", "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled"),
                        ("manual_protect.initially_set", "... with KVM_DIRTY_LOG_INITIALLY_SET")):
        add("dirty_log", f"dirty_log.{label}", what)
    # zap_gfn_range
    add("zap_gfn_range", "zap_gfn_range", "kvm_zap_gfn_range() completed")
    # mmu: SPTE transitions, roots
    for level in (1, 2, 3):
        bad = _L3 if level == 3 else None
        add("mmu", f"spte.install.L{level}", f"non-present -> present leaf at L{level}", bad)
        add("mmu", f"spte.zap.L{level}", f"a present L{level} leaf zapped", bad)
        if level > 1:
            add("mmu", f"spte.split.L{level}", f"an L{level} huge leaf split", bad)
            add("mmu", f"spte.recover.L{level}", f"4K leaves recovered into an L{level} leaf", bad)
    add("mmu", "spte.install.mmio", "an MMIO SPTE installed")
    add("mmu", "fault.mmio_gen_miss", "an MMIO SPTE of a stale generation")
    add("mmu", "spte.wrprot", "W cleared (dirty logging: enable, GET, CLEAR)")
    add("mmu", "spte.wrprot_huge", "a huge leaf write-protected (INITIALLY_SET head/tail)")
    add("mmu", "spte.cmpxchg_lost", "an atomic SPTE update lost its cmpxchg",
        "every caller of tdp_mmu_set_spte_atomic() reads the SPTE and does its cmpxchg in one atomic "
        "step, except huge-page recovery, whose tdp_mmu_make_huge_spte() gives up (-ENOENT) first "
        "when the parent changed during TDP_RECOVER_HUGE (its branch is marked unreachable)")
    add("mmu", "tdp.yield", "a TDP MMU walk dropped mmu_lock to yield")
    add("mmu", "root.alloc", "a TDP MMU root allocated")
    add("mmu", "root.freed", "a TDP MMU root freed")
    return tuple(o)


OUTCOMES: tuple[Outcome, ...] = _outcomes()
# Model events that are only inputs of derived outcomes (not counted under their own label).
INPUT_EVENTS = frozenset(
    [f"memslot.{c}.{b}" for c in _CHANGES for b in ("pending-inval", "quiet")]
    + ["attr.to_private.slot", "attr.to_shared.slot"])
_RESULT_OUTCOME = {"mmio": "exit.mmio", "memory_fault": "exit.memory_fault", "efault": "exit.efault"}

# Areas of the report: the kinds with code of their own, the TDP MMU core and the rest.
AREAS: tuple[tuple[str, str], ...] = (
    *((k, d) for k, (d, _) in KINDS.items() if k != "host_atomic"),
    ("mmu", "TDP MMU core: SPTE transitions, roots, TLB, RCU (shared by every kind)"),
    ("core", "struct kvm, host pages, the scheduler and locks"),
)
FILE_AREAS: dict[str, str] = {
    "x86/fault.py": "fault", "x86/fast_pf.py": "fault", "x86/vcpu.py": "fault",
    "host/mm.py": "invalidate", "virt/notifier.py": "invalidate",
    "x86/aging.py": "age",
    "virt/memslots.py": "memslot", "x86/huge.py": "memslot",
    "virt/attributes.py": "attributes",
    "virt/guest_memfd.py": "punch_hole",
    "virt/dirty.py": "dirty_log",
}


def file_area(path: str) -> str:
    """The report area of a model file (``x86/fault.py``): its own kind, else mmu / core."""
    return FILE_AREAS.get(path, "mmu" if path.startswith("x86/") else "core")


def site_key(kind: str, point: Point | str) -> str:
    return f"{kind}@{point.name if isinstance(point, Point) else point}"


@attrs.frozen
class Site:
    """A point of one kind of operation (``impossible``: why it cannot be reached)."""

    kind: str
    point: Point
    where: str
    impossible: str | None

    @property
    def key(self) -> str:
        return site_key(self.kind, self.point)


@attrs.frozen
class Universe:
    """Everything that can be counted: sites, outcomes, pairs (each with ``impossible``)."""

    sites: dict[str, Site]
    outcomes: dict[str, Outcome]
    pairs: dict[tuple[str, str], str | None]

    def reachable_sites(self) -> list[str]:
        return [k for k, s in self.sites.items() if s.impossible is None]

    def reachable_outcomes(self) -> list[str]:
        return [k for k, o in self.outcomes.items() if o.impossible is None]

    def reachable_pairs(self) -> list[tuple[str, str]]:
        return [k for k, why in self.pairs.items() if why is None]


def universe() -> Universe:
    """The universe, computed from ``SITES`` x ``KINDS`` and the impossibility tables."""
    sites: dict[str, Site] = {}
    for kind in KINDS:
        for point, where in SITES[kind]:
            why = IMPOSSIBLE_POINTS.get(point)
            sites[site_key(kind, point)] = Site(kind, point, where, why)
    pairs: dict[tuple[str, str], str | None] = {}
    for key, site in sites.items():
        for runner in KINDS:
            why = site.impossible and f"the site is unreachable: {site.impossible}"
            pairs[key, runner] = why or IMPOSSIBLE_PAIRS.get((site.kind, site.point, runner))
    return Universe(sites, {o.label: o for o in OUTCOMES}, pairs)


# -- the report value ------------------------------------------------------------------------------

@attrs.frozen
class Sample:
    """Coverage after ``examples`` examples (distinct reachable items hit so far)."""

    examples: int
    seconds: float
    points: int
    outcomes: int
    pairs: int


@attrs.frozen
class Run:
    """One campaign (or xdist shard) that contributed to a report."""

    label: str
    seconds: float
    examples: int
    steps: int
    samples: tuple[Sample, ...] = ()
    bug: str | None = None  # the planted bug the campaign ran (None: the correct model)


Arc = tuple[int, int]

# Why a branch is left out of "protocol" branch coverage (it is still shown in "all branches"):
ARC_CLASSES: dict[str, str] = {
    "planted": "decides on a planted bug (vm.bug(...)): the correct model always goes one way",
    "defensive": "leads to a defensive check firing (raise, WARN via warn(), KVM_BUG, a deadlock "
                 "report): never in a correct model",
    "diagnostic": "inside a function that only builds messages or checks invariants (where, "
                  "describe, format_spte, ...)",
    "unreachable": "marked '# unreachable: <reason>' in the model source: never taken in the "
                   "correct model whatever the schedule or inputs (the reason is listed per arc)",
}
DIAGNOSTIC_FUNCTIONS = frozenset({
    "where", "holders", "holder_names", "owner_name", "raise_deadlock", "format_spte", "kvm_bug",
    "check_spte_writable_invariants", "reserved_bits_violation", "__str__", "__repr__"})


@attrs.frozen
class FileBranches:
    """coverage.py's measurement of one model file (``path`` relative to the package), with the
    arcs that are not protocol branches (``excluded``: arc -> an ``ARC_CLASSES`` key) and, for
    the "unreachable" ones, the reason their marker gives (``reasons``: arc -> text)."""

    path: str
    lines_executed: frozenset[int]
    lines_missing: frozenset[int]
    branches_executed: frozenset[Arc]
    branches_missing: frozenset[Arc]
    excluded: dict[Arc, str] = attrs.field(factory=dict)
    reasons: dict[Arc, str] = attrs.field(factory=dict)

    @property
    def statements(self) -> int:
        return len(self.lines_executed) + len(self.lines_missing)

    @property
    def branches(self) -> int:
        return len(self.branches_executed) + len(self.branches_missing)

    @property
    def protocol(self) -> Ratio:
        """Branches hit / branches, leaving out the ``excluded`` arcs."""
        return Ratio(len(self.branches_executed - self.excluded.keys()),
                     len((self.branches_executed | self.branches_missing) - self.excluded.keys()))

    @property
    def unreachable_executed(self) -> list[Arc]:
        """Arcs marked unreachable that the measurement saw taken: the marker is wrong (or the
        run had a planted bug that its reason names)."""
        return sorted(a for a in self.branches_executed if self.excluded.get(a) == "unreachable")

    def union(self, other: FileBranches) -> FileBranches:
        lines = self.lines_executed | other.lines_executed
        arcs = self.branches_executed | other.branches_executed
        return FileBranches(self.path, lines, (self.lines_missing | other.lines_missing) - lines,
                            arcs, (self.branches_missing | other.branches_missing) - arcs,
                            {**self.excluded, **other.excluded}, {**self.reasons, **other.reasons})

    def to_json(self) -> dict[str, Any]:
        """``excluded`` rows are ``[from, to, class]``, plus the reason for "unreachable" arcs."""
        excluded = [[a, b, c] + ([self.reasons[a, b]] if (a, b) in self.reasons else [])
                    for (a, b), c in sorted(self.excluded.items())]
        return {"path": self.path,
                "lines": {"executed": sorted(self.lines_executed), "missing": sorted(self.lines_missing)},
                "branches": {"executed": [list(a) for a in sorted(self.branches_executed)],
                             "missing": [list(a) for a in sorted(self.branches_missing)],
                             "excluded": excluded}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FileBranches:
        br = d["branches"]
        rows = br.get("excluded", [])
        return cls(d["path"], frozenset(d["lines"]["executed"]), frozenset(d["lines"]["missing"]),
                   frozenset((a, b) for a, b in br["executed"]),
                   frozenset((a, b) for a, b in br["missing"]),
                   {(row[0], row[1]): row[2] for row in rows},
                   {(row[0], row[1]): row[3] for row in rows if len(row) > 3})


def merge_files(*parts: Iterable[FileBranches]) -> tuple[FileBranches, ...]:
    """The union of several measurements, file by file (sorted by path)."""
    out: dict[str, FileBranches] = {}
    for part in parts:
        for f in part:
            out[f.path] = out[f.path].union(f) if f.path in out else f
    return tuple(out[p] for p in sorted(out))


def _add(a: Mapping[Any, int], b: Mapping[Any, int]) -> dict[Any, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


@attrs.frozen
class CoverageReport:
    """What one or several campaigns reached: hit counts per point / outcome / pair, labels seen
    outside the tables (``unknown``), branch coverage (``files``; None: not measured), runs."""

    points: dict[str, int] = attrs.field(factory=dict)
    outcomes: dict[str, int] = attrs.field(factory=dict)
    pairs: dict[tuple[str, str], int] = attrs.field(factory=dict)
    unknown: dict[str, int] = attrs.field(factory=dict)
    files: tuple[FileBranches, ...] | None = None
    runs: tuple[Run, ...] = ()

    def merge(self, other: CoverageReport) -> CoverageReport:
        """The union of two reports: every hit of either, counts added, runs side by side."""
        files = (None if self.files is None and other.files is None
                 else merge_files(self.files or (), other.files or ()))
        return CoverageReport(_sorted(_add(self.points, other.points)),
                              _sorted(_add(self.outcomes, other.outcomes)),
                              _sorted(_add(self.pairs, other.pairs)),
                              _sorted(_add(self.unknown, other.unknown)), files,
                              tuple(sorted(self.runs + other.runs, key=lambda r: r.label)))

    def with_files(self, files: Iterable[FileBranches]) -> CoverageReport:
        return attrs.evolve(self, files=merge_files(self.files or (), files))

    @property
    def examples(self) -> int:
        return sum(r.examples for r in self.runs)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.runs)

    def to_json(self) -> dict[str, Any]:
        """JSON (``FORMAT``), with a computed ``summary`` for readers (ignored when loading)."""
        return {
            "format": FORMAT,
            "runs": [{"label": r.label, "seconds": r.seconds, "examples": r.examples,
                      "steps": r.steps, "samples": [attrs.astuple(s) for s in r.samples]}
                     | ({"bug": r.bug} if r.bug is not None else {})
                     for r in self.runs],
            "points": self.points, "outcomes": self.outcomes,
            "pairs": [[s, k, n] for (s, k), n in sorted(self.pairs.items())],
            "unknown": self.unknown,
            "files": None if self.files is None else [f.to_json() for f in self.files],
            "summary": summary_json(self),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CoverageReport:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document (format {d.get('format')!r})")
        runs = tuple(Run(r["label"], r["seconds"], r["examples"], r["steps"],
                         tuple(Sample(*s) for s in r["samples"]), r.get("bug")) for r in d["runs"])
        files = d.get("files")
        return cls(dict(d["points"]), dict(d["outcomes"]),
                   {(s, k): n for s, k, n in d["pairs"]}, dict(d.get("unknown", {})),
                   None if files is None else tuple(FileBranches.from_json(f) for f in files), runs)

    @classmethod
    def load(cls, path: str | Path) -> CoverageReport:
        return cls.from_json(json.loads(Path(path).read_text()))


def merge_reports(reports: Iterable[CoverageReport]) -> CoverageReport:
    out = CoverageReport()
    for r in reports:
        out = out.merge(r)
    return out


def _sorted(d: Mapping[Any, int]) -> dict[Any, int]:
    return {k: d[k] for k in sorted(d)}


# -- collection ------------------------------------------------------------------------------------

class _EventLog(list[str]):
    """Stands in for ``vm.ghost.events``: a list (the machine drains it as before) that also
    keeps the labels appended since the last ``take()``."""

    def __init__(self, items: Iterable[str] = ()) -> None:
        super().__init__(items)
        self.fresh: list[str] = []

    def append(self, label: str) -> None:
        super().append(label)
        self.fresh.append(label)

    def take(self) -> list[str]:
        out, self.fresh = self.fresh, []
        return out


@attrs.define
class _InFlight:
    """What the collector remembers about one actor's operation until it is DONE."""

    kind: str
    inval: bool = False  # memslot: mn_active_invalidate_count > 0 at some step meanwhile
    fault_srcu: bool = False  # memslot: a vCPU held kvm->srcu at one of its synchronize_srcu()
    zap_level: int = 0  # attributes: the highest level of a leaf its pre-hook zapped


@attrs.define(eq=False)
class CoverageCollector:
    """Counts points, outcomes and pairs step by step (see the module docstring).

    ``on_step`` is the driver's per-step hook; ``finish_example`` is called once per example
    (the campaign's teardown hook); ``report`` gives the ``CoverageReport``.
    """

    emit_events: bool = True
    points: dict[str, int] = attrs.field(factory=dict)
    outcomes: dict[str, int] = attrs.field(factory=dict)
    pairs: dict[tuple[str, str], int] = attrs.field(factory=dict)
    unknown: dict[str, int] = attrs.field(factory=dict)
    samples: list[Sample] = attrs.field(factory=list)
    examples: int = 0
    steps: int = 0
    started: float = attrs.field(factory=time.monotonic)
    _universe: Universe = attrs.field(factory=universe)
    _reach_sites: frozenset[str] = frozenset()
    _reach_outcomes: frozenset[str] = frozenset()
    _hits: list[int] = attrs.field(factory=lambda: [0, 0, 0])  # points, outcomes, pairs
    _driver: Driver | None = None
    _log: _EventLog | None = None
    _at: dict[str, str] = attrs.field(factory=dict)  # actor -> site it is stopped at
    _ops: dict[str, _InFlight] = attrs.field(factory=dict)
    _example_sites: set[str] = attrs.field(factory=set)

    def __attrs_post_init__(self) -> None:
        self._reach_sites = frozenset(self._universe.reachable_sites())
        self._reach_outcomes = frozenset(self._universe.reachable_outcomes())

    def _begin(self, driver: Driver) -> list[str]:
        """A new example: forget the last one's actors; return the events already logged (this
        first step's: the driver clears them after setup and nothing drains before a step)."""
        self._driver = driver
        self._at.clear()
        self._ops.clear()
        events = driver.vm.ghost.events
        self._log = _EventLog(events)
        driver.vm.ghost.events = self._log
        return list(events)

    def on_step(self, driver: Driver, t: TraceStep) -> None:
        """Count one scheduler step of ``driver`` (called after the step, before the checks)."""
        if driver is not self._driver:
            events = self._begin(driver)
        elif driver.vm.ghost.events is not self._log:  # someone replaced the list: wrap it again
            events = list(driver.vm.ghost.events)
            self._log = _EventLog(events)
            driver.vm.ghost.events = self._log
        else:
            assert self._log is not None
            events = self._log.take()
        vm = driver.vm
        self.steps += 1
        kind = OP_KIND.get(t.op, t.op)
        for actor, site in self._at.items():
            if actor != t.actor:
                self._count(self.pairs, (site, kind), 2)
        op = self._ops.get(t.actor)
        if op is None:
            op = self._ops[t.actor] = _InFlight(kind)
        if t.reached == "DONE":
            self._at.pop(t.actor, None)
        else:
            site = site_key(kind, t.reached)
            self._at[t.actor] = site
            self._example_sites.add(site)
            self._count(self.points, site, 0)
            if t.reached == Point.SYNCHRONIZE_SRCU.name and any(
                    r.actor.kind == "vcpu" for r in vm.srcu.readers.values()):
                op.fault_srcu = True
        if vm.mn_active_invalidate_count:
            for other in self._ops.values():
                other.inval = True
        for label in events:
            self._event(label, op)
        if t.reached == "DONE":
            if t.op == "access" and driver.results and driver.results[-1][0] == t.actor:
                outcome = getattr(driver.results[-1][2], "outcome", None)
                if outcome in _RESULT_OUTCOME:
                    self._outcome(_RESULT_OUTCOME[outcome])
            del self._ops[t.actor]

    def _event(self, label: str, op: _InFlight) -> None:
        if label.startswith("spte.zap.L") and op.kind == "attributes":
            op.zap_level = max(op.zap_level, int(label[len("spte.zap.L"):]))
        if label in INPUT_EVENTS:
            if label.startswith("memslot."):
                change = label.split(".")[1]
                label = (f"memslot.{change}.{'inval-pending' if op.inval else 'quiet'}."
                         f"{'fault-srcu' if op.fault_srcu else 'no-fault-srcu'}")
            else:
                state = ("unmapped", "mapped")[op.zap_level] if op.zap_level < 2 else "huge"
                label = label.removesuffix(".slot") + "." + state
        self._outcome(label)

    def _outcome(self, label: str) -> None:
        if label in self._universe.outcomes:
            self._count(self.outcomes, label, 1)
        else:
            self.unknown[label] = self.unknown.get(label, 0) + 1

    def _count(self, counter: dict[Any, int], key: Any, which: int) -> None:
        n = counter.get(key, 0)
        counter[key] = n + 1
        if n == 0 and self._reachable(key, which):
            self._hits[which] += 1

    def _reachable(self, key: Any, which: int) -> bool:
        if which == 0:
            return key in self._reach_sites
        if which == 1:
            return key in self._reach_outcomes
        return key[0] in self._reach_sites and self._universe.pairs.get(key, "?") is None

    def finish_example(self, examples: int | None = None) -> None:
        """End of an example: a coverage-over-time sample if anything new was hit, and the
        example's points as ``hypothesis.event()`` labels (inside a Hypothesis test).
        ``examples``: the caller's count of examples so far (default: one more)."""
        self.examples = self.examples + 1 if examples is None else examples
        last = self.samples[-1] if self.samples else None
        if last is None or (last.points, last.outcomes, last.pairs) != tuple(self._hits):
            self._sample()
        if self.emit_events and self._example_sites:
            from hypothesis import event
            from hypothesis.control import currently_in_test_context
            if currently_in_test_context():
                for site in sorted(self._example_sites):
                    event(f"point {site}")
        self._example_sites.clear()
        self._driver = None

    def _sample(self) -> None:
        self.samples.append(Sample(self.examples, round(time.monotonic() - self.started, 3),
                                   *self._hits))

    def report(self, label: str, seconds: float | None = None,
               bug: str | None = None) -> CoverageReport:
        """The report so far, as one run called ``label`` (of planted ``bug``, if any)."""
        if not self.samples or self.samples[-1].examples != self.examples:
            self._sample()
        elapsed = time.monotonic() - self.started if seconds is None else seconds
        run = Run(label, round(elapsed, 3), self.examples, self.steps, tuple(self.samples), bug)
        return CoverageReport(_sorted(self.points), _sorted(self.outcomes), _sorted(self.pairs),
                              _sorted(self.unknown), None, (run,))


# -- branch coverage -------------------------------------------------------------------------------

def _rel(path: str) -> str:
    """A model file's path relative to the kvmfuzz package (``x86/fault.py``)."""
    p = Path(path).as_posix()
    i = p.rfind("/kvmfuzz/")
    return p[i + len("/kvmfuzz/"):] if i >= 0 else p.removeprefix("kvmfuzz/")


def _import_time_lines(source: str) -> set[int]:
    """Lines that run when the module is imported: module and class bodies (not functions)."""
    out: set[int] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            out.add(node.lineno)
            for d in getattr(node, "decorator_list", ()):
                out.add(d.lineno)
            if isinstance(node, ast.ClassDef):
                visit(node.body)
    visit(ast.parse(source).body)
    return out


class MarkerError(ValueError):
    """A malformed ``# unreachable`` marker in a model file (no reason, unknown side, or not
    attached to a branch statement)."""


@attrs.frozen
class UnreachableMarker:
    """``# unreachable[(true|false)]: <reason>`` on a branch statement (``if`` / ``elif`` /
    ``while`` / ``for``): the statement's arcs that the correct model never takes.

    ``line`` is the statement's first line, where coverage.py's arcs start. ``side`` None: every
    arc from the line; "true": only the arc into the body (the condition holds, the loop
    iterates); "false": only the others (the condition fails, the loop ends or is skipped).
    """

    line: int
    side: str | None
    reason: str
    body: int  # first line of the statement's body

    def selects(self, arc: Arc) -> bool:
        if arc[0] != self.line:
            return False
        if self.side is None:
            return True
        return (arc[1] == self.body) == (self.side == "true")


UNREACHABLE_SIDES = ("true", "false")
# A comment that starts with "# unreachable" is a marker, and must be well-formed.
_MARKER = re.compile(r"#\s*unreachable\b(?P<rest>.*)$")
_MARKER_BODY = re.compile(r"^(?:\((?P<side>[^)]*)\))?:(?P<reason>.*)$")


def unreachable_markers(source: str, path: str = "<source>") -> dict[int, UnreachableMarker]:
    """The ``# unreachable`` markers of ``source``, by the line of the statement they mark.

    A marker is a comment ``# unreachable: <reason>`` or ``# unreachable(true|false): <reason>``,
    either at the end of the branch statement's first line or on comment lines just above it
    (the reason then goes on over the following comment lines, up to the statement). Raises
    ``MarkerError`` for a marker without a reason, with an unknown side, or not attached to an
    ``if`` / ``elif`` / ``while`` / ``for`` statement: an exclusion must say why, and where.
    """
    tree = ast.parse(source)
    branches: dict[int, ast.If | ast.While | ast.For | ast.AsyncFor] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If | ast.While | ast.For | ast.AsyncFor):
            branches[node.lineno] = node
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
    out: dict[int, UnreachableMarker] = {}
    for n, text in sorted(comments.items()):
        m = _MARKER.match(text)
        if m is None:
            continue
        where = f"{path}:{n}"
        body = _MARKER_BODY.match(m["rest"].strip())
        if body is None:
            raise MarkerError(f"{where}: expected '# unreachable: <reason>' or "
                              f"'# unreachable(true|false): <reason>', got {text!r}")
        side = body["side"].strip().lower() if body["side"] is not None else None
        if side is not None and side not in UNREACHABLE_SIDES:
            raise MarkerError(f"{where}: unknown side {body['side']!r} (expected one of "
                              f"{', '.join(UNREACHABLE_SIDES)})")
        reason = [body["reason"].strip()]
        target = n
        if lines[n - 1].lstrip().startswith("#"):  # a comment block above the statement
            target = n + 1
            while target <= len(lines) and lines[target - 1].lstrip().startswith("#"):
                if _MARKER.match(lines[target - 1].strip()):
                    raise MarkerError(f"{where}: two markers in one comment block")
                reason.append(lines[target - 1].strip().removeprefix("#").strip())
                target += 1
        text_reason = " ".join(r for r in reason if r)
        if not any(c.isalnum() for c in text_reason):
            raise MarkerError(f"{where}: an unreachable marker needs a reason "
                              "('# unreachable: <why the correct model never takes it>')")
        stmt = branches.get(target)
        if stmt is None:
            raise MarkerError(f"{where}: an unreachable marker must be on (or in the comment "
                              f"block right above) the first line of an if / elif / while / for "
                              f"statement; line {target} is not one")
        first = stmt.body[0].lineno
        if side is not None and first == stmt.lineno:
            raise MarkerError(f"{where}: '{side}' needs the statement's body on its own line")
        if target in out:
            raise MarkerError(f"{where}: line {target} is marked twice")
        out[target] = UnreachableMarker(target, side, text_reason, first)
    return out


def classify_arcs(source: str, arcs: Iterable[Arc]) -> dict[Arc, str]:
    """The arcs of ``source`` that are not protocol branches, with their ``ARC_CLASSES`` key."""
    return arc_exclusions(source, arcs)[0]


def arc_exclusions(source: str, arcs: Iterable[Arc],
                   path: str = "<source>") -> tuple[dict[Arc, str], dict[Arc, str]]:
    """``classify_arcs`` and, for the arcs it classes "unreachable", their markers' reasons.

    The automatic classes (planted, defensive, diagnostic) come first; a marker excludes the
    arcs of its statement that none of them took.
    """
    lines = source.splitlines()
    markers = unreachable_markers(source, path)
    owner: dict[int, str] = {}
    planted: set[int] = set()  # `if vm.bug(...)` / `if not vm.bug(...)`: nothing else decides
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for n in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                owner[n] = node.name  # ast.walk is breadth-first: the innermost def wins
        elif isinstance(node, ast.If | ast.While):
            test = node.test.operand if isinstance(node.test, ast.UnaryOp) else node.test
            if (isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute)
                    and test.func.attr == "bug"):
                planted.add(node.lineno)
    out: dict[Arc, str] = {}
    reasons: dict[Arc, str] = {}
    for a, b in sorted(arcs):
        dst = lines[b - 1].strip() if 0 < b <= len(lines) else ""
        name = owner.get(a, "")
        if a in planted:
            out[a, b] = "planted"
        elif (dst.startswith("raise ") or "warn(" in dst or "kvm_bug(" in dst
              or "raise_deadlock(" in dst or dst.endswith(("import ModelError", "import warn"))):
            out[a, b] = "defensive"
        elif name in DIAGNOSTIC_FUNCTIONS or name.startswith("describe"):
            out[a, b] = "diagnostic"
        elif (marker := markers.get(a)) is not None and marker.selects((a, b)):
            out[a, b] = "unreachable"
            reasons[a, b] = marker.reason
    return out, reasons


class BranchCollector:
    """coverage.py branch coverage of the model packages, from ``start()`` to ``stop()``.

    Modules imported before ``start()`` have their import-time lines (module and class bodies)
    credited from the source and the branches out of them left out (they cannot be measured).
    """

    def __init__(self, packages: Sequence[str] = MODEL_PACKAGES) -> None:
        import coverage
        self.packages = tuple(packages)
        self._cov = coverage.Coverage(branch=True, source=list(self.packages), data_file=None,
                                      config_file=False)
        self._cov.set_option("run:disable_warnings", ["module-not-measured", "no-data-collected"])
        self._preloaded = {str(Path(f).resolve()) for name, m in sorted(sys.modules.items())
                           if name.startswith(self.packages) and (f := getattr(m, "__file__", None))}
        self._running = False

    def start(self) -> BranchCollector:
        self._cov.start()
        self._running = True
        return self

    def stop(self) -> tuple[FileBranches, ...]:
        """Stop measuring and return the per-file measurement (sorted by path)."""
        if self._running:
            self._cov.stop()
            self._running = False
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "coverage.json"
            self._cov.json_report(outfile=str(out))
            data = json.loads(out.read_text())
        files = []
        for name, f in sorted(data["files"].items()):
            executed, missing = set(f["executed_lines"]), set(f["missing_lines"])
            arcs_done = {(a, b) for a, b in f["executed_branches"]}
            arcs_missing = {(a, b) for a, b in f["missing_branches"]}
            if str(Path(name).resolve()) in self._preloaded:
                early = _import_time_lines(Path(name).read_text()) & (executed | missing)
                executed |= early
                missing -= early
                arcs_done = {a for a in arcs_done if a[0] not in early}
                arcs_missing = {a for a in arcs_missing if a[0] not in early}
            excluded, reasons = arc_exclusions(Path(name).read_text(), arcs_done | arcs_missing,
                                               _rel(name))
            files.append(FileBranches(_rel(name), frozenset(executed), frozenset(missing),
                                      frozenset(arcs_done), frozenset(arcs_missing), excluded,
                                      reasons))
        return tuple(files)


# -- analysis --------------------------------------------------------------------------------------

@attrs.frozen
class Ratio:
    """``hit`` of ``total`` reachable items."""

    hit: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.hit / self.total if self.total else 100.0

    def __str__(self) -> str:
        return f"{self.hit}/{self.total}"


@attrs.frozen
class AreaRow:
    """One row of the per-area table."""

    area: str
    description: str
    points: Ratio
    outcomes: Ratio
    pairs: Ratio
    branches: Ratio | None  # protocol branches (None: not measured, or no file of its own)
    branches_all: Ratio | None  # every branch coverage.py counts


def _site_area(u: Universe, key: str) -> str:
    return u.sites[key].kind if key in u.sites else key.split("@")[0]


def area_rows(report: CoverageReport, u: Universe | None = None) -> list[AreaRow]:
    """One row per area plus ``total``: reachable items hit / reachable items."""
    u = u or universe()
    rows = []
    for area, description in (*AREAS, ("total", "")):
        def mine(a: str, area: str = area) -> bool:
            return area == "total" or a == area
        sites = [k for k in u.reachable_sites() if mine(u.sites[k].kind)]
        outs = [k for k in u.reachable_outcomes() if mine(u.outcomes[k].area)]
        pairs = [k for k in u.reachable_pairs() if mine(u.sites[k[0]].kind)]
        branches = branches_all = None
        if report.files is not None:
            files = [f for f in report.files if mine(file_area(f.path))]
            if files:
                branches = Ratio(sum(f.protocol.hit for f in files),
                                 sum(f.protocol.total for f in files))
                branches_all = Ratio(sum(len(f.branches_executed) for f in files),
                                     sum(f.branches for f in files))
        rows.append(AreaRow(area, description,
                            Ratio(sum(1 for k in sites if report.points.get(k)), len(sites)),
                            Ratio(sum(1 for k in outs if report.outcomes.get(k)), len(outs)),
                            Ratio(sum(1 for k in pairs if report.pairs.get(k)), len(pairs)),
                            branches, branches_all))
    return rows


@attrs.frozen
class Gaps:
    """What a report did not reach, what cannot be reached, and what contradicts the tables."""

    points: list[str]
    outcomes: list[str]
    pairs: dict[str, list[str]]  # site -> running kinds never seen while it was stopped there
    impossible_points: dict[str, str]
    impossible_outcomes: dict[str, str]
    impossible_pairs: int
    unexpected: list[str]  # hits of impossible items, or of sites outside SITES


def gaps(report: CoverageReport, u: Universe | None = None) -> Gaps:
    u = u or universe()
    pairs: dict[str, list[str]] = {}
    for site, kind in u.reachable_pairs():
        if not report.pairs.get((site, kind)):
            pairs.setdefault(site, []).append(kind)
    unexpected = sorted(
        [f"point {k}" for k in report.points if k not in u.sites or u.sites[k].impossible]
        + [f"outcome {k}" for k in report.outcomes
           if k not in u.outcomes or u.outcomes[k].impossible]
        + [f"pair {s} x {k}" for s, k in report.pairs if u.pairs.get((s, k), "?") is not None
           and s in u.sites and u.sites[s].impossible is None])
    return Gaps(
        [k for k in u.reachable_sites() if not report.points.get(k)],
        [k for k in u.reachable_outcomes() if not report.outcomes.get(k)],
        pairs,
        {k: s.impossible for k, s in u.sites.items() if s.impossible is not None},
        {k: o.impossible for k, o in u.outcomes.items() if o.impossible is not None},
        sum(1 for why in u.pairs.values() if why is not None),
        unexpected)


def summary_json(report: CoverageReport) -> dict[str, Any]:
    """The figures of ``area_rows`` and ``gaps`` as JSON (part of coverage.json)."""
    u = universe()
    g = gaps(report, u)

    def ratio(r: Ratio | None) -> dict[str, Any] | None:
        return None if r is None else {"hit": r.hit, "total": r.total,
                                       "percent": round(r.percent, 2)}
    return {
        "areas": {r.area: {"points": ratio(r.points), "outcomes": ratio(r.outcomes),
                           "pairs": ratio(r.pairs), "branches": ratio(r.branches),
                           "branches_all": ratio(r.branches_all)}
                  for r in area_rows(report, u)},
        "unreached": {"points": g.points, "outcomes": g.outcomes, "pairs": g.pairs},
        "impossible": {"points": g.impossible_points, "outcomes": g.impossible_outcomes,
                       "pairs": g.impossible_pairs},
        "unexpected": g.unexpected,
        "unknown_events": report.unknown,
    }


# -- the terminal table ----------------------------------------------------------------------------

def _cell(r: Ratio | None, width: int) -> str:
    if r is None or not r.total:
        return "-".ljust(width)
    return f"{r!s:>7} {r.percent:5.1f}%".ljust(width)


def terminal_lines(report: CoverageReport) -> list[str]:
    """The end-of-campaign table per area and the lists of what was never reached."""
    u = universe()
    g = gaps(report, u)
    seconds = max((r.seconds for r in report.runs), default=0.0)
    measured = "on" if report.files is not None else "off (--kvmfuzz-coverage-report / " \
        "python -m kvmfuzz coverage measure it)"
    lines = [f"kvmfuzz protocol coverage: {len(report.runs)} run(s), {report.examples} examples, "
             f"{report.steps} steps, {seconds:.1f}s; branch coverage {measured}",
             f"{'area':<14}{'points':<16}{'outcomes':<16}{'pairs':<16}{'branches*':<16}"]
    for row in area_rows(report, u):
        lines.append(f"{row.area:<14}{_cell(row.points, 16)}{_cell(row.outcomes, 16)}"
                     f"{_cell(row.pairs, 16)}{_cell(row.branches, 16)}".rstrip())
    lines += _branch_footnote(report)
    lines.append("never reached (reachable in the model):")
    lines.append("  points: " + (", ".join(g.points) or "none"))
    lines.append("  outcomes: " + (", ".join(g.outcomes) or "none"))
    missing = sum(len(v) for v in g.pairs.values())
    lines.append(f"  pairs ({missing}): " + ("none" if not missing else ""))
    for site, kinds in sorted(g.pairs.items()):
        lines.append(f"    {site} x {', '.join(kinds)}")
    lines.append(f"impossible (not counted): {len(g.impossible_points)} points, "
                 f"{len(g.impossible_outcomes)} outcomes, {g.impossible_pairs} pairs (those at "
                 "an impossible point):")
    for point, why in sorted(IMPOSSIBLE_POINTS.items(), key=lambda kv: kv[0].name):
        sites = [k for k, s in u.sites.items() if s.point is point]
        lines.append(f"  {point.name} ({', '.join(sites)}): {why}")
    reasons: dict[str, list[str]] = {}
    for label, why in g.impossible_outcomes.items():
        reasons.setdefault(why, []).append(label)
    for why, labels in sorted(reasons.items()):
        lines.append(f"  {', '.join(labels)}: {why}")
    if g.unexpected:
        lines.append("UNEXPECTED (hit, yet impossible or outside the tables; fix kvmfuzz/coverage.py): "
                     + ", ".join(g.unexpected))
    if report.unknown:
        lines.append("events outside the outcome table (not counted): "
                     + ", ".join(f"{k}={v}" for k, v in sorted(report.unknown.items())))
    return lines


def _excluded_counts(files: Iterable[FileBranches]) -> dict[str, int]:
    counts = dict.fromkeys(ARC_CLASSES, 0)
    for f in files:
        for cls in f.excluded.values():
            counts[cls] += 1
    return counts


def _unreachable_executed(report: CoverageReport) -> tuple[list[str], list[str]]:
    """``path:from->to`` of the arcs marked unreachable that were taken anyway: (those to
    flag: a wrong marker; those whose marker's reason names a planted bug one of the runs
    had, which is what the reason says takes them)."""
    bugs = _run_bugs(report)
    flagged: list[str] = []
    explained: list[str] = []
    for f in report.files or ():
        for a, b in f.unreachable_executed:
            named = _names_a_bug(f.reasons.get((a, b), ""), bugs)
            (explained if named else flagged).append(f"{f.path}:{a}->{'exit' if b < 0 else b}")
    return flagged, explained


def _run_bugs(report: CoverageReport) -> frozenset[str]:
    """The planted bugs the report's runs had."""
    return frozenset(r.bug for r in report.runs if r.bug is not None)


def _names_a_bug(reason: str, bugs: frozenset[str]) -> bool:
    """Whether an unreachable marker's reason names one of ``bugs`` (so the arc is expected
    to be taken under it)."""
    return any(re.search(rf"\b{re.escape(bug)}\b", reason) for bug in bugs)


def _branch_footnote(report: CoverageReport) -> list[str]:
    if report.files is None:
        return ["* branches: not measured"]
    total = area_rows(report)[-1]
    counts = _excluded_counts(report.files)
    assert total.branches_all is not None
    lines = ["* branches: protocol branches of kvmfuzz/{virt,x86,host,sched}, leaving out "
             + ", ".join(f"{n} {cls}" for cls, n in counts.items())
             + f" arcs; all branches: {total.branches_all} ({total.branches_all.percent:.1f}%)"]
    if counts.get("unreachable"):
        lines.append("  (unreachable arcs: marked '# unreachable: <reason>' in the model source; "
                     "reasons in coverage.json and the HTML page)")
    taken, explained = _unreachable_executed(report)
    if taken:
        lines.append(f"  MARKED UNREACHABLE BUT TAKEN ({len(taken)}; a wrong marker): "
                     + ", ".join(taken))
    if explained:
        lines.append(f"  marked unreachable, taken under the planted bug their reason names "
                     f"({len(explained)}): " + ", ".join(explained))
    return lines


# -- the HTML page ---------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dde6}
.sub{color:#5b6475;margin:0 0 12px}.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{border:1px solid #d8dde6;border-radius:6px;padding:10px 14px;min-width:170px}
.card b{display:block;font-size:22px}.card span{color:#5b6475}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 8px;border-bottom:1px solid #eceff4;
text-align:left;vertical-align:top}th{background:#f4f6f9;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bc{text-align:left;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{display:inline-block;width:110px;height:10px;background:#f1d5d5;border-radius:2px;
vertical-align:middle;margin-right:6px;overflow:hidden}.bar i{display:block;height:100%;background:#2f8a4c}
.mx td{padding:0;width:22px;height:16px;text-align:center;font-size:10px;border:1px solid #fff}
.mx th{font-size:11px;padding:2px 4px}.mx th.r{text-align:right;font-weight:400;white-space:nowrap}
.hit{background:#2f8a4c;color:#fff}.hit1{background:#8cc79c}.hit2{background:#4ea867;color:#fff}
.miss{background:#f1a9a9}.imp{background:#d5d8de;color:#7a808c}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}.why{color:#5b6475;font-size:13px}
.bad{color:#b3261e;font-weight:600}details{margin:4px 0}summary{cursor:pointer}
.legend{margin:4px 0 0 56px}.legend .sw{display:inline-block;width:12px;height:12px;vertical-align:middle;
margin:0 4px 0 12px}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _bar(r: Ratio | None) -> str:
    if r is None or not r.total:
        return '<td class="num">-</td>'
    return (f'<td class="bc"><span class="bar"><i style="width:{r.percent:.1f}%"></i></span>'
            f'{r.hit}/{r.total} ({r.percent:.1f}%)</td>')


def _plot(report: CoverageReport, u: Universe) -> str:
    """Points, outcomes and pairs hit (% of reachable) vs examples, one line style per run."""
    w, h, left, right, top, bottom = 760, 300, 56, 16, 12, 40
    runs = [r for r in report.runs if r.samples]
    xmax = max((r.samples[-1].examples for r in runs), default=1) or 1
    totals = {"points": len(u.reachable_sites()), "outcomes": len(u.reachable_outcomes()),
              "pairs": len(u.reachable_pairs())}
    colours = {"points": "#2563eb", "outcomes": "#2f8a4c", "pairs": "#d97706"}
    dashes = ["", "6 3", "2 3", "8 3 2 3"]

    def x(v: float) -> float:
        return left + (w - left - right) * v / xmax

    def y(v: float) -> float:
        return top + (h - top - bottom) * (1 - v / 100)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'viewBox="0 0 {w} {h}" role="img" aria-label="coverage over examples">']
    for pct in range(0, 101, 20):
        parts.append(f'<line x1="{left}" y1="{y(pct):.1f}" x2="{w - right}" y2="{y(pct):.1f}" '
                     f'stroke="#eceff4"/><text x="{left - 6}" y="{y(pct) + 4:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#5b6475">{pct}%</text>')
    step = 10 ** max(0, int(math.log10(xmax)))
    while xmax / step > 8:
        step *= 2
    tick = 0
    while tick <= xmax:
        parts.append(f'<text x="{x(tick):.1f}" y="{h - bottom + 16}" font-size="11" '
                     f'text-anchor="middle" fill="#5b6475">{tick}</text>')
        tick += step
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" font-size="12" '
                 'text-anchor="middle" fill="#1d2330">examples</text>')
    parts.append(f'<line x1="{left}" y1="{y(0)}" x2="{w - right}" y2="{y(0)}" stroke="#9aa3b2"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{y(0)}" stroke="#9aa3b2"/>')
    for i, run in enumerate(runs):
        for series, colour in colours.items():
            pts = [(0.0, 0.0)]
            for s in run.samples:
                value = 100.0 * getattr(s, series) / (totals[series] or 1)
                pts += [(s.examples, pts[-1][1]), (s.examples, value)]
            pts.append((run.samples[-1].examples, pts[-1][1]))
            coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                         f'stroke-dasharray="{dashes[i % len(dashes)]}" points="{coords}">'
                         f'<title>{_e(run.label)}: {series}</title></polyline>')
    parts.append("</svg>")
    legend = "".join(f'<span class="sw" style="background:{c}"></span>{s}' for s, c in colours.items())
    styles = ", ".join(f"{_e(r.label)}: {('solid', 'dashed', 'dotted', 'dash-dot')[i % 4]}"
                       for i, r in enumerate(runs))
    return "".join(parts) + f'<div class="legend">{legend} <span class="why">({styles})</span></div>'


def _matrix(report: CoverageReport, u: Universe) -> str:
    kinds = list(KINDS)
    head = "".join(f'<th title="{_e(KINDS[k][0])}">{_e(k)}</th>' for k in kinds)
    rows = [f'<table class="mx"><tr><th class="r">stopped at \\ ran meanwhile</th>{head}</tr>']
    for key, site in u.sites.items():
        cells = []
        for k in kinds:
            why = u.pairs[key, k]
            n = report.pairs.get((key, k), 0)
            if why is not None:
                cells.append(f'<td class="imp" title="{_e(why)}">&#215;</td>')
            elif n:
                cls = "hit1" if n < 10 else "hit2" if n < 1000 else "hit"
                cells.append(f'<td class="{cls}" title="{_e(key)} x {_e(k)}: {n}"></td>')
            else:
                cells.append(f'<td class="miss" title="{_e(key)} x {_e(k)}: never"></td>')
        rows.append(f'<tr><th class="r" title="{_e(site.where)}">{_e(key)}</th>{"".join(cells)}</tr>')
    rows.append("</table>")
    return "".join(rows)


def _fmt_arc(a: Arc) -> str:
    return f"{a[0]}&#8594;{'exit' if a[1] < 0 else a[1]}"


def _branches(report: CoverageReport) -> str:
    if report.files is None:
        return ('<p class="why">Branch coverage was not measured (pytest: '
                "<code>--kvmfuzz-coverage-report=DIR</code>; or <code>python -m kvmfuzz coverage</code>)."
                "</p>")
    counts = _excluded_counts(report.files)
    intro = ("<p class=\"why\">Protocol branches leave out arcs that "
             + "; ".join(f"{_e(why)} ({cls}: {counts[cls]})" for cls, why in ARC_CLASSES.items())
             + ". Missing arcs are listed by class (<code>line&#8594;line</code>); every arc "
             "marked unreachable is also listed, with its reason, below the table.</p>")
    taken, explained = _unreachable_executed(report)
    if taken:
        intro += (f'<p class="bad">Marked unreachable but taken ({len(taken)}; a wrong '
                  f"marker): {_e(', '.join(taken))}</p>")
    if explained:
        intro += (f'<p class="why">Marked unreachable, taken under the planted bug their reason '
                  f"names ({len(explained)}): {_e(', '.join(explained))}</p>")
    rows = []
    for f in report.files:
        br = Ratio(len(f.branches_executed), f.branches)
        st = Ratio(len(f.lines_executed), f.statements)
        groups = []
        for cls in ("protocol", *ARC_CLASSES):
            arcs = [a for a in sorted(f.branches_missing) if f.excluded.get(a, "protocol") == cls]
            if arcs and cls == "unreachable":
                groups += [f"<code>unreachable: {', '.join(_fmt_arc(a) for a in group)}</code> "
                           f"<span class=\"why\">{_e(why)}</span>"
                           for why, group in _by_reason(f, arcs)]
            elif arcs:
                groups.append(f"<code>{cls}: {', '.join(_fmt_arc(a) for a in arcs)}</code>")
        lines = ", ".join(str(n) for n in sorted(f.lines_missing))
        if lines:
            groups.append(f"<code>lines: {lines}</code>")
        detail = (f"<details><summary>{len(f.branches_missing)} branches, {len(f.lines_missing)} "
                  f"lines</summary>{'<br>'.join(groups)}</details>" if groups else "")
        rows.append(f"<tr><td><code>{_e(f.path)}</code></td><td>{_e(file_area(f.path))}</td>"
                    f"{_bar(f.protocol)}{_bar(br)}<td class=\"num\">{st} ({st.percent:.1f}%)</td>"
                    f"<td>{detail}</td></tr>")
    total = area_rows(report)[-1]
    total_st = Ratio(sum(len(f.lines_executed) for f in report.files),
                     sum(f.statements for f in report.files))
    rows.append(f"<tr><th>total</th><th></th>{_bar(total.branches)}{_bar(total.branches_all)}"
                f"<td class=\"num\">{total_st} ({total_st.percent:.1f}%)</td><td></td></tr>")
    return (intro + "<table><tr><th>file</th><th>area</th><th>protocol branches</th>"
            "<th>all branches</th><th>statements</th><th>missing</th></tr>" + "".join(rows)
            + "</table>" + _unreachable_table(report.files, _run_bugs(report)))


def _by_reason(f: FileBranches, arcs: Iterable[Arc]) -> list[tuple[str, list[Arc]]]:
    """``arcs`` of ``f`` grouped by their unreachable reason (in line order)."""
    groups: dict[str, list[Arc]] = {}
    for a in sorted(arcs):
        groups.setdefault(f.reasons.get(a, "(no reason recorded)"), []).append(a)
    return sorted(groups.items(), key=lambda kv: kv[1][0])


def _unreachable_table(files: Iterable[FileBranches], bugs: frozenset[str] = frozenset()) -> str:
    """Every arc excluded as unreachable, with the reason its marker gives (an arc taken is
    flagged, unless the reason names one of the run's planted ``bugs``)."""
    rows = []
    for f in files:
        marked = [a for a, cls in f.excluded.items() if cls == "unreachable"]
        for why, arcs in _by_reason(f, marked):
            taken = [a for a in arcs if a in f.branches_executed]
            css, what = ("why", "taken under the planted bug") if _names_a_bug(why, bugs) \
                else ("bad", "taken")
            flag = (f' <span class="{css}">{what}: {", ".join(_fmt_arc(a) for a in taken)}</span>'
                    if taken else "")
            rows.append(f"<tr><td><code>{_e(f.path)}</code></td><td><code>"
                        f"{', '.join(_fmt_arc(a) for a in arcs)}</code>{flag}</td>"
                        f'<td class="why">{_e(why)}</td></tr>')
    n = sum(1 for f in files for cls in f.excluded.values() if cls == "unreachable")
    head = f'<h3 id="unreachable">Marked unreachable ({n} arcs, not counted)</h3>'
    if not rows:
        return head + "<p>none</p>"
    return (head + "<table><tr><th>file</th><th>arcs</th><th>why the correct model never takes "
            "them</th></tr>" + "".join(rows) + "</table>")


def render_html(report: CoverageReport, title: str = "kvmfuzz protocol coverage") -> str:
    """A self-contained page (inline CSS and SVG, no script): cards, per-area bars, coverage
    over time, the interleaving matrix, what was never reached, what cannot be, branches."""
    u = universe()
    rows = area_rows(report, u)
    g = gaps(report, u)
    total = rows[-1]
    seconds = max((r.seconds for r in report.runs), default=0.0)
    runs = "; ".join(f"{_e(r.label)}: {r.examples} examples, {r.steps} steps, {r.seconds:.1f}s"
                     for r in report.runs) or "no run"
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
           f'<meta name="viewport" content="width=device-width"><style>{_CSS}</style></head><body>',
           f"<h1>{_e(title)}</h1><p class=\"sub\">{len(report.runs)} run(s), {report.examples} "
           f"examples, {report.steps} steps, {seconds:.1f}s &#8212; {runs}</p>",
           '<div class="cards" id="summary">']
    for name, r in (("points", total.points), ("outcomes", total.outcomes),
                    ("pairs", total.pairs), ("branches", total.branches)):
        value = f"{r.percent:.1f}%" if r is not None else "-"
        detail = f"{r} reachable hit" if r is not None else "not measured"
        if name == "branches" and r is not None:
            detail = f"{r} protocol branches"
        out.append(f'<div class="card"><span>{name}</span><b>{value}</b><span>{detail}</span></div>')
    out.append("</div>")
    out.append('<h2 id="areas">Per area</h2><table><tr><th>area</th><th>points</th>'
               "<th>outcomes</th><th>pairs</th><th>protocol branches</th></tr>")
    for row in rows:
        name = f"<b>{_e(row.area)}</b>" if row.area == "total" else _e(row.area)
        out.append(f'<tr><td title="{_e(row.description)}">{name}</td>{_bar(row.points)}'
                   f"{_bar(row.outcomes)}{_bar(row.pairs)}{_bar(row.branches)}</tr>")
    out.append("</table>")
    out.append('<h2 id="over-time">Coverage over time</h2>' + _plot(report, u))
    out.append('<h2 id="pairs">Interleavings: stopped at a site &#215; kind that ran meanwhile</h2>'
               '<p class="why">green: seen (darker: more often), red: never, grey: impossible; '
               "hover for counts and reasons.</p>" + _matrix(report, u))
    out.append('<h2 id="unreached">Never reached</h2>')
    if g.unexpected:
        out.append('<p class="bad">Unexpected (hit, yet declared impossible or outside the '
                   f'tables): {_e(", ".join(g.unexpected))}</p>')
    out.append(f"<h3>Points ({len(g.points)})</h3>")
    out.append("<ul>" + "".join(f"<li><code>{_e(k)}</code> <span class=\"why\">"
                                f"{_e(u.sites[k].where)}</span></li>" for k in g.points) + "</ul>"
               if g.points else "<p>none</p>")
    out.append(f"<h3>Outcomes ({len(g.outcomes)})</h3>")
    out.append("<ul>" + "".join(f"<li><code>{_e(k)}</code> <span class=\"why\">"
                                f"{_e(u.outcomes[k].description)}</span></li>"
                                for k in g.outcomes) + "</ul>" if g.outcomes else "<p>none</p>")
    missing = sum(len(v) for v in g.pairs.values())
    out.append(f"<h3>Pairs ({missing})</h3>")
    out.append("<ul>" + "".join(f"<li><code>{_e(site)}</code> &#215; {_e(', '.join(kinds))}</li>"
                                for site, kinds in sorted(g.pairs.items())) + "</ul>"
               if missing else "<p>none</p>")
    out.append('<h2 id="impossible">Impossible (not counted)</h2><table><tr><th>item</th>'
               "<th>why</th></tr>")
    for key, why in g.impossible_points.items():
        out.append(f"<tr><td><code>{_e(key)}</code></td><td class=\"why\">{_e(why)}</td></tr>")
    for label, why in g.impossible_outcomes.items():
        out.append(f"<tr><td><code>{_e(label)}</code></td><td class=\"why\">{_e(why)}</td></tr>")
    out.append(f"<tr><td>{g.impossible_pairs} pairs</td><td class=\"why\">every pair whose site "
               "is impossible (above)</td></tr></table>")
    if report.unknown:
        out.append("<p class=\"why\">Events outside the outcome table (not counted): "
                   + _e(", ".join(f"{k}={v}" for k, v in sorted(report.unknown.items()))) + "</p>")
    out.append('<h2 id="branches">Branch coverage of the model (coverage.py)</h2>'
               + _branches(report))
    out.append(f'<p class="why">{FORMAT}; universe: {len(u.sites)} sites, {len(u.outcomes)} '
               f"outcomes, {len(u.pairs)} pairs (kvmfuzz/coverage.py).</p></body></html>")
    return "\n".join(out) + "\n"


def write_report(report: CoverageReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``out_dir/coverage.json`` and ``out_dir/index.html``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "coverage.json", out / "index.html"
    json_path.write_text(json.dumps(report.to_json(), indent=1, sort_keys=True) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path


# -- python -m kvmfuzz coverage --------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kvmfuzz coverage [--seconds N] [--merge FILE ...] --out DIR``."""
    p = argparse.ArgumentParser(
        prog="kvmfuzz coverage",
        description="Run a campaign measuring protocol and branch coverage, and/or merge saved "
        "reports; write DIR/coverage.json and DIR/index.html and print the table.")
    p.add_argument("--seconds", type=float, help="campaign budget (omit to only merge)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default="dev", choices=("dev", "ci", "long"))
    p.add_argument("--bug", default=None, help="planted bug (default: the correct model)")
    p.add_argument("--db", default="none", help="example database (default: none)")
    p.add_argument("--no-branch", action="store_true", help="do not measure branch coverage")
    p.add_argument("--merge", nargs="+", default=[], metavar="FILE", help="coverage.json files")
    p.add_argument("--out", required=True, metavar="DIR")
    args = p.parse_args(argv)
    if args.seconds is None and not args.merge:
        p.error("nothing to do: give --seconds and/or --merge")
    if args.seconds is not None and not args.seconds > 0:
        p.error("--seconds: expected a positive number")
    from kvmfuzz.bugs import lookup
    from kvmfuzz.errors import InvalidArgument
    try:
        lookup(args.bug)
    except InvalidArgument as exc:
        p.error(f"--bug: {exc}")
    reports = []
    for name in args.merge:
        try:
            reports.append(CoverageReport.load(name))
        except (OSError, ValueError, KeyError) as exc:
            p.error(f"--merge {name}: {exc}")
    if args.seconds is not None:
        branches = None if args.no_branch else BranchCollector().start()  # before the model loads
        from kvmfuzz.campaign import run_campaign

        def progress(result: Any) -> None:
            print(result.progress_line(), file=sys.stderr, flush=True)
        result = run_campaign(args.seconds, seed=args.seed, bug=args.bug, profile=args.profile,
                              database=args.db, progress=progress)
        report = result.coverage
        assert report is not None
        if branches is not None:
            report = report.with_files(branches.stop())
        reports.append(report)
        for line in result.summary():
            print(line)
    merged = merge_reports(reports)
    for line in terminal_lines(merged):
        print(line)
    json_path, html_path = write_report(merged, args.out)
    print(f"wrote {json_path} and {html_path}")
    return 0
