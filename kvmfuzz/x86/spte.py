"""x86 shadow/TDP page-table entries (SPTEs): bit layout, constructors, predicates, decoding.

Models arch/x86/kvm/mmu/spte.h and spte.c (plus the EPT masks of arch/x86/include/asm/vmx.h
and ``is_access_allowed`` / ``check_mmio_spte`` from mmu.c) as of Linux v6.18: ``FROZEN_SPTE``,
``SHADOW_NONPRESENT_VALUE`` = bit 63, the ``kvm_ad_enabled`` flag, ``spte_needs_atomic_update``,
``make_spte`` setting Dirty whenever it sets Writable, and the EPT Accessed/Dirty masks defined
even when hardware A/D bits are off (6.13+).

An SPTE is a plain ``int`` (unsigned 64-bit value). The kernel keeps the per-flavour masks
(``shadow_*_mask``) in module globals set once at module load; here they are a frozen
:class:`SpteMasks` value built by :func:`ept_masks` (``kvm_mmu_set_ept_masks``) or
:func:`legacy_masks` (``kvm_mmu_reset_all_pte_masks``, NPT / shadow paging), and every function
that needs them takes it as its first argument.

Simplified or left out:
- no L1TF mitigation: the gpa of an MMIO SPTE is never mirrored into high reserved bits
  (``shadow_nonpresent_or_rsvd_mask`` is 0); the MMIO gfn mask is ``maxphyaddr`` wide;
- no SME/SEV C-bit: ``me_value`` is 0 unless a caller builds masks with one, and it is ORed in
  without the kernel's "pfn is not host MMIO" test;
- the memory type is an argument of :func:`make_spte` (the kernel asks ``get_mt_mask``, i.e.
  MTRRs/PAT/non-coherent DMA); the default is what VMX returns without non-coherent DMA (WB with
  IPAT) and 0 for the legacy format (SVM has no ``get_mt_mask``);
- :func:`make_spte` does not mark the gfn dirty in the slot's dirty bitmap (the kernel's last
  step when the result is writable and dirty logging is on): the caller does that;
- ``mmu_try_to_unsync_pages`` is the ``write_tracked`` flag; the kernel's WARNs are not raised
  here (callers check :func:`check_spte_writable_invariants` and
  :func:`reserved_bits_violation`); ``KVM_BUG_ON`` preconditions raise :class:`ModelError`;
- the MBEC user-exec bit (EPT bit 10), PML and the TDX mirror/external SPTEs are not modelled.

The fan-out of the tree is a :class:`~kvmfuzz.x86.geometry.Geometry` parameter; bit positions
are the kernel's whatever the fan-out.
"""

from __future__ import annotations

from typing import Final

import attrs

from kvmfuzz.errors import InvalidArgument, ModelError
from kvmfuzz.x86.geometry import KERNEL_GEOMETRY, Geometry

KERNEL_VERSION: Final[str] = "6.18"
"""The mainline release whose spte.h / spte.c this module follows."""

PAGE_SHIFT: Final = 12
PG_LEVEL_4K: Final = 1
KVM_MAX_HUGEPAGE_LEVEL: Final = 3  # PG_LEVEL_1G


def _bit(n: int) -> int:
    return 1 << n


def _genmask(high: int, low: int) -> int:
    return ((1 << (high - low + 1)) - 1) << low


# --- bits common to every flavour (spte.h) ------------------------------------------------------
SPTE_MMU_PRESENT_MASK: Final = _bit(11)
PT_PRESENT_MASK: Final = _bit(0)
PT_WRITABLE_MASK: Final = _bit(1)
PT_USER_MASK: Final = _bit(2)
PT_PAGE_SIZE_MASK: Final = _bit(7)
SPTE_BASE_ADDR_MASK: Final = _genmask(51, PAGE_SHIFT)

SPTE_TDP_AD_SHIFT: Final = 52
SPTE_TDP_AD_MASK: Final = 3 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_ENABLED: Final = 0 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_DISABLED: Final = 1 << SPTE_TDP_AD_SHIFT
SPTE_TDP_AD_WRPROT_ONLY: Final = 2 << SPTE_TDP_AD_SHIFT

ACC_EXEC_MASK: Final = 1
ACC_WRITE_MASK: Final = PT_WRITABLE_MASK
ACC_USER_MASK: Final = PT_USER_MASK
ACC_ALL: Final = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK

SPTE_EPT_READABLE_MASK: Final = 0x1
SPTE_EPT_EXECUTABLE_MASK: Final = 0x4
SHADOW_ACC_TRACK_SAVED_BITS_MASK: Final = SPTE_EPT_READABLE_MASK | SPTE_EPT_EXECUTABLE_MASK
SHADOW_ACC_TRACK_SAVED_BITS_SHIFT: Final = 54
SHADOW_ACC_TRACK_SAVED_MASK: Final = (
    SHADOW_ACC_TRACK_SAVED_BITS_MASK << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT
)

