"""Saved schedules: the ``Schedule`` value, versioned JSON load/save, replay without Hypothesis.

A corpus file (architecture §5) is one JSON object::

    {"format": "kvmfuzz-schedule/1", "title": "I1-no-mapping-in-closed-range",
     "config": {...VmConfig without its bug...}, "slots": [{...SlotSpec...}],
     "steps": [{"do": "start", "actor": "vcpu0", "op": "access", "gfn": 5, ...},
               {"do": "run", "actor": "vcpu0", "reached": "FAULT_SEQ_SNAPSHOT"}, ...],
     "metadata": {"kvmfuzz": "0.1.0", "seed": 3, "bug": "skip_is_page_fault_stale",
                  "created": "2025-01-31", "signature": "...",
                  "violation": {"title": "...", "message": "..."}}}

Names are resolved (actor names, operation names, ``kvmfuzz.points.Point`` names), never raw
Hypothesis draws. The actors are ``vcpu0``.. (``config.nr_vcpus``), ``mm0``, ``mm1`` and the VMM
threads ``vmm0``, ``vmm1`` and, in a WeavingMachine schedule, ``vmm2``: replay builds a VM with
two VMM threads unless a step names the third (``Schedule.nr_vmm``), so a file that names only
``vmm0`` / ``vmm1`` replays exactly as before the third existed. ``reached`` is a Point name or
``DONE`` (the operation returned); the last step of a schedule may be a "run" without
``reached``: the operation raised the violation inside that step. Every problem with a file is
an ``InvalidSchedule`` naming the file, the step (its index in ``steps``) and what was expected.

Replay drives a fresh ``Driver``. On the model the schedule was recorded on (its bug) replay is
*strict*: every recorded ``reached`` point is checked and a drifted schedule is an
InvalidSchedule. On another model (typically the correct one, ``bug=None``) it is *lenient*:
the recorded starts run in order, each recorded run step runs its actor while that actor is
runnable, an actor still busy when the schedule starts its next operation is run to the end
first, and teardown (``Driver.finish``) completes the rest; the first step that did not go as
recorded is reported as ``diverged_at``.

This module imports no Hypothesis: replay and the CLI work without it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import tempfile
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import attrs

from kvmfuzz import driver as _driver
from kvmfuzz.bugs import BY_NAME
from kvmfuzz.config import VmConfig
from kvmfuzz.driver import MAX_VMM_ACTORS, NR_MM_ACTORS, NR_VMM_ACTORS, OPS, Driver, SlotSpec, Step
from kvmfuzz.errors import InvalidArgument, InvalidSchedule, ProtocolViolation
from kvmfuzz.points import Point
from kvmfuzz.virt.kvm import KVM_USER_MEM_SLOTS

FORMAT = "kvmfuzz-schedule/1"
DONE = "DONE"
POINT_NAMES: frozenset[str] = frozenset(p.name for p in Point) | {DONE}
MAX_GFN_LIMIT = 1 << 16  # the model maps every gfn and hva page: keep files replayable
MAX_STEPS = 100_000
TEARDOWN_STEPS = 20_000

# argument -> (type, what it indexes); ranges are checked against the config's geometry
# arguments added to an operation after files were written: absent means this default
OPTIONAL_ARGS: dict[str, dict[str, Any]] = getattr(_driver, "OPTIONAL_ARGS", {})
_BOOL_ARGS = frozenset({"write", "private", "writable", "exec", "initially_set"} | {
    name for args in OPTIONAL_ARGS.values() for name, v in args.items() if isinstance(v, bool)})
_SLOT_FLAGS = 0x3  # KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY (GUEST_MEMFD from gmem_offset)
_MEMSLOT_FLAGS = 0x7


def kvmfuzz_version() -> str:
    try:
        return importlib_metadata.version("kvmfuzz")
    except importlib_metadata.PackageNotFoundError:  # pragma: no cover - running from a tree
        return "unknown"


@attrs.frozen
class Metadata:
    """Where a schedule came from (not needed to replay it)."""

    kvmfuzz: str | None = None
    seed: int | None = None
    bug: str | None = None
    created: str | None = None
    signature: str | None = None
    violation_title: str | None = None
    violation_message: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kvmfuzz": self.kvmfuzz, "seed": self.seed, "bug": self.bug,
                               "created": self.created, "signature": self.signature}
        out["violation"] = (None if self.violation_title is None else
                            {"title": self.violation_title, "message": self.violation_message})
        if self.note is not None:
            out["note"] = self.note
        return out


@attrs.frozen
class Schedule:
    """One replayable schedule: a VM configuration, its initial memslots and the steps."""

    title: str
    config: VmConfig  # always with bug=None: the bug is metadata, chosen again at replay
    slots: tuple[SlotSpec, ...]
    steps: tuple[Step, ...]
    meta: Metadata = Metadata()

    @property
    def bug(self) -> str | None:
        return self.meta.bug

    @property
    def nr_vmm(self) -> int:
        """The VMM threads the VM needs: the default two, or as many as the steps name (a
        WeavingMachine schedule may use a third; an idle thread changes nothing)."""
        used = [int(s.actor[3:]) + 1 for s in self.steps if s.actor.startswith("vmm")]
        return max([NR_VMM_ACTORS, *used])

    @property
    def actors(self) -> list[str]:
        return actor_names(self.config, self.nr_vmm)

    def driver(self, bug: str | None) -> Driver:
        """A fresh ``Driver`` for this schedule on the model with planted ``bug``."""
        return Driver(attrs.evolve(self.config, bug=bug), self.slots, nr_vmm=self.nr_vmm)

    def to_json(self) -> dict[str, Any]:
        config = self.config.to_json()
        del config["bug"]
        return {"format": FORMAT, "title": self.title, "config": config,
                "slots": [s.to_json() for s in self.slots],
                "steps": [s.to_json() for s in self.steps], "metadata": self.meta.to_json()}

    def dumps(self) -> str:
        """Readable, stable JSON: one line per slot and per step."""
        data = self.to_json()
        lines = ["{"]
        for key in ("format", "title", "config"):
            lines.append(f"  {json.dumps(key)}: {json.dumps(data[key])},")
        for key in ("slots", "steps"):
            items = data[key]
            if not items:
                lines.append(f"  {json.dumps(key)}: [],")
                continue
            lines.append(f"  {json.dumps(key)}: [")
            lines.extend(f"    {json.dumps(item)}," for item in items[:-1])
            lines.append(f"    {json.dumps(items[-1])}")
            lines.append("  ],")
        lines.append(f"  \"metadata\": {json.dumps(data['metadata'], indent=2)}".replace("\n", "\n  "))
        lines.append("}")
        return "\n".join(lines) + "\n"

    @property
    def signature(self) -> str:
        return signature(self.title, self.steps)

    def file_name(self) -> str:
        """A stable name from the signature (and the bug the schedule was found on)."""
        op, point = where(self.steps)
        raw = f"{self.bug or 'correct'}--{self.title}--{op}-{point}"
        return re.sub(r"[^a-z0-9_.-]+", "-", raw.lower()).strip("-") + ".json"


def actor_names(config: VmConfig, nr_vmm: int = NR_VMM_ACTORS) -> list[str]:
    """The actors of a VM built from ``config`` with ``nr_vmm`` VMM threads, in the scheduler's
    stable order."""
    return ([f"vcpu{i}" for i in range(config.nr_vcpus)] + [f"mm{i}" for i in range(NR_MM_ACTORS)]
            + [f"vmm{i}" for i in range(nr_vmm)])


def where(steps: Sequence[Step]) -> tuple[str, str]:
    """Where in the protocol a schedule ends: (the operation of its last step, the point
    reached, ``raised`` when the operation raised inside the step)."""
    if not steps:
        return "-", "-"
    last = steps[-1]
    if last.do == "start":
        return last.op or "-", "start"
    op = "-"
    for s in reversed(steps):
        if s.do == "start" and s.actor == last.actor:
            op = s.op or "-"
            break
    return op, last.reached or "raised"


def signature(title: str, steps: Sequence[Step]) -> str:
    """A failure's identity in a campaign: the invariant's title plus where it broke."""
    op, point = where(steps)
    return f"{title}@{op}:{point}"


# -- loading ---------------------------------------------------------------------------------

def loads(text: str | bytes, file: str = "<schedule>") -> Schedule:
    """Parse and validate a corpus file's text; any problem is an InvalidSchedule."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as exc:
        raise InvalidSchedule(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=file,
                              expected=f"a {FORMAT} JSON file") from None
    except json.JSONDecodeError as exc:
        raise InvalidSchedule(f"not valid JSON (truncated or malformed): {exc.msg} at line "
                              f"{exc.lineno} column {exc.colno}", file=file,
                              expected=f"a {FORMAT} JSON object") from None
    except RecursionError:
        raise InvalidSchedule("JSON nested too deeply", file=file,
                              expected=f"a {FORMAT} JSON object") from None
    return from_json(data, file)


