"""Collection: a short campaign produces a report with hits, consistent with the machine's own
statistics and inside the closed tables; hand-written schedules produce the derived outcomes
(memslot update x in-flight fault holding SRCU, attribute change x mapping) and pairs."""

from __future__ import annotations

from typing import Any

from kvmfuzz.campaign import CampaignResult
from kvmfuzz.config import VmConfig
from kvmfuzz.coverage import INPUT_EVENTS, CoverageCollector, gaps, universe
from kvmfuzz.driver import Driver, SlotSpec

SLOT0 = SlotSpec(slot=0, base_gfn=0, npages=16, hva_offset=0)


def hits(counter: dict[Any, int]) -> set[Any]:
    return {k for k, n in counter.items() if n}


def test_short_campaign_has_hits(short_campaign: CampaignResult) -> None:
    report = short_campaign.coverage
    assert report is not None
    assert hits(report.points) and hits(report.outcomes) and hits(report.pairs)
    (run,) = report.runs
    assert run.label == "seed 1"
    assert run.examples == short_campaign.stats.examples > 0
    assert run.steps == short_campaign.stats.steps > 0
    assert run.samples and run.samples[-1].examples == run.examples
    for a, b in zip(run.samples, run.samples[1:], strict=False):
        assert a.examples <= b.examples and a.points <= b.points and a.pairs <= b.pairs
    assert run.samples[-1].points == sum(1 for k in universe().reachable_sites() if report.points.get(k))


def test_campaign_stays_inside_the_tables(short_campaign: CampaignResult) -> None:
    """Nothing declared impossible was hit and every event is known (else fix the tables)."""
    report = short_campaign.coverage
    assert report is not None
    assert gaps(report).unexpected == []
    assert report.unknown == {}


def test_collector_agrees_with_the_machine_stats(short_campaign: CampaignResult) -> None:
    report = short_campaign.coverage
    assert report is not None
    stats = short_campaign.stats
    seen_points = {key.split("@")[1] for key in hits(report.points)}
    assert {p for p in stats.points if p != "DONE"} <= seen_points
    counted = set(report.outcomes) | set(report.unknown)
    for label in stats.events:  # the events the machine drained (teardown's are extra)
        assert label in counted or label in INPUT_EVENTS, label


def _driver(config: VmConfig, collector: CoverageCollector) -> Driver:
    d = Driver(config, (SLOT0,))
    d.observe = collector.on_step
    return d


def _run_until(d: Driver, actor: str, point: str) -> None:
    for _ in range(80):
        if d.run_actor(actor).reached == point:
            return
    raise AssertionError(f"{actor} never reached {point}")


def test_memslot_delete_under_an_inflight_fault() -> None:
    """A DELETE whose synchronize_srcu() meets a vCPU fault stopped at FAULT_PFN_RESOLVED."""
    col = CoverageCollector(emit_events=False)
    d = _driver(VmConfig(nr_vcpus=1), col)
    d.start("access", "vcpu0", gfn=1, write=False, private=False)
    _run_until(d, "vcpu0", "FAULT_PFN_RESOLVED")
    d.start("memslot", "vmm0", slot=0, as_id=0, flags=0, gfn=0, npages=0, hva=0, gmem_offset=-1)
    _run_until(d, "vmm0", "SYNCHRONIZE_SRCU")
    d.finish()
    col.finish_example()
    report = col.report("hand-written")
    assert report.outcomes.get("memslot.DELETE.quiet.fault-srcu") == 1
    assert report.outcomes.get("srcu.waited")
    assert report.pairs.get(("fault@FAULT_PFN_RESOLVED", "memslot"))
    assert report.pairs.get(("memslot@SYNCHRONIZE_SRCU", "fault"))
    assert report.points.get("memslot@SYNCHRONIZE_SRCU")
    assert report.runs[0].examples == 1 and report.runs[0].steps == len(
        [s for s in d.steps if s.do == "run"])


def test_attribute_conversion_classified_by_what_it_zapped() -> None:
    for thp, expected in ((True, "attr.to_private.huge"), (False, "attr.to_private.mapped")):
        col = CoverageCollector(emit_events=False)
        d = _driver(VmConfig(nr_vcpus=1, private_mem=True, thp=thp), col)
        d.start("access", "vcpu0", gfn=1, write=True, private=False)
        d.finish()
        d.start("set_attributes", "vmm0", start=1, end=2, private=True)
        d.finish()
        col.finish_example()
        outcomes = col.report("x").outcomes
        assert outcomes.get(expected) == 1, (thp, outcomes)
        assert "attr.to_private.slot" not in outcomes  # an input, reported refined


def test_access_results_become_exits() -> None:
    col = CoverageCollector(emit_events=False)
    d = _driver(VmConfig(nr_vcpus=1), col)
    d.start("access", "vcpu0", gfn=100, write=False, private=False)  # no memslot: MMIO
    d.finish()
    col.finish_example()
    assert col.report("x").outcomes.get("exit.mmio") == 1