DEFAULT_SPTE_HOST_WRITABLE: Final = _bit(9)
DEFAULT_SPTE_MMU_WRITABLE: Final = _bit(10)
EPT_SPTE_HOST_WRITABLE: Final = _bit(57)
EPT_SPTE_MMU_WRITABLE: Final = _bit(58)

MMIO_SPTE_GEN_LOW_START: Final = 3
MMIO_SPTE_GEN_LOW_END: Final = 10
MMIO_SPTE_GEN_HIGH_START: Final = 52
MMIO_SPTE_GEN_HIGH_END: Final = 62
MMIO_SPTE_GEN_LOW_MASK: Final = _genmask(MMIO_SPTE_GEN_LOW_END, MMIO_SPTE_GEN_LOW_START)
MMIO_SPTE_GEN_HIGH_MASK: Final = _genmask(MMIO_SPTE_GEN_HIGH_END, MMIO_SPTE_GEN_HIGH_START)
MMIO_SPTE_GEN_LOW_BITS: Final = MMIO_SPTE_GEN_LOW_END - MMIO_SPTE_GEN_LOW_START + 1  # 8
MMIO_SPTE_GEN_HIGH_BITS: Final = MMIO_SPTE_GEN_HIGH_END - MMIO_SPTE_GEN_HIGH_START + 1  # 11
MMIO_SPTE_GEN_LOW_SHIFT: Final = MMIO_SPTE_GEN_LOW_START
MMIO_SPTE_GEN_HIGH_SHIFT: Final = MMIO_SPTE_GEN_HIGH_START - MMIO_SPTE_GEN_LOW_BITS
MMIO_SPTE_GEN_MASK: Final = _genmask(MMIO_SPTE_GEN_LOW_BITS + MMIO_SPTE_GEN_HIGH_BITS - 1, 0)
SPTE_MMIO_ALLOWED_MASK: Final = _bit(63) | _genmask(51, 12) | _genmask(2, 0)
KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS: Final = _bit(63)  # include/linux/kvm_host.h

SHADOW_NONPRESENT_VALUE: Final = _bit(63)  # 64-bit hosts, since 6.10
FROZEN_SPTE: Final = SHADOW_NONPRESENT_VALUE | 0x5A0  # bits 5, 7, 8, 10 (+63)

# --- legacy x86 / NPT format (arch/x86/kvm/mmu/mmu.h) ------------------------------------------
PT_PWT_MASK: Final = _bit(3)
PT_PCD_MASK: Final = _bit(4)
PT_ACCESSED_MASK: Final = _bit(5)
PT_DIRTY_MASK: Final = _bit(6)
PT_GLOBAL_MASK: Final = _bit(8)
PT64_NX_MASK: Final = _bit(63)

# --- EPT format (arch/x86/include/asm/vmx.h) ---------------------------------------------------
VMX_EPT_READABLE_MASK: Final = 0x1
VMX_EPT_WRITABLE_MASK: Final = 0x2
VMX_EPT_EXECUTABLE_MASK: Final = 0x4
VMX_EPT_RWX_MASK: Final = VMX_EPT_READABLE_MASK | VMX_EPT_WRITABLE_MASK | VMX_EPT_EXECUTABLE_MASK
VMX_EPT_MT_EPTE_SHIFT: Final = 3
VMX_EPT_MT_MASK: Final = 7 << VMX_EPT_MT_EPTE_SHIFT
VMX_EPT_IPAT_BIT: Final = _bit(6)
VMX_EPT_ACCESS_BIT: Final = _bit(8)
VMX_EPT_DIRTY_BIT: Final = _bit(9)
VMX_EPT_SUPPRESS_VE_BIT: Final = _bit(63)
VMX_EPT_MISCONFIG_WX_VALUE: Final = VMX_EPT_WRITABLE_MASK | VMX_EPT_EXECUTABLE_MASK
MTRR_TYPE_UNCACHABLE: Final = 0
MTRR_TYPE_WRBACK: Final = 6
EPT_DEFAULT_MEMTYPE: Final = (MTRR_TYPE_WRBACK << VMX_EPT_MT_EPTE_SHIFT) | VMX_EPT_IPAT_BIT

_U64: Final = (1 << 64) - 1
_MEMTYPE_NAMES: Final = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB"}


@attrs.frozen(kw_only=True)
class SpteMasks:
    """The kernel's per-flavour ``shadow_*`` module globals, as one value."""

    ept: bool
    ad_enabled: bool  # kvm_ad_enabled
    has_exec_only: bool
    present_mask: int
    user_mask: int
    accessed_mask: int
    dirty_mask: int
    nx_mask: int
    x_mask: int
    host_writable_mask: int
    mmu_writable_mask: int
    acc_track_mask: int
    mmio_value: int  # 0: MMIO caching disabled (enable_mmio_caching = false)
    mmio_mask: int
    mmio_access_mask: int
    me_value: int = 0
    me_mask: int = 0
    maxphyaddr: int = 46  # host MAXPHYADDR (kvm_host.maxphyaddr)
    default_memtype: int = 0

    @property
    def mmio_caching(self) -> bool:
        """enable_mmio_caching after kvm_mmu_set_mmio_spte_mask()."""
        return self.mmio_value != 0

    @property
    def mmio_gfn_mask(self) -> int:
        """shadow_nonpresent_or_rsvd_lower_gfn_mask without L1TF: GENMASK(maxphyaddr-1, 12)."""
        return _genmask(self.maxphyaddr - 1, PAGE_SHIFT)


