"""The loader against generated garbage and mutations of real corpus files: every input either
loads (and then replays, strictly and leniently, to a result or an InvalidSchedule) or is
rejected with an InvalidSchedule naming the file — never another exception."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmfuzz.config import VmConfig
from kvmfuzz.corpus import corpus_files, load, loads, make_schedule, replay
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import InvalidSchedule, ProtocolViolation

CORPUS = Path(__file__).resolve().parents[2] / "corpus"


def _seed_documents() -> list[dict[str, Any]]:
    docs = [load(p).to_json() for p in corpus_files(CORPUS)] if CORPUS.is_dir() else []
    d = Driver(VmConfig(bug="fault_leaks_page_ref"), (SlotSpec(0, 0, 16, 0),))
    d.start("access", "vcpu0", gfn=1, write=True, private=False)
    try:
        for _ in range(50):
            d.run_actor("vcpu0")
    except ProtocolViolation as exc:
        docs.append(make_schedule(d, exc, bug="fault_leaks_page_ref", seed=None).to_json())
    return docs


DOCS = _seed_documents()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20) | st.sampled_from(["DONE", "vcpu0", "mm0", "access", "run", "start",
                                            "kvmfuzz-schedule/1", "FAULT_GUP"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)


def _check(text: str | bytes) -> None:
    try:
        schedule = loads(text, "fuzz.json")
    except InvalidSchedule as exc:
        assert exc.file == "fuzz.json" and exc.expected, exc
        return
    for bug in {schedule.bug, None}:
        try:
            replay(schedule, bug, file="fuzz.json")
        except InvalidSchedule as exc:
            assert exc.file == "fuzz.json" and exc.expected, exc


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=200) | json_values.map(json.dumps))
def test_garbage(text: str | bytes) -> None:
    _check(text)


@st.composite
def mutations(draw: st.DrawFn) -> str:
    doc = json.loads(json.dumps(draw(st.sampled_from(DOCS))))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "drop-step", "swap-steps", "dup-step", "cut", "del-key"]))
        steps = doc.get("steps") if isinstance(doc, dict) else None
        if kind == "cut":
            text = json.dumps(doc)
            return text[:draw(st.integers(0, len(text)))]
        if not isinstance(steps, list) or not steps:
            continue
        i = draw(st.integers(0, len(steps) - 1))
        if kind == "drop-step":
            del steps[i]
        elif kind == "dup-step":
            steps.insert(i, steps[i])
        elif kind == "swap-steps":
            j = draw(st.integers(0, len(steps) - 1))
            steps[i], steps[j] = steps[j], steps[i]
        elif kind == "del-key" and isinstance(steps[i], dict) and steps[i]:
            del steps[i][draw(st.sampled_from(sorted(steps[i])))]
        elif kind == "set":
            target: Any = draw(st.sampled_from(["step", "config", "slot", "metadata"]))
            obj = {"step": steps[i], "config": doc.get("config"), "metadata": doc.get("metadata"),
                   "slot": (doc.get("slots") or [None])[0]}[target]
            if isinstance(obj, dict) and obj:
                key = draw(st.sampled_from(sorted(obj)))
                obj[key] = draw(json_values | st.integers(-3, 300) | st.sampled_from(
                    ["vcpu1", "vcpu3", "mm1", "vmm0", "memslot", "DONE", "FAULT_GUP", "HOST_PTE_CHANGE"]))
    return json.dumps(doc)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutations())
def test_mutated_corpus_files(text: str) -> None:
    _check(text)
