"""The report value: JSON round trip, merge = union (counts add), terminal table, HTML page
(sections, figures, well-formed, self-contained) and the files written."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import attrs

from kvmfuzz.campaign import CampaignResult
from kvmfuzz.coverage import (
    CoverageReport,
    FileBranches,
    area_rows,
    gaps,
    merge_files,
    merge_reports,
    render_html,
    terminal_lines,
    write_report,
)

FILE_A = FileBranches("x86/fault.py", frozenset({1, 2}), frozenset({3, 4}),
                      frozenset({(2, 3)}), frozenset({(2, 4), (4, -1)}))
FILE_B = FileBranches("x86/fault.py", frozenset({1, 4}), frozenset({2, 3}),
                      frozenset({(4, -1)}), frozenset({(2, 3), (2, 4)}))
FILE_C = FileBranches("virt/kvm.py", frozenset({7}), frozenset(), frozenset(), frozenset())


def _report(result: CampaignResult) -> CoverageReport:
    assert result.coverage is not None
    return result.coverage


def hits(counter: dict[Any, int]) -> set[Any]:
    return {k for k, n in counter.items() if n}


def test_json_round_trip(short_campaign: CampaignResult) -> None:
    report = _report(short_campaign).with_files([FILE_A, FILE_C])
    text = json.dumps(report.to_json(), sort_keys=True)
    again = CoverageReport.from_json(json.loads(text))
    assert again == report
    assert json.dumps(again.to_json(), sort_keys=True) == text  # deterministic
    summary = json.loads(text)["summary"]
    assert summary["areas"]["total"]["points"]["hit"] == area_rows(report)[-1].points.hit


def test_merge_is_the_union_and_counts_add(short_campaign: CampaignResult,
                                          other_campaign: CampaignResult) -> None:
    a = _report(short_campaign).with_files([FILE_A])
    b = _report(other_campaign).with_files([FILE_B, FILE_C])
    m = a.merge(b)
    for field in ("points", "outcomes", "pairs"):
        ca, cb, cm = getattr(a, field), getattr(b, field), getattr(m, field)
        assert hits(ca) <= hits(cm) and hits(cb) <= hits(cm)
        assert hits(cm) == hits(ca) | hits(cb)
        for key in cm:
            assert cm[key] == ca.get(key, 0) + cb.get(key, 0)
    assert [r.label for r in m.runs] == ["seed 1", "seed 7"]
    assert m.examples == a.examples + b.examples and m.steps == a.steps + b.steps
    assert m == b.merge(a) == merge_reports([b, a])
    assert m.files is not None
    fault = next(f for f in m.files if f.path == "x86/fault.py")
    assert fault.lines_executed == {1, 2, 4} and fault.lines_missing == {3}
    assert fault.branches_executed == {(2, 3), (4, -1)} and fault.branches_missing == {(2, 4)}
    assert [f.path for f in m.files] == ["virt/kvm.py", "x86/fault.py"]
    assert gaps(m).points == [k for k in gaps(a).points if k in gaps(b).points]


def test_merge_files_and_unmeasured() -> None:
    assert merge_files([FILE_A], [FILE_A]) == (FILE_A,)
    plain = CoverageReport()
    assert plain.merge(plain).files is None
    assert plain.merge(plain.with_files([FILE_C])).files == (FILE_C,)


def test_terminal_table(short_campaign: CampaignResult) -> None:
    report = _report(short_campaign)
    lines = terminal_lines(report)
    text = "\n".join(lines)
    total = area_rows(report)[-1]
    assert lines[0].startswith("kvmfuzz protocol coverage: 1 run(s)")
    assert "branch coverage off" in lines[0]
    for area in ("fault", "invalidate", "memslot", "attributes", "punch_hole", "dirty_log", "total"):
        assert any(line.startswith(area) for line in lines), area
    assert f"{total.points.hit}/{total.points.total}" in text
    assert "never reached (reachable in the model):" in text
    assert "MMU_LOCK_READ" in text and "impossible (not counted)" in text
    assert "UNEXPECTED" not in text


class _Page(HTMLParser):
    """Collects ids, text and tags; checks that non-void elements nest properly."""

    VOID = frozenset({"meta", "br", "line", "polyline", "link", "img", "hr", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()
        self.text: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs_:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href") and value:
                self.urls.append(value)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_sections_numbers_and_wellformedness(short_campaign: CampaignResult) -> None:
    report = _report(short_campaign).with_files([FILE_A, FILE_C])
    page = render_html(report)
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    assert {"summary", "areas", "over-time", "pairs", "unreached", "impossible",
            "branches"} <= parser.ids
    assert {"svg", "polyline", "table", "style"} <= parser.tags
    assert "script" not in parser.tags and parser.urls == []  # self-contained, no JS
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)
    text = " ".join(parser.text)
    total = area_rows(report)[-1]
    for ratio in (total.points, total.outcomes, total.pairs):
        assert f"{ratio.hit}/{ratio.total}" in text
    assert f"{total.points.percent:.1f}%" in text
    assert "x86/fault.py" in text and "2&#8594;4, 4&#8594;exit" in page and "2&#8594;3" not in page
    for key in gaps(report).points:
        assert key in text


def test_write_report(tmp_path: Path, short_campaign: CampaignResult) -> None:
    json_path, html_path = write_report(_report(short_campaign), tmp_path / "out")
    assert json_path == tmp_path / "out" / "coverage.json"
    assert html_path == tmp_path / "out" / "index.html"
    assert CoverageReport.load(json_path) == _report(short_campaign)
    assert html_path.read_text().startswith("<!DOCTYPE html>")


def test_load_rejects_other_documents(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"format": "kvmfuzz-schedule/1"}))
    try:
        CoverageReport.load(path)
    except ValueError as exc:
        assert "kvmfuzz-coverage/1" in str(exc)
    else:
        raise AssertionError("loaded a schedule as a coverage report")
    assert attrs.evolve(CoverageReport(), runs=()).examples == 0


def test_a_campaign_records_its_planted_bug(short_campaign: CampaignResult) -> None:
    """The report knows which planted bug a run had (its markers' reasons may name it)."""
    from kvmfuzz.campaign import run_campaign
    assert [r.bug for r in _report(short_campaign).runs] == [None]
    calib = run_campaign(0.5, seed=0, bug="calib_no_memslot_optimisation", database="none")
    assert [r.bug for r in _report(calib).runs] == ["calib_no_memslot_optimisation"]