def _mmio_spte_mask(mmio_value: int, mmio_mask: int, caching: bool) -> int:
    """kvm_mmu_set_mmio_spte_mask(): the MMIO value that survives the sanity checks (0 = off)."""
    # unreachable(true): the model builds its masks with ept_masks(mmio_caching=True) (driver.build_vm);
    #   legacy_masks() is not used by the model
    if not caching:
        return 0
    # unreachable(true): the EPT MMIO mask (RWX | SUPPRESS_VE) is inside SPTE_MMIO_ALLOWED_MASK (the model
    #   uses EPT masks only)
    if mmio_mask & ~SPTE_MMIO_ALLOWED_MASK:
        return 0
    # unreachable(true): the EPT MMIO value (W|X) is under its mask (the model uses EPT masks only)
    if (mmio_value & mmio_mask) != mmio_value:
        return 0
    # unreachable(true): FROZEN_SPTE under the EPT MMIO mask is bit 63 alone, not the MMIO value W|X (the
    #   model uses EPT masks only)
    if mmio_value and (FROZEN_SPTE & mmio_mask) == mmio_value:
        return 0
    return mmio_value


def _check_maxphyaddr(maxphyaddr: int) -> None:
    if not 32 <= maxphyaddr <= 52:
        raise InvalidArgument(f"maxphyaddr {maxphyaddr}: expected 32..52")


def ept_masks(*, has_ad_bits: bool, has_exec_only: bool = False, maxphyaddr: int = 46,
              mmio_caching: bool = True) -> SpteMasks:
    """kvm_mmu_set_ept_masks(): masks for Intel EPT (TDP) SPTEs."""
    _check_maxphyaddr(maxphyaddr)
    mmio_mask = VMX_EPT_RWX_MASK | VMX_EPT_SUPPRESS_VE_BIT
    return SpteMasks(
        ept=True,
        ad_enabled=has_ad_bits,
        has_exec_only=has_exec_only,
        user_mask=VMX_EPT_READABLE_MASK,
        accessed_mask=VMX_EPT_ACCESS_BIT,  # defined even without hardware A/D (6.13+)
        dirty_mask=VMX_EPT_DIRTY_BIT,
        nx_mask=0,
        x_mask=VMX_EPT_EXECUTABLE_MASK,
        present_mask=(0 if has_exec_only else VMX_EPT_READABLE_MASK) | VMX_EPT_SUPPRESS_VE_BIT,
        acc_track_mask=VMX_EPT_RWX_MASK,
        host_writable_mask=EPT_SPTE_HOST_WRITABLE,
        mmu_writable_mask=EPT_SPTE_MMU_WRITABLE,
        mmio_value=_mmio_spte_mask(VMX_EPT_MISCONFIG_WX_VALUE, mmio_mask, mmio_caching),
        mmio_mask=mmio_mask,
        mmio_access_mask=0,
        maxphyaddr=maxphyaddr,
        default_memtype=EPT_DEFAULT_MEMTYPE,
    )


def legacy_masks(*, maxphyaddr: int = 46, mmio_caching: bool = True) -> SpteMasks:
    """kvm_mmu_reset_all_pte_masks(): masks for the legacy x86 format (AMD NPT, shadow paging).

    MMIO SPTEs set reserved bit 51 plus Present, which needs ``maxphyaddr`` < 52; otherwise
    MMIO caching is off (``mmio_value`` 0), as in the kernel.
    """
    _check_maxphyaddr(maxphyaddr)
    mmio = (_bit(51) | PT_PRESENT_MASK) if maxphyaddr < 52 else 0
    return SpteMasks(
        ept=False,
        ad_enabled=True,
        has_exec_only=False,
        user_mask=PT_USER_MASK,
        accessed_mask=PT_ACCESSED_MASK,
        dirty_mask=PT_DIRTY_MASK,
        nx_mask=PT64_NX_MASK,
        x_mask=0,
        present_mask=PT_PRESENT_MASK,
        acc_track_mask=0,
        host_writable_mask=DEFAULT_SPTE_HOST_WRITABLE,
        mmu_writable_mask=DEFAULT_SPTE_MMU_WRITABLE,
        mmio_value=_mmio_spte_mask(mmio, mmio, mmio_caching),
        mmio_mask=mmio,
        mmio_access_mask=ACC_WRITE_MASK | ACC_USER_MASK,
        maxphyaddr=maxphyaddr,
        default_memtype=0,
    )


@attrs.frozen
class MakeSpte:
    """Result of make_spte(): the new SPTE and whether it was write-protected (``wrprot``)."""

    spte: int
    wrprot: bool


