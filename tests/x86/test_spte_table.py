"""Table-driven tests of kvmfuzz.x86.spte against hand-computed SPTE values.

Every expected value is a literal worked out by hand from the kernel's bit definitions
(spte.h / spte.c / vmx.h, v6.18), never recomputed with the module under test, so that one bit
off anywhere fails. Bit legend:

  EPT:    R=0 W=1 X=2 MT=3..5 (WB=6 -> 0x30) IPAT=6 PS=7 A=8 D=9 present=11 pfn=12..51
          AD-type=52..53 saved-R=54 saved-X=56 host-w=57 mmu-w=58 SVE=63
  legacy: P=0 W=1 U=2 A=5 D=6 PS=7 host-w=9 mmu-w=10 present=11 pfn=12..51 NX=63
  MMIO:   gen[0..7] -> 3..10, gen[8..18] -> 52..62, gfn -> 12+;
          EPT value 0b110 (mask RWX|63), legacy value bit51|P (access mask W|U)
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from kvmfuzz.errors import InvalidArgument, ModelError
from kvmfuzz.x86 import spte as S
from kvmfuzz.x86.geometry import KERNEL_GEOMETRY, Geometry

EPT_AD = S.ept_masks(has_ad_bits=True)
EPT_NOAD = S.ept_masks(has_ad_bits=False)
EPT_XO = S.ept_masks(has_ad_bits=True, has_exec_only=True)
LEGACY = S.legacy_masks()
MASKS = {"ept-ad": EPT_AD, "ept-noad": EPT_NOAD, "ept-xo": EPT_XO, "legacy": LEGACY}

NONPRESENT = 0x8000000000000000
GEO4 = Geometry(level_bits=2)  # fan-out 4: pages(1)=1, pages(2)=4, pages(3)=16

# Values reused across tables (each derived by hand once, here).
E_4K_RW = 0x86000000002A1B77  # 63|58|57 ; 0x800 P|0x200 D|0x100 A|0x70 WB+IPAT|0x7 RWX ; pfn 0x2a1
E_4K_RO = 0x80000000002A1975  # 63 ; 0x800|0x100 A|0x70|0x5 R+X (no W, no host-w/mmu-w/D)
E_2M_RW = 0x8600000000200BF7  # 63|58|57 ; 0x800|0x200|0x100|0x80 PS|0x70|0x7 ; pfn 0x200
E_2M_NX = 0x8600000000200BF3  # as E_2M_RW without X (0x4)
N_4K_RW = 0x86100000002A1B77  # E_4K_RW | bit 52 (A/D disabled)
N_4K_TRACKED = 0x87500000002A1A70  # 63|58|57|56 sX|54 sR|52 ; 0x800|0x200 D|0x70 ; RWX and A gone
L_4K_RW = 0x00000000002A1E67  # 0x800|0x400 mmu-w|0x200 host-w|0x40 D|0x20 A|0x4 U|0x2 W|0x1 P
L_2M_RW = 0x0000000000200EE7  # L_4K_RW bits + 0x80 PS ; pfn 0x200
L_2M_NX = 0x8000000000200EE7  # L_2M_RW | NX (63)


def _make(m: S.SpteMasks, **kw: Any) -> S.MakeSpte:
    args: dict[str, Any] = dict(level=1, gfn=0x2A1, pfn=0x2A1, old_spte=NONPRESENT,
                                access=S.ACC_ALL, prefetch=False, host_writable=True,
                                ad_disabled=not m.ad_enabled)
    args.update(kw)
    return S.make_spte(m, **args)


def test_names_kernel_version() -> None:
    assert re.fullmatch(r"6\.1[3-8]", S.KERNEL_VERSION)
    assert S.KERNEL_VERSION in (S.__doc__ or "")


def test_fixed_constants() -> None:
    assert S.SHADOW_NONPRESENT_VALUE == 0x8000000000000000
    assert S.FROZEN_SPTE == 0x80000000000005A0  # 63 | 10 | 8 | 7 | 5
    assert S.SPTE_MMU_PRESENT_MASK == 0x800
    assert S.PT_WRITABLE_MASK == 0x2
    assert S.PT_PAGE_SIZE_MASK == 0x80
    assert S.SPTE_BASE_ADDR_MASK == 0x000FFFFFFFFFF000
    assert S.SPTE_TDP_AD_SHIFT == 52
    assert S.SPTE_TDP_AD_MASK == 0x0030000000000000
    assert (S.SPTE_TDP_AD_ENABLED, S.SPTE_TDP_AD_DISABLED, S.SPTE_TDP_AD_WRPROT_ONLY) == (
        0, 0x0010000000000000, 0x0020000000000000)
    assert S.SHADOW_ACC_TRACK_SAVED_BITS_MASK == 0x5
    assert S.SHADOW_ACC_TRACK_SAVED_BITS_SHIFT == 54
    assert S.EPT_SPTE_HOST_WRITABLE == 0x0200000000000000
    assert S.EPT_SPTE_MMU_WRITABLE == 0x0400000000000000
    assert S.DEFAULT_SPTE_HOST_WRITABLE == 0x200
    assert S.DEFAULT_SPTE_MMU_WRITABLE == 0x400
    assert (S.PT_ACCESSED_MASK, S.PT_DIRTY_MASK, S.PT64_NX_MASK) == (0x20, 0x40, 1 << 63)
    assert (S.VMX_EPT_READABLE_MASK, S.VMX_EPT_WRITABLE_MASK, S.VMX_EPT_EXECUTABLE_MASK) == (
        0x1, 0x2, 0x4)
    assert (S.VMX_EPT_ACCESS_BIT, S.VMX_EPT_DIRTY_BIT, S.VMX_EPT_IPAT_BIT) == (0x100, 0x200, 0x40)
    assert S.VMX_EPT_SUPPRESS_VE_BIT == 0x8000000000000000
    assert S.VMX_EPT_MT_EPTE_SHIFT == 3
    assert S.MTRR_TYPE_WRBACK == 6
    assert S.MMIO_SPTE_GEN_LOW_MASK == 0x7F8
    assert S.MMIO_SPTE_GEN_HIGH_MASK == 0x7FF0000000000000
    assert S.MMIO_SPTE_GEN_MASK == 0x7FFFF
    assert (S.ACC_EXEC_MASK, S.ACC_WRITE_MASK, S.ACC_USER_MASK, S.ACC_ALL) == (1, 2, 4, 7)


def test_frozen_and_nonpresent_are_not_present_nor_mmio() -> None:
    for m in MASKS.values():
        for v in (S.FROZEN_SPTE, S.SHADOW_NONPRESENT_VALUE):
            assert not S.is_shadow_present_pte(v)
            assert not S.is_mmio_spte(m, v)
    assert S.is_frozen_spte(0x80000000000005A0)
    assert not S.is_frozen_spte(0x5A0)


MAKE_SPTE_ROWS = [
    # (masks, overrides, expected spte, expected wrprot)
    pytest.param("ept-ad", {}, E_4K_RW, False, id="ept-ad-4k-writable"),
    pytest.param("ept-ad", {"host_writable": False}, E_4K_RO, False, id="ept-ad-4k-host-ro"),
    pytest.param("ept-ad", {"level": 2, "gfn": 0x200, "pfn": 0x200}, E_2M_RW, False,
                 id="ept-ad-2m"),
    # prefetch: A not set, then access tracking clears A (already clear): E_4K_RW - 0x100
    pytest.param("ept-ad", {"prefetch": True}, 0x86000000002A1A77, False, id="ept-ad-prefetch"),
    # prefetch while synchronizing keeps A
    pytest.param("ept-ad", {"prefetch": True, "synchronizing": True}, E_4K_RW, False,
                 id="ept-ad-prefetch-sync"),
    # write-tracked: host-w (57) kept, no W / mmu-w (58) / D (0x200): 0x800|0x100|0x70|0x5
    pytest.param("ept-ad", {"write_tracked": True}, 0x82000000002A1975, True,
                 id="ept-ad-write-tracked"),
    # write-tracked, but the old SPTE is already a writable leaf: no unsync attempt
    pytest.param("ept-ad", {"write_tracked": True, "old_spte": E_4K_RW}, E_4K_RW, False,
                 id="ept-ad-write-tracked-old-writable"),
    pytest.param("ept-ad", {"level": 2, "gfn": 0x200, "pfn": 0x200, "nx_huge_active": True},
                 E_2M_NX, False, id="ept-ad-2m-nx-huge"),
    pytest.param("ept-ad", {"nx_huge_active": True}, E_4K_RW, False, id="ept-ad-4k-nx-huge"),
    # UC memtype for a host-MMIO pfn: MT 0, no IPAT: 0xb77 - 0x70
    pytest.param("ept-ad", {"memtype": 0}, 0x86000000002A1B07, False, id="ept-ad-memtype-uc"),
    # A/D wrprot-only type: bit 53
    pytest.param("ept-ad", {"ad_need_write_protect": True}, 0x86200000002A1B77, False,
                 id="ept-ad-wrprot-only"),
    pytest.param("ept-noad", {}, N_4K_RW, False, id="ept-noad-4k-writable"),
    # 63|52 ; 0x800|0x100|0x70|0x5
    pytest.param("ept-noad", {"host_writable": False}, 0x80100000002A1975, False,
                 id="ept-noad-4k-host-ro"),
    # prefetch, A/D off: W|mmu-w|D set, then tracked: R,X saved to 54,56, RWX and A cleared
    pytest.param("ept-noad", {"prefetch": True}, N_4K_TRACKED, False, id="ept-noad-prefetch"),
    # 2M prefetch + nx-huge: no X; save R only (54); 0x800|0x200 D|0x80 PS|0x70
    pytest.param("ept-noad", {"level": 2, "gfn": 0x200, "pfn": 0x200, "prefetch": True,
                              "nx_huge_active": True}, 0x8650000000200AF0, False,
                 id="ept-noad-2m-prefetch-nx"),
    # exec-only EPT, access X only: R not set (present mask is SVE only): 0x800|0x100|0x70|0x4
    pytest.param("ept-xo", {"access": S.ACC_EXEC_MASK}, 0x82000000002A1974, False,
                 id="ept-xo-exec-only"),
    pytest.param("ept-xo", {}, E_4K_RW, False, id="ept-xo-all"),
    pytest.param("legacy", {}, L_4K_RW, False, id="legacy-4k-writable"),
    # 0x800|0x20 A|0x4 U|0x1 P
    pytest.param("legacy", {"host_writable": False}, 0x2A1825, False, id="legacy-4k-host-ro"),
    pytest.param("legacy", {"level": 2, "gfn": 0x200, "pfn": 0x200}, L_2M_RW, False,
                 id="legacy-2m"),
    pytest.param("legacy", {"level": 2, "gfn": 0x200, "pfn": 0x200, "nx_huge_active": True},
                 L_2M_NX, False, id="legacy-2m-nx-huge"),
    # no exec at all at 4K -> NX
    pytest.param("legacy", {"access": S.ACC_WRITE_MASK | S.ACC_USER_MASK}, 0x80000000002A1E67,
                 False, id="legacy-4k-noexec"),
    pytest.param("legacy", {"prefetch": True}, 0x2A1E47, False, id="legacy-prefetch"),
    # 0x800|0x200 host-w|0x20|0x4|0x1
    pytest.param("legacy", {"write_tracked": True}, 0x2A1A25, True, id="legacy-write-tracked"),
]


@pytest.mark.parametrize(("masks", "kw", "expected", "wrprot"), MAKE_SPTE_ROWS)
def test_make_spte(masks: str, kw: dict[str, Any], expected: int, wrprot: bool) -> None:
    got = _make(MASKS[masks], **kw)
    assert (hex(got.spte), got.wrprot) == (hex(expected), wrprot)


@pytest.mark.parametrize(("masks", "gfn", "access", "gen", "expected"), [
    # 0x7ff<<52 | gfn 0x10<<12 | 0xff<<3 (0x7f8) | 0b110
    pytest.param("ept-ad", 0x10, S.ACC_ALL, 0x7FFFF, 0x7FF00000000107FE, id="ept-gen-all"),
    # 1<<52 | 0x10000 | 0x55<<3 (0x2a8) | 0x6
    pytest.param("ept-ad", 0x10, S.ACC_ALL, 0x155, 0x00100000000102AE, id="ept-gen-155"),
    pytest.param("ept-ad", 0x10, S.ACC_ALL, 0x100, 0x0010000000010006, id="ept-gen-100"),
    # bit 63 (update in progress) is dropped: 0x5<<3 = 0x28
    pytest.param("ept-noad", 0x10, 0, (1 << 63) | 5, 0x000000000001002E, id="ept-gen-inprog"),
    # legacy: gen | bit51 (0x0008...) | P | access & (W|U) = 0x6
    pytest.param("legacy", 0x10, S.ACC_ALL, 0x7FFFF, 0x7FF80000000107FF, id="legacy-gen-all"),
    pytest.param("legacy", 0x10, S.ACC_WRITE_MASK, 0x155, 0x00180000000102AB,
                 id="legacy-gen-155-w"),
    pytest.param("legacy", 0x10, 0, 0x100, 0x0018000000010001, id="legacy-gen-100"),
])
def test_make_mmio_spte(masks: str, gfn: int, access: int, gen: int, expected: int) -> None:
    m = MASKS[masks]
    spte = S.make_mmio_spte(m, gfn, access, gen)
    assert hex(spte) == hex(expected)
    assert S.is_mmio_spte(m, spte)
    assert not S.is_shadow_present_pte(spte)
    assert S.get_mmio_spte_gfn(m, spte) == gfn
    assert S.get_mmio_spte_generation(spte) == gen & 0x7FFFF
    assert S.get_mmio_spte_access(m, spte) == access & (0x6 if masks == "legacy" else 0)


def test_mmio_generation_check() -> None:
    spte = 0x00100000000102AE  # EPT, gen 0x155
    assert S.check_mmio_spte_generation(spte, 0x155)
    assert not S.check_mmio_spte_generation(spte, 0x156)
    assert S.check_mmio_spte_generation(spte, 0x80155)  # 19-bit wrap aliases
    assert not S.check_mmio_spte_generation(spte, (1 << 63) | 0x155)  # update in progress


def test_mmio_caching_disabled() -> None:
    m = S.legacy_masks(maxphyaddr=52)  # no reserved PA bit left
    assert not m.mmio_caching
    assert not S.is_mmio_spte(m, 0x0018000000010001)
    with pytest.raises(ModelError):
        S.make_mmio_spte(m, 0x10, 0, 1)
    assert not S.ept_masks(has_ad_bits=True, mmio_caching=False).mmio_caching
    with pytest.raises(InvalidArgument):
        S.make_mmio_spte(EPT_AD, 1 << 34, 0, 1)  # gpa bit 46 >= MAXPHYADDR


@pytest.mark.parametrize(("masks", "ad_disabled", "expected"), [
    # 0x800 | R(present)+R(user) 0x1 | W 0x2 | X 0x4 | A 0x100 | SVE 63 ; child 0x1234
    pytest.param("ept-ad", False, 0x8000000001234907, id="ept-ad"),
    # A/D disabled: bit 52 instead of A
    pytest.param("ept-noad", True, 0x8010000001234807, id="ept-noad"),
    # 0x800 | P | W | U 0x4 | A 0x20 (no NX)
    pytest.param("legacy", False, 0x0000000001234827, id="legacy"),
])
def test_make_nonleaf_spte(masks: str, ad_disabled: bool, expected: int) -> None:
    assert hex(S.make_nonleaf_spte(MASKS[masks], 0x1234, ad_disabled)) == hex(expected)


@pytest.mark.parametrize(("masks", "geo", "huge", "level", "index", "kw", "expected"), [
    # 4K children: PS (0x80) cleared, pfn offset = index
    pytest.param("ept-ad", KERNEL_GEOMETRY, E_2M_RW, 2, 0, {}, 0x8600000000200B77, id="2m-i0"),
    pytest.param("ept-ad", KERNEL_GEOMETRY, E_2M_RW, 2, 5, {}, 0x8600000000205B77, id="2m-i5"),
    pytest.param("ept-ad", KERNEL_GEOMETRY, E_2M_RW, 2, 0x1FF, {}, 0x86000000003FFB77,
                 id="2m-last"),
    # 1G -> 2M children keep PS; offset = 3 * 512 = 0x600 frames
    pytest.param("ept-ad", KERNEL_GEOMETRY, 0x8600000040000BF7, 3, 3, {}, 0x8600000040600BF7,
                 id="1g-i3"),
    # NX-huge: X (0x4) restored on the 4K child when the role allows exec
    pytest.param("ept-ad", KERNEL_GEOMETRY, E_2M_NX, 2, 1, {"nx_huge_active": True},
                 0x8600000000201B77, id="2m-nx-restore"),
    pytest.param("ept-ad", KERNEL_GEOMETRY, E_2M_NX, 2, 1,
                 {"nx_huge_active": True, "role_allows_exec": False}, 0x8600000000201B73,
                 id="2m-nx-role-noexec"),
    # legacy: NX (63) cleared, PS cleared, pfn 0x202
    pytest.param("legacy", KERNEL_GEOMETRY, L_2M_NX, 2, 2, {"nx_huge_active": True},
                 0x0000000000202E67, id="legacy-nx-restore"),
    # access-tracked huge child: restore R, add X, re-track -> saved R|X (54|56)
    pytest.param("ept-noad", KERNEL_GEOMETRY, 0x8650000000200AF0, 2, 1,
                 {"nx_huge_active": True}, 0x8750000000201A70, id="tracked-nx-restore"),
    # fan-out 4: 2M-equivalent covers 4 frames; 1G-equivalent child offset 3*4 = 0xc
    pytest.param("ept-ad", GEO4, 0x8600000000200BF7, 2, 3, {}, 0x8600000000203B77,
                 id="geo4-l2-i3"),
    pytest.param("ept-ad", GEO4, 0x8600000000200BF7, 3, 3, {}, 0x860000000020CBF7,
                 id="geo4-l3-i3"),
])
def test_make_small_spte(masks: str, geo: Geometry, huge: int, level: int, index: int,
                         kw: dict[str, Any], expected: int) -> None:
    got = S.make_small_spte(MASKS[masks], geo, huge, level, index, **kw)
    assert hex(got) == hex(expected)


@pytest.mark.parametrize(("masks", "geo", "small", "level", "nx", "expected"), [
    # PS set, frame 0x205 aligned down to 0x200
    pytest.param("ept-ad", KERNEL_GEOMETRY, 0x8600000000205B77, 2, False, E_2M_RW, id="ept-2m"),
    pytest.param("ept-ad", KERNEL_GEOMETRY, 0x8600000000205B77, 2, True, E_2M_NX,
                 id="ept-2m-nx"),
    # 1G: frame 0x40605 -> 0x40000
    pytest.param("ept-ad", KERNEL_GEOMETRY, 0x8600000040605B77, 3, False, 0x8600000040000BF7,
                 id="ept-1g"),
    pytest.param("legacy", KERNEL_GEOMETRY, 0x0000000000203E67, 2, False, L_2M_RW,
                 id="legacy-2m"),
    pytest.param("legacy", KERNEL_GEOMETRY, 0x0000000000203E67, 2, True, L_2M_NX,
                 id="legacy-2m-nx"),
    # fan-out 4: frame 0x207 -> 0x204
    pytest.param("ept-ad", GEO4, 0x8600000000207B77, 2, False, 0x8600000000204BF7, id="geo4"),
])
def test_make_huge_spte(masks: str, geo: Geometry, small: int, level: int, nx: bool,
                        expected: int) -> None:
    got = S.make_huge_spte(MASKS[masks], geo, small, level, nx_huge_active=nx)
    assert hex(got) == hex(expected)


def test_split_and_merge_preconditions() -> None:
    with pytest.raises(ModelError):
        S.make_small_spte(EPT_AD, KERNEL_GEOMETRY, E_4K_RW, 2, 0)  # not PS
    with pytest.raises(ModelError):
        S.make_huge_spte(EPT_AD, KERNEL_GEOMETRY, NONPRESENT, 2)
    with pytest.raises(InvalidArgument):
        S.make_small_spte(EPT_AD, GEO4, E_2M_RW, 2, 4)  # fan-out 4: index 0..3


def test_access_tracking_round_trip() -> None:
    tracked = S.mark_spte_for_access_track(EPT_NOAD, N_4K_RW)
    assert hex(tracked) == hex(N_4K_TRACKED)
    assert S.is_shadow_present_pte(tracked)
    assert S.is_access_track_spte(EPT_NOAD, tracked)
    assert not S.is_accessed_spte(EPT_NOAD, tracked)
    assert S.mark_spte_for_access_track(EPT_NOAD, tracked) == tracked  # idempotent
    # R, X back in 0 and 2; saved bits cleared; W and A not restored: 0xa70 | 0x5
    assert hex(S.restore_acc_track_spte(EPT_NOAD, tracked)) == hex(0x86100000002A1A75)
    # A/D enabled: only A is cleared
    assert hex(S.mark_spte_for_access_track(EPT_AD, E_4K_RW)) == hex(0x86000000002A1A77)
    assert not S.is_access_track_spte(EPT_AD, 0x86000000002A1A77)
    assert hex(S.mark_spte_for_access_track(LEGACY, L_4K_RW)) == hex(0x2A1E47)


@pytest.mark.parametrize(("masks", "spte", "expected"), [
    pytest.param("ept-ad", E_4K_RW, False, id="W+D"),
    pytest.param("ept-ad", 0x86000000002A1B75, True, id="mmu-w-without-W"),
    pytest.param("ept-ad", 0x86000000002A1977, True, id="W-without-D"),
    pytest.param("ept-ad", 0x86000000002A1A77, False, id="A-clear-only"),
    pytest.param("ept-ad", E_4K_RO, False, id="read-only"),
    pytest.param("ept-noad", N_4K_RW, True, id="ad-disabled"),
    pytest.param("legacy", L_4K_RW, False, id="legacy-W+D"),
    pytest.param("legacy", 0x2A1E27, True, id="legacy-W-without-D"),
])
def test_spte_needs_atomic_update(masks: str, spte: int, expected: bool) -> None:
    assert S.spte_needs_atomic_update(MASKS[masks], spte) is expected


@pytest.mark.parametrize(("old", "new", "expected"), [
    pytest.param(E_4K_RW, 0x86000000002A1B75, False, id="clear-W-only"),
    pytest.param(E_4K_RW, 0x82000000002A1975, True, id="clear-mmu-w"),
    pytest.param(E_4K_RW, NONPRESENT, True, id="zap-writable"),
    pytest.param(E_4K_RO, NONPRESENT, False, id="zap-readonly"),
    pytest.param(E_4K_RW, 0x86000000002A1A77, False, id="clear-A"),
])
def test_leaf_spte_change_needs_tlb_flush(old: int, new: int, expected: bool) -> None:
    assert S.leaf_spte_change_needs_tlb_flush(EPT_AD, old, new) is expected


@pytest.mark.parametrize(("masks", "spte", "message"), [
    pytest.param("ept-ad", E_4K_RW, None, id="1-1-1"),
    pytest.param("ept-ad", 0x86000000002A1B75, None, id="1-1-0"),
    pytest.param("ept-ad", 0x82000000002A1975, None, id="1-0-0"),
    pytest.param("ept-ad", E_4K_RO, None, id="0-0-0"),
    pytest.param("ept-ad", 0x80000000002A1977, "Writable SPTE is not MMU-writable", id="0-0-1"),
    pytest.param("ept-ad", 0x84000000002A1975, "MMU-writable SPTE is not Host-writable",
                 id="0-1-0"),
    pytest.param("legacy", 0x2A1A27, "Writable SPTE is not MMU-writable", id="legacy-1-0-1"),
    pytest.param("legacy", L_4K_RW, None, id="legacy-1-1-1"),
])
def test_writable_trio(masks: str, spte: int, message: str | None) -> None:
    got = S.check_spte_writable_invariants(MASKS[masks], spte)
    if message is None:
        assert got is None
    else:
        assert got is not None and message in got


def test_predicates() -> None:
    assert S.spte_to_pfn(E_4K_RW) == 0x2A1
    assert S.is_last_spte(E_4K_RW, 1) and not S.is_last_spte(0x8000000001234907, 2)
    assert S.is_last_spte(E_2M_RW, 2) and S.is_large_pte(E_2M_RW)
    assert S.is_host_writable_spte(EPT_AD, 0x82000000002A1975)
    assert not S.is_mmu_writable_spte(EPT_AD, 0x82000000002A1975)
    assert S.spte_ad_enabled(E_4K_RW) and not S.spte_ad_need_write_protect(E_4K_RW)
    assert not S.spte_ad_enabled(N_4K_RW) and S.spte_ad_need_write_protect(N_4K_RW)
    assert S.spte_ad_enabled(0x86200000002A1B77)
    assert S.spte_ad_need_write_protect(0x86200000002A1B77)
    assert S.is_executable_pte(EPT_AD, E_4K_RW) and not S.is_executable_pte(EPT_AD, E_2M_NX)
    assert S.is_executable_pte(LEGACY, L_2M_RW) and not S.is_executable_pte(LEGACY, L_2M_NX)
    assert S.is_dirty_spte(EPT_AD, E_4K_RW) and not S.is_dirty_spte(EPT_AD, 0x86000000002A1977)
    assert not S.is_dirty_spte(EPT_NOAD, N_4K_TRACKED)  # A/D off: W decides
    assert S.is_accessed_spte(EPT_NOAD, N_4K_RW)


@pytest.mark.parametrize(("masks", "spte", "write", "exec_", "expected"), [
    pytest.param("ept-ad", E_4K_RW, False, False, True, id="read"),
    pytest.param("ept-ad", E_4K_RW, True, False, True, id="write"),
    pytest.param("ept-ad", E_4K_RW, False, True, True, id="exec"),
    pytest.param("ept-ad", 0x86000000002A1B75, True, False, False, id="write-wrprot"),
    pytest.param("ept-ad", E_2M_NX, False, True, False, id="exec-nx-huge"),
    pytest.param("ept-noad", N_4K_TRACKED, False, False, False, id="read-tracked"),
    pytest.param("legacy", L_2M_NX, False, True, False, id="legacy-exec-nx"),
    pytest.param("legacy", L_4K_RW, False, True, True, id="legacy-exec"),
])
def test_is_access_allowed(masks: str, spte: int, write: bool, exec_: bool,
                           expected: bool) -> None:
    assert S.is_access_allowed(MASKS[masks], spte, write=write, exec=exec_) is expected


@pytest.mark.parametrize(("masks", "spte", "level", "fragment"), [
    pytest.param("ept-ad", E_4K_RW, 1, None, id="ok-4k"),
    pytest.param("ept-ad", E_2M_RW, 2, None, id="ok-2m"),
    pytest.param("ept-ad", 0x8000000001234907, 4, None, id="ok-nonleaf"),
    pytest.param("ept-ad", NONPRESENT, 1, None, id="nonpresent"),
    # frame 1<<34 = address bit 46 = MAXPHYADDR
    pytest.param("ept-ad", 0x8600400000000B77, 1, "MAXPHYADDR", id="pfn-too-high"),
    pytest.param("ept-ad", 0x86000000002A1BF7, 1, "PS set on a 4K", id="ps-4k"),
    pytest.param("ept-ad", 0x8600000000000BF7, 4, "above the 1G", id="ps-l4"),
    pytest.param("ept-ad", 0x8600000000201BF7, 2, "not aligned", id="misaligned-2m"),
    pytest.param("ept-ad", 0x86000000002A1B72, 1, "W without R", id="ept-w-only"),
    pytest.param("ept-ad", 0x86000000002A1B74, 1, "X-only", id="ept-x-only"),
    pytest.param("ept-xo", 0x86000000002A1B74, 1, None, id="ept-x-only-ok"),
    pytest.param("ept-ad", 0x86000000002A1B5F, 1, "memory type 3", id="ept-mt3"),
    pytest.param("ept-ad", 0x8000000001234977, 3, "non-leaf", id="ept-nonleaf-mt"),
])
def test_reserved_bits_violation(masks: str, spte: int, level: int,
                                 fragment: str | None) -> None:
    got = S.reserved_bits_violation(MASKS[masks], spte, level)
    if fragment is None:
        assert got is None
    else:
        assert got is not None and fragment in got


@pytest.mark.parametrize(("masks", "spte", "level", "text"), [
    pytest.param("ept-ad", E_4K_RW, 1,
                 "0x86000000002a1b77 present|R|W|X|A|D|host-w|mmu-w|IPAT mt=WB pfn=0x2a1 L1",
                 id="ept-leaf"),
    pytest.param("ept-noad", N_4K_TRACKED, 1,
                 "0x87500000002a1a70 present|acc-track(saved R|X)|D|host-w|mmu-w|IPAT|"
                 "ad-disabled mt=WB pfn=0x2a1 L1", id="ept-tracked"),
    pytest.param("ept-ad", 0x8000000001234907, 3,
                 "0x8000000001234907 present|R|W|X|A pfn=0x1234 L3 nonleaf", id="ept-nonleaf"),
    pytest.param("ept-ad", 0x86000000002A1F77, None,
                 "0x86000000002a1f77 present|R|W|X|A|D|host-w|mmu-w|IPAT|?0x400 mt=WB pfn=0x2a1",
                 id="ept-unknown-bit"),
    pytest.param("legacy", L_2M_NX, 2,
                 "0x8000000000200ee7 present|P|W|U|A|D|PS|NX|host-w|mmu-w pfn=0x200 L2",
                 id="legacy-huge"),
    pytest.param("ept-ad", 0x0010000000010006, None, "mmio gfn=0x10 gen=0x100", id="ept-mmio"),
    pytest.param("legacy", 0x00180000000102AB, None, "mmio gfn=0x10 gen=0x155 access=W",
                 id="legacy-mmio"),
    pytest.param("ept-ad", 0x80000000000005A0, None, "FROZEN", id="frozen"),
    pytest.param("legacy", 0x8000000000000000, None, "nonpresent", id="nonpresent"),
    pytest.param("ept-ad", 0, None, "nonpresent(0x0)", id="zero"),
])
def test_format_spte(masks: str, spte: int, level: int | None, text: str) -> None:
    assert S.format_spte(MASKS[masks], spte, level) == text
