"""Hypothesis strategies for kvmfuzz (installed as ``kvmfuzz.strategies``).

Protocol-aware generation: configurations that reach huge pages quickly, memslot layouts
with aligned, unaligned and hva-skewed slots, and gfn / hva choices biased toward slot edges,
huge-frame boundaries and whatever an in-flight operation is touching.
"""

from __future__ import annotations

from functools import cache

from hypothesis import strategies as st

from kvmfuzz.config import VmConfig
from kvmfuzz.driver import SlotSpec


@cache  # strategies are immutable; building one per example costs more than drawing from it
def vm_configs(bug: str | None = None, private_mem: bool | None = None) -> st.SearchStrategy[VmConfig]:
    """VM configurations: 1-3 vCPUs, A/D on/off, THP on/off, private memory, zap-all quirk,
    eager huge-page splitting on/off (for dirty logging)."""
    return st.builds(
        VmConfig,
        nr_vcpus=st.integers(1, 3),
        level_bits=st.just(2),
        ad_bits=st.booleans(),
        thp=st.booleans(),
        private_mem=st.booleans() if private_mem is None else st.just(private_mem),
        slot_zap_all=st.booleans(),
        eager_split=st.booleans(),
        mmio_gen_bits=st.sampled_from([19, 2]),
        bug=st.just(bug),
    )


# Layouts over a 256-gfn guest (level_bits 2: 4-page "2M" frames, 16-page "1G" frames).
_LAYOUTS: tuple[tuple[SlotSpec, ...], ...] = (
    # aligned slot + unaligned, hva-skewed slot
    (SlotSpec(0, 0, 32, 0), SlotSpec(1, 40, 10, 65)),
    # one big aligned slot and one small one right after it
    (SlotSpec(0, 16, 48, 16), SlotSpec(1, 64, 8, 128)),
    # unaligned start, aligned hva skew matches
    (SlotSpec(0, 2, 30, 2), SlotSpec(1, 48, 16, 80)),
)
_GMEM_LAYOUTS: tuple[tuple[SlotSpec, ...], ...] = (
    (SlotSpec(0, 0, 32, 0, gmem_offset=0), SlotSpec(1, 40, 10, 65)),
    (SlotSpec(0, 16, 32, 16, gmem_offset=16), SlotSpec(1, 64, 16, 128, gmem_offset=64)),
)


@cache
def memslot_layouts(private_mem: bool) -> st.SearchStrategy[tuple[SlotSpec, ...]]:
    return st.sampled_from(_GMEM_LAYOUTS if private_mem else _LAYOUTS)


_OFFSETS = st.integers(-1, 1)
_BIAS = st.integers(0, 3)


def draw_near(data: st.DataObject, points: list[int], lo: int, hi: int, label: str) -> int:
    """An integer at or next to one of ``points`` (3 times in 4), else anywhere in [lo, hi).

    Drawn as (choice, index, offset) with fixed strategies, which is cheap and shrinks toward
    the first point exactly.
    """
    points = [p for p in points if lo <= p < hi]
    if points and data.draw(_BIAS, label=f"{label}-biased") > 0:
        p = points[data.draw(st.integers(0, len(points) - 1), label=f"{label}-near")]
        return min(hi - 1, max(lo, p + data.draw(_OFFSETS, label=f"{label}-offset")))
    return data.draw(st.integers(lo, hi - 1), label=label)


def near(points: list[int], lo: int, hi: int) -> st.SearchStrategy[int]:
    """A strategy version of ``draw_near`` (for use outside rules)."""
    points = [p for p in points if lo <= p < hi]
    if not points:
        return st.integers(lo, hi - 1)
    return st.one_of(
        st.sampled_from(points).flatmap(
            lambda p: st.integers(max(lo, p - 1), min(hi - 1, p + 1))),
        st.integers(lo, hi - 1),
    )