# --- predicates (spte.h) -----------------------------------------------------------------------

def is_shadow_present_pte(spte: int) -> bool:
    """is_shadow_present_pte(): the software MMU-present bit (11)."""
    return bool(spte & SPTE_MMU_PRESENT_MASK)


def is_large_pte(spte: int) -> bool:
    """is_large_pte(): PS (bit 7)."""
    return bool(spte & PT_PAGE_SIZE_MASK)


def is_last_spte(spte: int, level: int) -> bool:
    """is_last_spte(): a leaf, i.e. level 4K or PS set."""
    return level == PG_LEVEL_4K or is_large_pte(spte)


def is_writable_pte(spte: int) -> bool:
    """is_writable_pte(): hardware W (bit 1)."""
    return bool(spte & PT_WRITABLE_MASK)


def is_mmu_writable_spte(m: SpteMasks, spte: int) -> bool:
    """is_mmu_writable_spte(): bit 58 (EPT) / 10 (legacy)."""
    return bool(spte & m.mmu_writable_mask)


def is_host_writable_spte(m: SpteMasks, spte: int) -> bool:
    """The kernel's ``spte & shadow_host_writable_mask`` test: bit 57 (EPT) / 9 (legacy)."""
    return bool(spte & m.host_writable_mask)


def is_executable_pte(m: SpteMasks, spte: int) -> bool:
    """is_executable_pte(): X set (EPT) / NX clear (legacy)."""
    return (spte & (m.x_mask | m.nx_mask)) == m.x_mask


def spte_to_pfn(spte: int) -> int:
    """spte_to_pfn(): bits 12..51 shifted down."""
    return (spte & SPTE_BASE_ADDR_MASK) >> PAGE_SHIFT


def is_mmio_spte(m: SpteMasks, spte: int) -> bool:
    """is_mmio_spte(): the MMIO pattern under the MMIO mask, and MMIO caching enabled."""
    return (spte & m.mmio_mask) == m.mmio_value and m.mmio_value != 0


def is_frozen_spte(spte: int) -> bool:
    """is_frozen_spte(): exactly FROZEN_SPTE."""
    return spte == FROZEN_SPTE


def spte_ad_enabled(spte: int) -> bool:
    """spte_ad_enabled(): the A/D type of a present SPTE is not "disabled"."""
    return (spte & SPTE_TDP_AD_MASK) != SPTE_TDP_AD_DISABLED


def spte_ad_need_write_protect(spte: int) -> bool:
    """spte_ad_need_write_protect(): the A/D type is not "enabled" (disabled or wrprot-only)."""
    return (spte & SPTE_TDP_AD_MASK) != SPTE_TDP_AD_ENABLED


def is_access_track_spte(m: SpteMasks, spte: int) -> bool:
    """is_access_track_spte(): A/D disabled for the SPTE and no bit of the track mask set."""
    return not spte_ad_enabled(spte) and (spte & m.acc_track_mask) == 0


def is_accessed_spte(m: SpteMasks, spte: int) -> bool:
    """is_accessed_spte(): the Accessed bit (6.13+: also kept by KVM when A/D is disabled)."""
    return bool(spte & m.accessed_mask)


def is_dirty_spte(m: SpteMasks, spte: int) -> bool:
    """is_dirty_spte() as before 6.13 (removed since): D if A/D is in use, else W.

    With hardware A/D off (``kvm_ad_enabled`` false or the SPTE's A/D type disabled) dirty
    logging write-protects, so W is what records a write; otherwise the CPU sets D.
    """
    # unreachable: is_dirty_spte() is not called by the model (an spte.h helper unit-tested in
    #   tests/x86/test_spte_table.py)
    if m.ad_enabled and spte_ad_enabled(spte):
        return bool(spte & m.dirty_mask)
    return is_writable_pte(spte)


def check_spte_writable_invariants(m: SpteMasks, spte: int) -> str | None:
    """check_spte_writable_invariants(): None if the writable trio is legal, else the WARN text.

    W implies MMU-writable, which implies host-writable. Meant for shadow-present leaf SPTEs.
    """
    if spte & m.mmu_writable_mask:
        if not spte & m.host_writable_mask:
            return f"MMU-writable SPTE is not Host-writable: {format_spte(m, spte)}"
    elif is_writable_pte(spte):
        return f"Writable SPTE is not MMU-writable: {format_spte(m, spte)}"
    return None


def spte_needs_atomic_update(m: SpteMasks, spte: int) -> bool:
    """spte_needs_atomic_update(): a present leaf has bits others may change without mmu_lock.

    Fast PF may set W (MMU-writable but not W); aging/fast PF may track/restore A/D-disabled
    SPTEs; the CPU may set D (W without D). A alone is tolerated.
    """
    # unreachable: spte_needs_atomic_update() is not called by the model (an spte.h helper unit-tested in
    #   tests/x86/test_spte_table.py)
    if not is_writable_pte(spte) and is_mmu_writable_spte(m, spte):
        return True
    # unreachable: spte_needs_atomic_update() is not called by the model (an spte.h helper unit-tested in
    #   tests/x86/test_spte_table.py)
    if not spte_ad_enabled(spte):
        return True
    return is_writable_pte(spte) and not spte & m.dirty_mask


