"""``# unreachable: <reason>`` markers: the arcs they exclude from protocol branch coverage
(exactly those of the marked statement, one side or both), the malformed markers they reject,
the reasons carried into the report (JSON, merge, terminal footnote, HTML), and the model's own
markers (well-formed, never taken by a hand-driven run)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from kvmfuzz.config import VmConfig
from kvmfuzz.coverage import (
    MODEL_PACKAGES,
    BranchCollector,
    CoverageReport,
    FileBranches,
    MarkerError,
    Run,
    arc_exclusions,
    classify_arcs,
    render_html,
    terminal_lines,
    unreachable_markers,
)
from kvmfuzz.driver import Driver, SlotSpec

MARKED = '''def f(vm, x):
    if x.a:  # unreachable: nothing sets a
        return 1
    # unreachable(true): b is never negative, see
    #   where b is computed
    if x.b < 0:
        return 2
    for y in x.c:  # unreachable(false): c is never empty
        g(y)
    while x.d:  # unreachable(true): d is always 0
        x.d -= 1
    if vm.bug("z"):  # unreachable: the planted class wins
        return 3
    if x.e:
        return 4
    return 5
'''
# the branch arcs coverage.py reports for MARKED
ARCS = {(2, 3), (2, 6), (6, 7), (6, 8), (8, 9), (8, 10), (10, 11), (10, 12), (12, 13), (12, 14),
        (14, 15), (14, 16)}


def test_a_marker_excludes_exactly_the_arcs_of_its_statement() -> None:
    classes, reasons = arc_exclusions(MARKED, ARCS)
    assert classes == {(2, 3): "unreachable", (2, 6): "unreachable",  # no side: every arc
                       (6, 7): "unreachable",  # true: the arc into the body only
                       (8, 10): "unreachable",  # false: the loop's exit only
                       (10, 11): "unreachable",
                       (12, 13): "planted", (12, 14): "planted"}  # automatic classes first
    assert reasons == {(2, 3): "nothing sets a", (2, 6): "nothing sets a",
                       (6, 7): "b is never negative, see where b is computed",
                       (8, 10): "c is never empty", (10, 11): "d is always 0"}
    assert classify_arcs(MARKED, ARCS) == classes
    # ordinary arcs (the other side of a one-sided marker, an unmarked statement)
    assert {(6, 8), (8, 9), (10, 12), (14, 15), (14, 16)}.isdisjoint(classes)


def test_markers_are_read_with_their_statement_and_side() -> None:
    markers = unreachable_markers(MARKED)
    assert sorted(markers) == [2, 6, 8, 10, 12]
    m = markers[6]
    assert (m.line, m.side, m.body) == (6, "true", 7)
    assert m.selects((6, 7)) and not m.selects((6, 8)) and not m.selects((2, 3))
    assert markers[8].selects((8, 10)) and markers[8].selects((8, -1)) and not markers[8].selects((8, 9))
    assert markers[2].side is None and markers[2].selects((2, -1))


def test_markers_change_nothing_else() -> None:
    plain = MARKED.replace("# unreachable", "# note")  # same lines, no marker
    assert unreachable_markers(plain) == {}
    assert classify_arcs(plain, ARCS) == {(12, 13): "planted", (12, 14): "planted"}
    marked = classify_arcs(MARKED, ARCS)
    assert {a: c for a, c in marked.items() if c != "unreachable"} == classify_arcs(plain, ARCS)


@pytest.mark.parametrize("comment", [
    "# unreachable",  # no colon, no reason
    "# unreachable:",  # empty reason
    "# unreachable:   ...",  # no word in it
    "# unreachable(true):",  # a side but no reason
    "# unreachable(maybe): a reason",  # unknown side
    "# unreachable because x is never set",  # not the marker syntax
])
def test_a_marker_without_a_reason_or_with_a_bad_side_is_rejected(comment: str) -> None:
    source = f"def f(x):\n    if x:  {comment}\n        return 1\n    return 2\n"
    with pytest.raises(MarkerError, match=r"model\.py:2: "):
        unreachable_markers(source, "model.py")
    with pytest.raises(MarkerError):
        classify_arcs(source, {(2, 3), (2, 4)})


@pytest.mark.parametrize("source", [
    # on a line that is not a branch statement
    "def f(x):\n    y = x  # unreachable: never\n    return y\n",
    # a comment block separated from its statement by a blank line
    "def f(x):\n    # unreachable: never\n\n    if x:\n        return 1\n    return 2\n",
    # on the second line of a multi-line condition (arcs start at the first)
    "def f(x, y):\n    if (x\n            and y):  # unreachable: never\n        return 1\n    return 2\n",
    # a side on a statement whose body shares its line
    "def f(x):\n    if x: return 1  # unreachable(true): never\n    return 2\n",
    # two markers for one statement
    "def f(x):\n    # unreachable(true): never\n    if x:  # unreachable: never\n        return 1\n",
])
def test_a_marker_must_be_attached_to_a_branch_statement(source: str) -> None:
    with pytest.raises(MarkerError):
        unreachable_markers(source)


def test_the_word_elsewhere_is_no_marker() -> None:
    source = ('def f(x):\n    s = "# unreachable"  # the unreachable case is handled below\n'
              "    # Unreachable states are reported by the invariants\n    return s\n")
    assert unreachable_markers(source) == {}


MODEL = Path(__file__).resolve().parents[2] / "kvmfuzz"


def _model_files() -> list[Path]:
    return sorted(p for pkg in MODEL_PACKAGES for p in (MODEL / pkg.split(".")[1]).rglob("*.py"))


def test_the_model_markers_are_well_formed() -> None:
    total = 0
    for path in _model_files():
        markers = unreachable_markers(path.read_text(), str(path.relative_to(MODEL)))
        for m in markers.values():
            assert len(m.reason.split()) >= 4, f"{path}:{m.line}: say why: {m.reason!r}"
        total += len(markers)
    assert total > 0


def test_the_collector_excludes_marked_arcs_that_a_run_never_takes() -> None:
    collector = BranchCollector().start()
    try:
        d = Driver(VmConfig(nr_vcpus=2), (SlotSpec(0, 0, 16, 0),))
        for gfn, write, vcpu in ((1, True, "vcpu0"), (2, False, "vcpu1"), (100, False, "vcpu0")):
            d.start("access", vcpu, gfn=gfn, write=write, private=False)
            d.finish()
        d.start("dontneed", "mm0", hva=0, npages=4)
        d.finish()
    finally:
        files = collector.stop()
    spte = next(f for f in files if f.path == "x86/spte.py")
    marked = {a for a, cls in spte.excluded.items() if cls == "unreachable"}
    assert marked and marked == spte.reasons.keys()
    assert any("NX huge pages are not modelled" in why for why in spte.reasons.values())
    assert all(f.unreachable_executed == [] for f in files)
    assert spte.protocol.total == len((spte.branches_executed | spte.branches_missing)
                                      - spte.excluded.keys())


FILE = FileBranches("x86/spte.py", frozenset({1, 2, 3}), frozenset({4}),
                    frozenset({(2, 3), (3, 4)}), frozenset({(2, 4), (3, 5), (6, -1)}),
                    {(2, 4): "unreachable", (3, 4): "unreachable", (6, -1): "defensive"},
                    {(2, 4): "nx_huge_active is never <passed>", (3, 4): "a wrong claim"})


def test_reasons_survive_json_and_merge() -> None:
    row = FILE.to_json()["branches"]["excluded"]
    assert row == [[2, 4, "unreachable", "nx_huge_active is never <passed>"],
                   [3, 4, "unreachable", "a wrong claim"], [6, -1, "defensive"]]
    assert FileBranches.from_json(json.loads(json.dumps(FILE.to_json()))) == FILE
    old = FILE.to_json()
    old["branches"]["excluded"] = [r[:3] for r in old["branches"]["excluded"]]  # before reasons
    assert FileBranches.from_json(old).reasons == {}
    plain = FileBranches("x86/spte.py", frozenset(), frozenset({1, 2, 3, 4}), frozenset(),
                         frozenset({(2, 3), (2, 4), (3, 4), (3, 5), (6, -1)}))
    assert plain.union(FILE).reasons == FILE.reasons == FILE.union(plain).reasons
    assert FILE.protocol.total == 2 and FILE.unreachable_executed == [(3, 4)]


def test_the_report_shows_the_reasons_and_flags_a_taken_marked_arc() -> None:
    report = CoverageReport().with_files([FILE])
    text = "\n".join(terminal_lines(report))
    assert "2 unreachable arcs" in text
    assert "MARKED UNREACHABLE BUT TAKEN (1" in text and "x86/spte.py:3->4" in text
    page = render_html(report)
    assert 'id="unreachable"' in page and "Marked unreachable (2 arcs" in page
    assert "nx_huge_active is never &lt;passed&gt;" in page  # escaped, listed with its arcs
    assert '<code>2&#8594;4</code></td><td class="why">nx_huge_active' in page
    assert "unreachable: 2&#8594;4</code> <span class=\"why\">nx_huge_active" in page  # missing
    assert 'class="bad">taken: 3&#8594;4' in page and "Marked unreachable but taken (1" in page
    quiet = CoverageReport().with_files([FileBranches(
        "x86/spte.py", frozenset(), frozenset(), frozenset(), frozenset({(2, 4)}),
        {(2, 4): "unreachable"}, {(2, 4): "never"})])
    assert "TAKEN" not in "\n".join(terminal_lines(quiet))
    assert 'class="bad"' not in render_html(quiet).split('id="branches"')[1]


def test_an_arc_taken_under_the_planted_bug_its_reason_names_is_not_flagged() -> None:
    """A campaign run with --kvmfuzz-bug takes the arcs marked "only with the planted bug X":
    the report says so instead of flagging a wrong marker; any other taken arc is still
    flagged, and the bug survives the JSON round trip."""
    planted = FileBranches("x86/fast_pf.py", frozenset({1, 2, 3}), frozenset(),
                           frozenset({(2, 3), (3, 4)}), frozenset(),
                           {(2, 3): "unreachable", (3, 4): "unreachable"},
                           {(2, 3): "true only with the planted bug fast_pf_marks_dirty_before_cmpxchg",
                            (3, 4): "a wrong claim"})
    run = Run("seed 0", 1.0, 1, 1, (), "fast_pf_marks_dirty_before_cmpxchg")
    report = CoverageReport(runs=(run,)).with_files([planted])
    assert CoverageReport.from_json(json.loads(json.dumps(report.to_json()))).runs == (run,)
    text = "\n".join(terminal_lines(report))
    assert "MARKED UNREACHABLE BUT TAKEN (1; a wrong marker): x86/fast_pf.py:3->4" in text
    assert "taken under the planted bug their reason names (1): x86/fast_pf.py:2->3" in text
    page = render_html(report)
    assert 'class="why">taken under the planted bug: 2&#8594;3' in page
    assert 'class="bad">taken: 3&#8594;4' in page
    # the same arcs in a run of the correct model (or of another bug): both flagged
    for other in (None, "fast_pf_without_cmpxchg"):
        again = CoverageReport(runs=(attrs.evolve(run, bug=other),)).with_files([planted])
        assert "MARKED UNREACHABLE BUT TAKEN (2" in "\n".join(terminal_lines(again))