def load(path: str | os.PathLike[str]) -> Schedule:
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise InvalidSchedule(f"cannot read: {exc.strerror or exc}", file=name,
                              expected="a readable corpus file") from None
    return loads(raw, name)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def from_json(data: Any, file: str = "<schedule>") -> Schedule:
    """Validate a decoded corpus object (see the module docstring for the format)."""

    def bad(message: str, expected: str, step: int | None = None) -> InvalidSchedule:
        return InvalidSchedule(message, file=file, step=step, expected=expected)

    if not isinstance(data, dict):
        raise bad(f"top level is a {_type_name(data)}", f"a {FORMAT} JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise bad(f"unknown format {fmt!r}" if fmt is not None else "no \"format\" key",
                  f"\"format\": \"{FORMAT}\"")
    unknown = sorted(set(data) - {"format", "title", "config", "slots", "steps", "metadata"})
    if unknown:
        raise bad(f"unknown keys {unknown}", "format, title, config, slots, steps, metadata")
    title = data.get("title")
    if not isinstance(title, str) or not title:
        raise bad(f"title is {_type_name(title)}", "a non-empty string title")
    config = _config(data.get("config"), bad)
    slots = _slots(data.get("slots"), config, bad)
    meta = _metadata(data.get("metadata", {}), bad)
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list):
        raise bad(f"steps is {_type_name(raw_steps)}", "a list of steps")
    if len(raw_steps) > MAX_STEPS:
        raise bad(f"{len(raw_steps)} steps", f"at most {MAX_STEPS} steps")
    actors = actor_names(config, MAX_VMM_ACTORS)  # (a schedule may name up to the maximum)
    steps = tuple(_step(raw, i, i == len(raw_steps) - 1, config, actors, bad)
                  for i, raw in enumerate(raw_steps))
    return Schedule(title, config, slots, steps, meta)