def leaf_spte_change_needs_tlb_flush(m: SpteMasks, old_spte: int, new_spte: int) -> bool:
    """leaf_spte_change_needs_tlb_flush(): MMU-writable went from set to clear."""
    return is_mmu_writable_spte(m, old_spte) and not is_mmu_writable_spte(m, new_spte)


def is_access_allowed(m: SpteMasks, spte: int, *, write: bool, exec: bool) -> bool:
    """is_access_allowed() (mmu.c): exec → executable, write → W, read → bit 0."""
    if exec:
        return is_executable_pte(m, spte)
    if write:
        return is_writable_pte(spte)
    return bool(spte & PT_PRESENT_MASK)


# --- access tracking ---------------------------------------------------------------------------

def mark_spte_for_access_track(m: SpteMasks, spte: int) -> int:
    """mark_spte_for_access_track(): clear A, or (A/D disabled) save R/X and clear RWX and A."""
    # unreachable(true): only A/D-disabled SPTEs get here: aging tests spte_ad_enabled() first, and
    #   make_spte()'s prefetch path is never taken
    if spte_ad_enabled(spte):
        return spte & ~m.accessed_mask & _U64
    # unreachable(true): aging passes a leaf it saw accessed, and an access-tracked SPTE never has A set
    #   (mark_spte_for_access_track() clears it, every other producer sets R)
    if is_access_track_spte(m, spte):
        return spte
    # The kernel WARNs here on a broken writable trio or non-zero saved bits, then goes on.
    spte |= (spte & SHADOW_ACC_TRACK_SAVED_BITS_MASK) << SHADOW_ACC_TRACK_SAVED_BITS_SHIFT
    return spte & ~(m.acc_track_mask | m.accessed_mask) & _U64


def restore_acc_track_spte(m: SpteMasks, spte: int) -> int:
    """restore_acc_track_spte(): move the saved R/X back to bits 0 and 2, clear bits 54/56.

    Takes the masks because the kernel clears ``shadow_acc_track_mask`` first. W and A are not
    restored (fast PF sets them).
    """
    saved = (spte >> SHADOW_ACC_TRACK_SAVED_BITS_SHIFT) & SHADOW_ACC_TRACK_SAVED_BITS_MASK
    spte &= ~m.acc_track_mask
    spte &= ~SHADOW_ACC_TRACK_SAVED_MASK
    return (spte | saved) & _U64


def _modify_spte_protections(m: SpteMasks, spte: int, set_bits: int, clear_bits: int) -> int:
    """modify_spte_protections(): change permission bits, through access tracking if tracked."""
    tracked = is_access_track_spte(m, spte)
    # unreachable: _modify_spte_protections() is only called with nx_huge_active, which is never passed: NX
    #   huge pages are not modelled
    if tracked:
        spte = restore_acc_track_spte(m, spte)
    spte = (spte | set_bits) & ~clear_bits & _U64
    # unreachable: _modify_spte_protections() is only called with nx_huge_active, which is never passed: NX
    #   huge pages are not modelled
    if tracked:
        spte = mark_spte_for_access_track(m, spte)
    return spte


# --- constructors (spte.c) ---------------------------------------------------------------------

def _check_level(level: int, *, low: int = 1, high: int = 5) -> None:
    if not low <= level <= high:
        raise InvalidArgument(f"level {level}: expected {low}..{high}")


def _check_frame(name: str, frame: int) -> None:
    if not 0 <= frame < 1 << 40:
        raise InvalidArgument(f"{name} {frame:#x}: expected 0..2^40-1 (bits 12..51)")


