"""The closed universe: every operation has a kind, every point a site, every impossible item a
reason, and every ghost event the model can emit an entry of the outcome table."""

from __future__ import annotations

import ast
from pathlib import Path

import kvmfuzz
from kvmfuzz.coverage import (
    AREAS,
    FILE_AREAS,
    IMPOSSIBLE_POINTS,
    INPUT_EVENTS,
    KINDS,
    OP_KIND,
    OUTCOMES,
    SITES,
    file_area,
    universe,
)
from kvmfuzz.driver import OPS
from kvmfuzz.points import Point

PACKAGE = Path(kvmfuzz.__file__).parent
# Events only a planted bug or calibration variant emits (kvmfuzz/bugs.py): outside the universe
# of the correct model on purpose.
PLANTED_ONLY_EVENTS = {"zap_all_leafs"}


def test_every_operation_has_exactly_one_kind() -> None:
    listed = [op for _, ops in KINDS.values() for op in ops]
    assert sorted(listed) == sorted(OPS), "KINDS must partition kvmfuzz.driver.OPS"
    assert set(OP_KIND) == set(OPS)


def test_every_point_is_a_site_of_some_kind() -> None:
    assert set(SITES) == set(KINDS)
    used = {p for sites in SITES.values() for p, _ in sites}
    assert used == set(Point), f"points no kind can reach: {set(Point) - used}"
    for kind, sites in SITES.items():
        points = [p for p, _ in sites]
        assert len(points) == len(set(points)), f"{kind}: a point listed twice"
        assert all(where for _, where in sites)


def test_universe_counts_and_impossible_reasons() -> None:
    u = universe()
    n_sites = sum(len(s) for s in SITES.values())
    assert len(u.sites) == n_sites
    assert len(u.pairs) == n_sites * len(KINDS)
    impossible_sites = [k for k, s in u.sites.items() if s.impossible]
    assert impossible_sites, "the model's lock discipline makes some sites unreachable"
    for key in impossible_sites:
        assert u.sites[key].point in IMPOSSIBLE_POINTS
    for (site, kind), why in u.pairs.items():
        if u.sites[site].impossible:
            assert why and u.sites[site].impossible in why, (site, kind)
    for key, why in IMPOSSIBLE_POINTS.items():
        assert len(why) > 40, f"{key.name}: say why"
    assert len(u.reachable_pairs()) == len(u.reachable_sites()) * len(KINDS)
    assert all(o.impossible is None or len(o.impossible) > 20 for o in OUTCOMES)


def test_outcome_table_is_well_formed() -> None:
    labels = [o.label for o in OUTCOMES]
    assert len(labels) == len(set(labels))
    areas = {a for a, _ in AREAS}
    assert {o.area for o in OUTCOMES} <= areas
    assert not INPUT_EVENTS & set(labels)
    # the list: RET_PF_* results, retry reasons, exits, notifier slot/noslot, waits
    for label in ("fault.ret.RETRY", "fault.retry.in-progress", "fault.retry.seq-changed",
                  "fault.retry.obsolete_root", "fault.retry.cmpxchg", "exit.mmio",
                  "exit.memory_fault", "exit.efault", "mn.start.noslot", "swap.waited",
                  "srcu.waited", "memslot.DELETE.inval-pending.fault-srcu",
                  "attr.to_shared.huge", "spte.recover.L2", "fault.mmio_gen_miss"):
        assert label in labels


def test_file_areas_name_model_files() -> None:
    for path, area in FILE_AREAS.items():
        assert (PACKAGE / path).is_file(), path
        assert area in {a for a, _ in AREAS}
    assert file_area("x86/tdp_mmu.py") == "mmu"
    assert file_area("sched/locks.py") == "core"


def _prefixes(expr: ast.expr) -> list[str]:
    """The constant leading parts a label expression can have."""
    if isinstance(expr, ast.IfExp):
        return _prefixes(expr.body) + _prefixes(expr.orelse)
    if isinstance(expr, ast.BinOp):
        return _prefixes(expr.left)
    if isinstance(expr, ast.JoinedStr):
        return _prefixes(expr.values[0])
    assert isinstance(expr, ast.Constant) and isinstance(expr.value, str), ast.unparse(expr)
    return [expr.value]


def _event_prefixes(source: str) -> list[str]:
    """The constant leading part of every ``*.ghost.event(...)`` label in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "event" and ast.unparse(node.func.value).endswith("ghost")):
            out += _prefixes(node.args[0])
    return out


def test_every_ghost_event_of_the_model_is_in_the_table() -> None:
    """A new ``vm.ghost.event`` in the model needs an entry in kvmfuzz/coverage.py's OUTCOMES
    (or INPUT_EVENTS), or here in PLANTED_ONLY_EVENTS if only a planted bug emits it."""
    known = [o.label for o in OUTCOMES] + sorted(INPUT_EVENTS) + sorted(PLANTED_ONLY_EVENTS)
    found = 0
    for pkg in ("virt", "x86", "host", "sched"):
        for path in sorted((PACKAGE / pkg).glob("*.py")):
            for prefix in _event_prefixes(path.read_text()):
                found += 1
                assert any(k.startswith(prefix) for k in known), \
                    f"{path.name}: ghost event {prefix!r}... is not in kvmfuzz.coverage.OUTCOMES"
    assert found > 40, f"only {found} ghost.event calls found: is the parser still right?"