def _config(raw: Any, bad: Any) -> VmConfig:
    if not isinstance(raw, dict):
        raise bad(f"config is {_type_name(raw)}", "a VmConfig object")
    fields = {f.name: f for f in attrs.fields(VmConfig) if f.name != "bug"}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise bad(f"unknown config keys {unknown}", f"keys among {sorted(fields)}")
    for key, value in raw.items():
        default = fields[key].default
        want = bool if isinstance(default, bool) else int
        if (want is bool and not isinstance(value, bool)) or (want is int and not _is_int(value)):
            raise bad(f"config.{key} is {value!r}", f"a {want.__name__}")
        if want is int and not -1 <= value <= 1000:
            raise bad(f"config.{key} is {value}", "a small integer")
    try:
        config = VmConfig(**raw)
    except (InvalidArgument, ValueError, TypeError) as exc:
        raise bad(f"config: {exc}", "a valid VmConfig") from None
    if config.geometry.max_gfn > MAX_GFN_LIMIT:
        raise bad(f"config: level_bits {config.level_bits} / root_level {config.root_level} give "
                  f"{config.geometry.max_gfn} gfns", f"at most {MAX_GFN_LIMIT} gfns")
    if not 1 <= config.max_fault_retries <= 1000:
        raise bad(f"config.max_fault_retries is {config.max_fault_retries}", "1..1000")
    return config