def make_spte(m: SpteMasks, *, level: int, gfn: int, pfn: int, old_spte: int, access: int,
              prefetch: bool, synchronizing: bool = False, host_writable: bool,
              ad_disabled: bool, ad_need_write_protect: bool = False,
              write_tracked: bool = False, nx_huge_active: bool = False,
              memtype: int | None = None) -> MakeSpte:
    """make_spte(): build a leaf SPTE mapping ``pfn`` at ``level``.

    ``access`` is ACC_* bits (TDP passes ACC_ALL). ``write_tracked`` models
    mmu_try_to_unsync_pages() refusing: the result is write-protected (no W, no MMU-writable)
    and ``wrprot`` is true. ``ad_need_write_protect`` is kvm_mmu_page_ad_need_write_protect()
    (nested with PML). ``memtype`` defaults to ``m.default_memtype``. The caller marks the gfn
    dirty when the result is writable and the slot logs dirty pages.
    """
    _check_level(level, high=KVM_MAX_HUGEPAGE_LEVEL)
    _check_frame("pfn", pfn)
    _check_frame("gfn", gfn)
    if not 0 <= access <= ACC_ALL:
        raise InvalidArgument(f"access {access:#x}: expected ACC_* bits (0..7)")
    if (access | m.present_mask) == SHADOW_NONPRESENT_VALUE:
        raise ModelError("make_spte: no access at all with exec-only EPT (kernel WARN)")

    spte = SPTE_MMU_PRESENT_MASK
    if ad_disabled:
        spte |= SPTE_TDP_AD_DISABLED
    # unreachable(true): ad_need_write_protect is never passed (no nested TDP, no PML)
    elif ad_need_write_protect:
        spte |= SPTE_TDP_AD_WRPROT_ONLY

    spte |= m.present_mask
    # unreachable(false): prefetch is never true: the model has no prefetch (PageFault.prefetch stays False)
    if not prefetch or synchronizing:
        spte |= m.accessed_mask

    # unreachable(true): nx_huge_active is never passed: NX huge pages are not modelled
    if level > PG_LEVEL_4K and access & ACC_EXEC_MASK and nx_huge_active:
        access &= ~ACC_EXEC_MASK

    spte |= m.x_mask if access & ACC_EXEC_MASK else m.nx_mask
    # unreachable(false): the TDP MMU always passes access=ACC_ALL
    if access & ACC_USER_MASK:
        spte |= m.user_mask
    if level > PG_LEVEL_4K:
        spte |= PT_PAGE_SIZE_MASK

    spte |= m.default_memtype if memtype is None else memtype
    if host_writable:
        spte |= m.host_writable_mask
    else:
        access &= ~ACC_WRITE_MASK

    spte |= m.me_value
    spte |= pfn << PAGE_SHIFT

    wrprot = False
    if access & ACC_WRITE_MASK:
        old_writable_leaf = is_last_spte(old_spte, level) and is_writable_pte(old_spte)
        # unreachable(true): write_tracked is never passed: write-tracking is not modelled
        if not old_writable_leaf and write_tracked:
            wrprot = True
        else:
            spte |= PT_WRITABLE_MASK | m.mmu_writable_mask | m.dirty_mask

    # unreachable(true): prefetch is never true: the model has no prefetch (PageFault.prefetch stays False)
    if prefetch and not synchronizing:
        spte = mark_spte_for_access_track(m, spte)

    return MakeSpte(spte=spte, wrprot=wrprot)


def make_nonleaf_spte(m: SpteMasks, child_pfn: int, ad_disabled: bool) -> int:
    """make_nonleaf_spte(): an entry pointing at a child table, granting full access."""
    _check_frame("child_pfn", child_pfn)
    spte = SPTE_MMU_PRESENT_MASK
    spte |= (child_pfn << PAGE_SHIFT) | m.present_mask | PT_WRITABLE_MASK | m.user_mask
    spte |= m.x_mask | m.me_value
    spte |= SPTE_TDP_AD_DISABLED if ad_disabled else m.accessed_mask
    return spte


def make_small_spte(m: SpteMasks, geo: Geometry, huge_spte: int, huge_level: int, index: int,
                    *, nx_huge_active: bool = False, role_allows_exec: bool = True) -> int:
    """make_small_spte(): child ``index`` of a huge leaf being split.

    The child maps ``index * geo.pages(huge_level - 1)`` frames further; everything else is
    inherited. A 4K child loses PS and, with the NX-huge mitigation on and a role that allows
    exec, becomes executable again.
    """
    _check_level(huge_level, low=2, high=KVM_MAX_HUGEPAGE_LEVEL)
    if not 0 <= index < geo.ptes_per_table:
        raise InvalidArgument(f"index {index}: expected 0..{geo.ptes_per_table - 1}")
    if not is_shadow_present_pte(huge_spte) or not is_large_pte(huge_spte):
        raise ModelError(f"make_small_spte on a non-huge SPTE {format_spte(m, huge_spte)}")
    child_level = huge_level - 1
    child = huge_spte | (index * geo.pages(child_level)) << PAGE_SHIFT
    # unreachable(false): only 2M leaves are split: no 1G leaf exists (the host maps at most PMD-sized THPs
    #   and private faults are order 0)
    if child_level == PG_LEVEL_4K:
        child &= ~PT_PAGE_SIZE_MASK
        # unreachable(true): nx_huge_active is never passed: NX huge pages are not modelled
        if role_allows_exec and nx_huge_active:
            child = _modify_spte_protections(m, child, m.x_mask, m.nx_mask)
    return child


def make_huge_spte(m: SpteMasks, geo: Geometry, small_spte: int, huge_level: int, *,
                   nx_huge_active: bool = False) -> int:
    """make_huge_spte(): a huge leaf at ``huge_level`` built from one present child SPTE.

    Sets PS, clears the frame bits below the huge alignment and, with the NX-huge mitigation
    on, makes it non-executable. Permissions come from ``small_spte`` alone.
    """
    _check_level(huge_level, low=2, high=KVM_MAX_HUGEPAGE_LEVEL)
    if not is_shadow_present_pte(small_spte):
        raise ModelError(f"make_huge_spte on a non-present SPTE {format_spte(m, small_spte)}")
    huge = small_spte | PT_PAGE_SIZE_MASK
    huge &= ~((geo.pages(huge_level) - 1) << PAGE_SHIFT) & _U64
    # unreachable(true): nx_huge_active is never passed: NX huge pages are not modelled
    if nx_huge_active:
        huge = _modify_spte_protections(m, huge, m.nx_mask, m.x_mask)
    return huge


