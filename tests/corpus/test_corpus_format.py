"""Corpus files: the versioned JSON format, atomic save, strict and lenient replay, and bad input
(every problem an InvalidSchedule naming the file, the step and the expectation)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from kvmfuzz import corpus
from kvmfuzz.config import VmConfig
from kvmfuzz.corpus import FORMAT, Schedule, load, loads, make_schedule, replay, save
from kvmfuzz.driver import Driver, SlotSpec
from kvmfuzz.errors import InvalidSchedule, ProtocolViolation

BUG = "fault_leaks_page_ref"


def leak_schedule() -> Schedule:
    """A vCPU write fault on the leaking variant: I10-pin-leak when it returns."""
    d = Driver(VmConfig(bug=BUG), (SlotSpec(0, 0, 16, 0),))
    d.start("access", "vcpu0", gfn=1, write=True, private=False)
    with pytest.raises(ProtocolViolation) as info:
        for _ in range(50):
            d.run_actor("vcpu0")
    return make_schedule(d, info.value, bug=BUG, seed=None)


def test_round_trip_and_strict_replay(tmp_path: Path) -> None:
    s = leak_schedule()
    assert s.title == "I10-pin-leak" and s.steps[-1].reached == "DONE"
    path, written = save(s, tmp_path)
    assert written and path.name == s.file_name() == "fault_leaks_page_ref--i10-pin-leak--access-done.json"
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["metadata"]["bug"] == BUG
    assert data["metadata"]["violation"]["title"] == "I10-pin-leak" and "bug" not in data["config"]
    again = load(path)
    assert again.to_json() == s.to_json()
    r = replay(again, BUG, file=str(path))
    assert r.strict and r.reproduced and r.violation_step == len(s.steps) - 1
    clean = replay(again, None, file=str(path))
    assert not clean.strict and clean.violation is None


def test_save_keeps_the_shorter_and_leaves_no_temp_file(tmp_path: Path) -> None:
    s = leak_schedule()
    path, _ = save(s, tmp_path)
    longer = attrs.evolve(s, steps=(*s.steps[:1], *s.steps))
    assert save(longer, tmp_path) == (path, False)
    assert len(load(path).steps) == len(s.steps)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: Any, dst: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(leak_schedule(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_drift_names_file_step_and_expectation(tmp_path: Path) -> None:
    s = leak_schedule()
    data = s.to_json()
    data["steps"][3]["reached"] = "FAULT_GMEM_GET_PFN"  # a real point, not the one it reaches
    drifted = corpus.from_json(data, "drift.json")
    with pytest.raises(InvalidSchedule) as info:
        replay(drifted, BUG, file="drift.json")
    e = info.value
    assert e.file == "drift.json" and e.step == 3 and e.expected == "to reach FAULT_GMEM_GET_PFN"
    assert "reached FAULT_SEQ_SNAPSHOT" in str(e)


def _mutate(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(data))
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD: list[tuple[str, tuple[Any, ...], Any, int | None, str]] = [
    ("unknown-version", ("format",), "kvmfuzz-schedule/2", None, "kvmfuzz-schedule/1"),
    ("no-format", ("format",), KeyError, None, "kvmfuzz-schedule/1"),
    ("unknown-point", ("steps", 2, "reached"), "FAULT_NOWHERE", 2, "Point name"),
    ("unknown-actor", ("steps", 1, "actor"), "vcpu7", 1, "one of vcpu0"),
    ("wrong-actor-kind", ("steps", 0, "actor"), "mm0", 0, "a vcpu actor"),
    ("unknown-op", ("steps", 0, "op"), "teleport", 0, "one of access"),
    ("unknown-do", ("steps", 1, "do"), "jump", 1, "\"do\""),
    ("gfn-out-of-range", ("steps", 0, "gfn"), 1 << 40, 0, "an integer in [0, "),
    ("gfn-negative", ("steps", 0, "gfn"), -1, 0, "an integer in [0, "),
    ("bool-as-int", ("steps", 0, "write"), 1, 0, "true or false"),
    ("missing-arg", ("steps", 0, "gfn"), KeyError, 0, "exactly ['gfn'"),
    ("step-not-object", ("steps", 1), [1, 2], 1, "an object"),
    ("missing-reached-midway", ("steps", 2, "reached"), KeyError, 2, "only the last step"),
    ("config-type", ("config", "nr_vcpus"), "two", None, "a int"),
    ("config-range", ("config", "nr_vcpus"), 9, None, "a valid VmConfig"),
    ("config-huge-geometry", ("config", "level_bits"), 9, None, "at most 65536 gfns"),
    ("config-unknown-key", ("config", "warp"), 1, None, "keys among"),
    ("slot-out-of-range", ("slots", 0, "npages"), 1 << 20, None, "a new slot id"),
    ("metadata-unknown-bug", ("metadata", "bug"), "no_such_bug", None, "planted bug"),
    ("title-missing", ("title",), KeyError, None, "title"),
]


@pytest.mark.parametrize(("case", "path", "value", "step", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_invalid_schedule(case: str, path: tuple[Any, ...], value: Any,
                                          step: int | None, expected: str) -> None:
    data = _mutate(leak_schedule().to_json(), path, value)
    with pytest.raises(InvalidSchedule) as info:
        loads(json.dumps(data), f"{case}.json")
    e = info.value
    assert e.file == f"{case}.json" and e.step == step
    assert e.expected is not None and expected in e.expected, (str(e), e.expected)


@pytest.mark.parametrize("text", ["", "{", '{"format": "kvmfuzz-schedule/1", "steps": [', "[]",
                                  "null", "\x00\xff", '{"format": "kvmfuzz-schedule/1"}'])
def test_truncated_or_malformed(text: str) -> None:
    with pytest.raises(InvalidSchedule) as info:
        loads(text.encode("latin-1"), "bad.json")
    assert info.value.file == "bad.json" and info.value.expected


def test_truncated_real_file_at_every_length(tmp_path: Path) -> None:
    text = leak_schedule().dumps()
    for n in range(0, len(text) - 2, 7):  # the complete text minus its final "}\n" is invalid too
        with pytest.raises(InvalidSchedule):
            loads(text[:n], "cut.json")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidSchedule) as info:
        load(tmp_path / "missing.json")
    assert info.value.file is not None and info.value.file.endswith("missing.json")


def test_corpus_files_skip_temporary_files(tmp_path: Path) -> None:
    path, _ = save(leak_schedule(), tmp_path)
    (tmp_path / f".{path.name}.abc.tmp").write_text("{")
    assert corpus.corpus_files(tmp_path) == [path]


def test_corpus_module_imports_no_hypothesis() -> None:
    import subprocess
    import sys
    code = ("import sys, kvmfuzz.corpus, kvmfuzz.timeline, kvmfuzz.cli; "
            "sys.exit('hypothesis' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ}).returncode == 0