def _slots(raw: Any, config: VmConfig, bad: Any) -> tuple[SlotSpec, ...]:
    if not isinstance(raw, list):
        raise bad(f"slots is {_type_name(raw)}", "a list of initial memslots")
    max_gfn = config.geometry.max_gfn
    names = [f.name for f in attrs.fields(SlotSpec)]
    out: list[SlotSpec] = []
    for i, item in enumerate(raw):
        what = f"slots[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{what} is {_type_name(item)}", f"an object with {names}")
        if set(item) - set(names):
            raise bad(f"{what} has unknown keys {sorted(set(item) - set(names))}", f"keys {names}")
        for key in names:
            if key in ("flags", "gmem_offset") and key not in item:
                continue
            if not _is_int(item.get(key)):
                raise bad(f"{what}.{key} is {item.get(key)!r}", "an integer")
        spec = SlotSpec(**item)
        in_range = (0 <= spec.slot < KVM_USER_MEM_SLOTS and spec.npages >= 1
                    and spec.base_gfn >= 0 and spec.base_gfn + spec.npages <= max_gfn
                    and spec.hva_offset >= 0 and spec.hva_offset + spec.npages <= max_gfn
                    and spec.flags & ~_SLOT_FLAGS == 0 and spec.gmem_offset >= -1
                    and (spec.gmem_offset < 0 or spec.gmem_offset + spec.npages <= max_gfn))
        if not in_range or any(s.slot == spec.slot for s in out):
            raise bad(f"{what} out of range: {spec}",
                      f"a new slot id < {KVM_USER_MEM_SLOTS}, 1+ pages inside the {max_gfn} gfns "
                      f"and hva pages, flags within {_SLOT_FLAGS:#x}, gmem_offset -1 or in range")
        if spec.gmem_offset >= 0 and not config.private_mem:
            raise bad(f"{what} is a guest_memfd slot", "private_mem in the config")
        out.append(spec)
    return tuple(out)