# --- MMIO SPTEs --------------------------------------------------------------------------------

def _generation_mmio_spte_mask(gen: int) -> int:
    """generation_mmio_spte_mask(): spread 19 generation bits over bits 3..10 and 52..62."""
    mask = (gen << MMIO_SPTE_GEN_LOW_SHIFT) & MMIO_SPTE_GEN_LOW_MASK
    mask |= (gen << MMIO_SPTE_GEN_HIGH_SHIFT) & MMIO_SPTE_GEN_HIGH_MASK
    return mask


def make_mmio_spte(m: SpteMasks, gfn: int, access: int, generation: int) -> int:
    """make_mmio_spte(): cache "gfn is MMIO" with the memslot ``generation`` (low 19 bits)."""
    if not m.mmio_caching:
        raise ModelError("make_mmio_spte with MMIO caching disabled")
    if gfn < 0 or (gfn << PAGE_SHIFT) & ~m.mmio_gfn_mask:
        raise InvalidArgument(f"gfn {gfn:#x}: above MAXPHYADDR {m.maxphyaddr}")
    if generation < 0:
        raise InvalidArgument(f"generation {generation}: expected >= 0")
    spte = _generation_mmio_spte_mask(generation & MMIO_SPTE_GEN_MASK)
    spte |= m.mmio_value | (access & m.mmio_access_mask)
    spte |= gfn << PAGE_SHIFT
    return spte


def get_mmio_spte_generation(spte: int) -> int:
    """get_mmio_spte_generation(): gather the 19 generation bits back."""
    gen = (spte & MMIO_SPTE_GEN_LOW_MASK) >> MMIO_SPTE_GEN_LOW_SHIFT
    gen |= (spte & MMIO_SPTE_GEN_HIGH_MASK) >> MMIO_SPTE_GEN_HIGH_SHIFT
    return gen


def get_mmio_spte_gfn(m: SpteMasks, spte: int) -> int:
    """get_mmio_spte_gfn() (mmu.c): the gfn bits below MAXPHYADDR (drops e.g. bit 51)."""
    return (spte & m.mmio_gfn_mask) >> PAGE_SHIFT


def get_mmio_spte_access(m: SpteMasks, spte: int) -> int:
    """get_mmio_spte_access() (mmu.c): the recorded ACC_* bits under the MMIO access mask."""
    return spte & m.mmio_access_mask


def check_mmio_spte_generation(spte: int, current_generation: int) -> bool:
    """check_mmio_spte() (mmu.c): False while memslots update, or if the 19 bits differ."""
    # unreachable: check_mmio_spte_generation() is not called by the model (an spte.h helper unit-tested in
    #   tests/x86/test_spte_table.py); fault.py's check_mmio_spte_gen() applies the model's generation width
    if current_generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS:
        return False
    return (current_generation & MMIO_SPTE_GEN_MASK) == get_mmio_spte_generation(spte)


# --- reserved bits (model of is_rsvd_spte / shadow_zero_check) ---------------------------------

def reserved_bits_violation(m: SpteMasks, spte: int, level: int,
                            geo: Geometry = KERNEL_GEOMETRY) -> str | None:
    """A simple model of the ``is_rsvd_spte`` WARN in make_spte(); None if fine.

    Checked for shadow-present SPTEs only: frame bits at or above ``m.maxphyaddr``; PS on a 4K
    entry or above level 3; a huge leaf's frame not aligned to ``geo.pages(level)``; EPT only:
    W without R, X-only without exec-only support, memory type 2/3/7 on a leaf, memory type or
    IPAT bits on a non-leaf entry.
    """
    _check_level(level)
    if not is_shadow_present_pte(spte):
        return None
    where = f"L{level} {format_spte(m, spte, level)}"
    high_pa = spte & SPTE_BASE_ADDR_MASK & ~_genmask(m.maxphyaddr - 1, 0)
    if high_pa:
        return f"frame bits {high_pa:#x} at or above MAXPHYADDR {m.maxphyaddr}: {where}"
    if is_large_pte(spte) and level == PG_LEVEL_4K:
        return f"PS set on a 4K SPTE: {where}"
    if is_large_pte(spte) and level > KVM_MAX_HUGEPAGE_LEVEL:
        return f"PS set above the 1G level: {where}"
    leaf = is_last_spte(spte, level)
    if leaf and level > PG_LEVEL_4K and spte_to_pfn(spte) & (geo.pages(level) - 1):
        return f"huge frame not aligned to {geo.pages(level)} pages: {where}"
    if m.ept:
        rwx = spte & VMX_EPT_RWX_MASK
        if rwx & VMX_EPT_WRITABLE_MASK and not rwx & VMX_EPT_READABLE_MASK:
            return f"EPT W without R (misconfiguration): {where}"
        if rwx == VMX_EPT_EXECUTABLE_MASK and not m.has_exec_only:
            return f"EPT X-only without exec-only support: {where}"
        memtype = (spte & VMX_EPT_MT_MASK) >> VMX_EPT_MT_EPTE_SHIFT
        if leaf and rwx and memtype in (2, 3, 7):
            return f"EPT reserved memory type {memtype}: {where}"
        if not leaf and spte & (VMX_EPT_MT_MASK | VMX_EPT_IPAT_BIT):
            return f"EPT memory type / IPAT bits on a non-leaf entry: {where}"
    return None


# --- decoding ----------------------------------------------------------------------------------

def _access_names(access: int) -> str:
    names = [n for bit, n in ((ACC_EXEC_MASK, "X"), (ACC_WRITE_MASK, "W"), (ACC_USER_MASK, "U"))
             if access & bit]
    return "|".join(names)


def format_spte(m: SpteMasks, spte: int, level: int | None = None) -> str:
    """Decode an SPTE for messages.

    ``FROZEN``; ``nonpresent`` (SHADOW_NONPRESENT_VALUE); ``mmio gfn=0x10 gen=0x5`` (plus
    ``access=W|U`` when recorded); any other non-present value as ``nonpresent(0x...)``; a
    present SPTE as ``<hex> <flags> [mt=WB] pfn=0x.. [L<level> [nonleaf]]`` where bits that
    the flags do not explain are listed as ``?0x...``.
    """
    if is_frozen_spte(spte):
        return "FROZEN"
    if spte == SHADOW_NONPRESENT_VALUE:
        return "nonpresent"
    if not is_shadow_present_pte(spte):
        if is_mmio_spte(m, spte):
            gfn, gen = get_mmio_spte_gfn(m, spte), get_mmio_spte_generation(spte)
            text = f"mmio gfn={gfn:#x} gen={gen:#x}"
            access = get_mmio_spte_access(m, spte)
            return f"{text} access={_access_names(access)}" if access else text
        return f"nonpresent({spte:#x})"

    flags = ["present"]
    known = SPTE_MMU_PRESENT_MASK | SPTE_BASE_ADDR_MASK | m.present_mask | m.me_value
    if is_access_track_spte(m, spte):
        saved = (spte >> SHADOW_ACC_TRACK_SAVED_BITS_SHIFT) & SHADOW_ACC_TRACK_SAVED_BITS_MASK
        names = "|".join(n for bit, n in ((1, "R"), (4, "X")) if saved & bit)
        flags.append(f"acc-track(saved {names or 'none'})")
        known |= SHADOW_ACC_TRACK_SAVED_MASK
    table: list[tuple[int, str]] = [(PT_PRESENT_MASK, "R" if m.ept else "P"),
                                    (PT_WRITABLE_MASK, "W")]
    if m.ept:
        table += [(VMX_EPT_EXECUTABLE_MASK, "X")]
    else:
        table += [(PT_USER_MASK, "U"), (PT_PWT_MASK, "PWT"), (PT_PCD_MASK, "PCD")]
    table += [(m.accessed_mask, "A"), (m.dirty_mask, "D"), (PT_PAGE_SIZE_MASK, "PS")]
    if not m.ept:
        table += [(PT_GLOBAL_MASK, "G"), (PT64_NX_MASK, "NX")]
    table += [(m.host_writable_mask, "host-w"), (m.mmu_writable_mask, "mmu-w")]
    if m.ept:
        table += [(VMX_EPT_IPAT_BIT, "IPAT")]
    for bit, name in table:
        known |= bit
        if spte & bit:
            flags.append(name)
    ad_type = spte & SPTE_TDP_AD_MASK
    known |= SPTE_TDP_AD_MASK
    if ad_type == SPTE_TDP_AD_DISABLED:
        flags.append("ad-disabled")
    elif ad_type == SPTE_TDP_AD_WRPROT_ONLY:
        flags.append("ad-wrprot-only")
    elif ad_type:
        flags.append("ad-type=3")

    leaf = level is None or is_last_spte(spte, level)
    parts = [f"{spte:#x}"]
    if m.ept and leaf:
        known |= VMX_EPT_MT_MASK
        memtype = (spte & VMX_EPT_MT_MASK) >> VMX_EPT_MT_EPTE_SHIFT
        mt = f"mt={_MEMTYPE_NAMES.get(memtype, str(memtype))}"
    else:
        mt = ""
    unknown = spte & ~known & _U64
    if unknown:
        flags.append(f"?{unknown:#x}")
    parts.append("|".join(flags))
    if mt:
        parts.append(mt)
    parts.append(f"pfn={spte_to_pfn(spte):#x}")
    if level is not None:
        parts.append(f"L{level}" if leaf else f"L{level} nonleaf")
    return " ".join(parts)