def _metadata(raw: Any, bad: Any) -> Metadata:
    if not isinstance(raw, dict):
        raise bad(f"metadata is {_type_name(raw)}", "an object")
    known = {"kvmfuzz", "seed", "bug", "created", "signature", "violation", "note"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise bad(f"unknown metadata keys {unknown}", f"keys among {sorted(known)}")
    for key in ("kvmfuzz", "bug", "created", "signature", "note"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise bad(f"metadata.{key} is {raw[key]!r}", "a string or null")
    seed = raw.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad(f"metadata.seed is {seed!r}", "an integer or null")
    bug = raw.get("bug")
    if bug is not None and bug not in BY_NAME:
        raise bad(f"metadata.bug {bug!r} is not a planted bug",
                  f"null or a planted bug: one of {', '.join(sorted(BY_NAME))}")
    violation = raw.get("violation")
    v_title = v_message = None
    if violation is not None:
        if (not isinstance(violation, dict) or set(violation) - {"title", "message"}
                or not isinstance(violation.get("title"), str)
                or not isinstance(violation.get("message", ""), str)):
            raise bad(f"metadata.violation is {violation!r}", "null or {\"title\": str, \"message\": str}")
        v_title, v_message = violation["title"], violation.get("message")
    return Metadata(raw.get("kvmfuzz"), seed, bug, raw.get("created"), raw.get("signature"),
                    v_title, v_message, raw.get("note"))


def _arg_range(op: str, name: str, config: VmConfig) -> tuple[int, int]:
    """Inclusive bounds of an integer argument (generous for arguments this loader does not
    know: the driver and the model check those when the schedule runs)."""
    m = config.geometry.max_gfn
    if name == "slot":
        return 0, KVM_USER_MEM_SLOTS - 1
    if name == "as_id":
        return 0, 1
    if name == "flags":
        return 0, _MEMSLOT_FLAGS
    if name == "gmem_offset":
        return -1, m - 1
    if name == "npages":
        return (0 if op == "memslot" else 1), m
    if name in ("start", "end", "first", "num"):
        return 0, m
    if name in ("gfn", "hva"):
        return 0, m - 1
    return 0, (1 << 64) - 1  # e.g. a dirty-bitmap mask


def _step(raw: Any, i: int, last: bool, config: VmConfig, actors: list[str], bad: Any) -> Step:
    if not isinstance(raw, dict):
        raise bad(f"step is {_type_name(raw)}", "an object with \"do\" and \"actor\"", i)
    do, actor = raw.get("do"), raw.get("actor")
    if do not in ("start", "run"):
        raise bad(f"unknown step kind {do!r}", "\"do\": \"start\" or \"run\"", i)
    if not isinstance(actor, str) or actor not in actors:
        raise bad(f"unknown actor {actor!r}", f"one of {', '.join(actors)}", i)
    if do == "run":
        extra = sorted(set(raw) - {"do", "actor", "reached"})
        if extra:
            raise bad(f"unknown keys {extra} in a run step", "do, actor, reached", i)
        reached = raw.get("reached")
        if reached is None and "reached" not in raw and last:
            return Step("run", actor)
        if not isinstance(reached, str) or reached not in POINT_NAMES:
            raise bad(f"unknown point {reached!r}", "a kvmfuzz.points.Point name or DONE"
                      + (" (only the last step may omit it)" if "reached" not in raw else ""), i)
        return Step("run", actor, reached=reached)
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise bad(f"unknown operation {op!r}", f"one of {', '.join(OPS)}", i)
    kind, names = OPS[op]
    if not actor.startswith(kind) or not actor[len(kind):].isdigit():
        raise bad(f"{op} on {actor}", f"a {kind} actor", i)
    given = set(raw) - {"do", "actor", "op"}
    optional = OPTIONAL_ARGS.get(op, {})
    if given - set(names) or set(names) - given - set(optional):
        raise bad(f"{op} arguments {sorted(given)}", f"exactly {list(names)}"
                  + (f" ({', '.join(optional)} optional)" if optional else ""), i)
    args: list[tuple[str, Any]] = []
    for name in names:
        value: Any = raw.get(name, optional.get(name))
        if name in _BOOL_ARGS:
            if not isinstance(value, bool):
                raise bad(f"{name} is {value!r}", "true or false", i)
        else:
            lo, hi = _arg_range(op, name, config)
            if not _is_int(value) or not lo <= value <= hi:
                raise bad(f"{name} is {value!r}", f"an integer in [{lo}, {hi}]", i)
        args.append((name, value))
    given_args: dict[str, Any] = dict(args)
    if op in ("set_attributes", "punch_hole") and not given_args["start"] < given_args["end"]:
        raise bad(f"range [{given_args['start']}, {given_args['end']})", "start < end", i)
    return Step("start", actor, op, tuple(args))


# -- saving ----------------------------------------------------------------------------------

def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and os.replace:
    readers (and an interrupted writer) never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 is for secrets; a corpus file is for sharing
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save(schedule: Schedule, directory: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Save under ``directory`` with the schedule's stable name. An existing file of the same
    name is kept when it is at least as short (returns its path and False)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / schedule.file_name()
    if path.exists():
        try:
            old = load(path)
        except InvalidSchedule:
            old = None
        if old is not None and len(old.steps) <= len(schedule.steps):
            return path, False
    write_atomic(path, schedule.dumps())
    return path, True


def corpus_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The corpus files of a directory (recursively), sorted; temporary files excluded."""
    root = Path(directory)
    return sorted(p for p in root.rglob("*.json") if not p.name.startswith("."))


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_schedule(driver: Driver, violation: ProtocolViolation, *, bug: str | None,
                  seed: int | None, steps: Sequence[Step] | None = None) -> Schedule:
    """The schedule of a failing run: the driver's steps up to the violation."""
    kept = tuple(driver.failed_steps if steps is None else steps)
    meta = Metadata(kvmfuzz_version(), seed, bug, today(), signature(violation.title, kept),
                    violation.title, str(violation))
    return Schedule(violation.title, attrs.evolve(driver.config, bug=None), tuple(driver.slots),
                    kept, meta)


# -- replay ----------------------------------------------------------------------------------

@attrs.define(eq=False)
class ReplayResult:
    """What a replay did. ``violation_step``: the index of the step at which the violation
    fired (``len(steps)`` when in teardown); ``diverged_at``: lenient replay's first step that
    did not go as recorded."""

    schedule: Schedule
    bug: str | None
    strict: bool
    driver: Driver
    violation: ProtocolViolation | None = None
    violation_step: int | None = None
    diverged_at: int | None = None

    @property
    def trace(self) -> list[str]:
        return [str(t) for t in self.driver.vm.sched.trace]

    @property
    def reproduced(self) -> bool:
        """The recorded violation fired again (same title)."""
        return (self.violation is not None and self.schedule.meta.violation_title is not None
                and self.violation.title == self.schedule.meta.violation_title)

    def outcome(self) -> str:
        """One line: the violation (or clean) and the trace digest, for determinism checks."""
        v = "clean" if self.violation is None else f"{self.violation_step}: {self.violation}"
        return f"{v} | " + " ; ".join(self.trace)


def replay(schedule: Schedule, bug: str | None, *, file: str | None = None,
           strict: bool | None = None) -> ReplayResult:
    """Run ``schedule`` on the model with planted ``bug`` (None: the correct model).

    Strict (default when ``bug`` is the recorded one): every recorded point is checked; drift
    is an InvalidSchedule. Lenient otherwise (see the module docstring)."""
    if bug is not None and bug not in BY_NAME:
        raise InvalidArgument(f"unknown planted bug {bug!r}; known: {', '.join(sorted(BY_NAME))}")
    strict = (bug == schedule.bug) if strict is None else strict
    name = file or "<schedule>"
    try:
        driver = schedule.driver(bug)
    except InvalidArgument as exc:
        raise InvalidSchedule(f"initial memslots: {exc}", file=name,
                              expected="slots the model accepts") from None
    result = ReplayResult(schedule, bug, strict, driver)
    i = 0
    try:
        for i, step in enumerate(schedule.steps):
            _replay_step(driver, result, i, step, name)
        i = len(schedule.steps)
        driver.finish(TEARDOWN_STEPS)
    except ProtocolViolation as exc:
        result.violation, result.violation_step = exc, i
        if strict and i < len(schedule.steps) - 1:
            raise InvalidSchedule(f"the violation fired {len(schedule.steps) - 1 - i} steps early: "
                                  f"{exc}", file=name, step=i,
                                  expected=f"to run on to step {len(schedule.steps) - 1}") from None
    return result


def _replay_step(d: Driver, result: ReplayResult, i: int, step: Step, name: str) -> None:
    sched = d.vm.sched
    actor = sched.actor(step.actor)
    if step.do == "start":
        if actor.busy:
            if result.strict:
                raise InvalidSchedule(f"{step.actor} is busy ({actor.where()})", file=name, step=i,
                                      expected=f"{step.actor} idle, to start {step.op}")
            _diverged(result, i)
            _run_until_idle(d, step.actor)
        try:
            d.start(step.op or "", step.actor, **dict(step.args))
        except InvalidArgument as exc:
            raise InvalidSchedule(f"cannot start: {exc}", file=name, step=i,
                                  expected="an operation the model accepts") from None
        return
    if not sched.is_runnable(actor):
        if result.strict:
            raise InvalidSchedule(f"{step.actor} is not runnable ({actor.where()})", file=name,
                                  step=i, expected=f"{step.actor} runnable, to reach "
                                  f"{step.reached or 'the violation'}")
        _diverged(result, i)
        return
    before = len(d.steps)
    try:
        t = d.run_actor(step.actor)
    except ProtocolViolation as exc:
        got = d.steps[-1].reached if len(d.steps) > before else None
        if got != step.reached:
            if result.strict:
                raise InvalidSchedule(
                    f"{step.actor} {'reached ' + got if got else 'raised'} with {exc.title}",
                    file=name, step=i,
                    expected=f"to reach {step.reached}" if step.reached else "to raise") from None
            _diverged(result, i)
        raise
    if t.reached != step.reached:
        if result.strict:
            raise InvalidSchedule(f"{step.actor} ({t.op}) reached {t.reached}", file=name, step=i,
                                  expected=f"to reach {step.reached}" if step.reached
                                  else "the operation to raise the violation")
        _diverged(result, i)


def _diverged(result: ReplayResult, i: int) -> None:
    if result.diverged_at is None:
        result.diverged_at = i


def _run_until_idle(d: Driver, name: str, limit: int = TEARDOWN_STEPS) -> None:
    """Lenient replay: finish ``name``'s operation (running others when it cannot run)."""
    sched = d.vm.sched
    actor = sched.actor(name)
    for _ in range(limit):
        if not actor.busy:
            return
        if sched.is_runnable(actor):
            d.run_actor(name)
        else:
            d.run_actor(sched.next_round_robin().name)
    d.finish(TEARDOWN_STEPS)
