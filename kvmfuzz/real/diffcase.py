"""A saved differential case: ``kvmfuzz-diff/1`` JSON (one file per mismatch).

``{"format": "kvmfuzz-diff/1", "title": ..., "config": {BackendConfig fields}, "model_bug":
name or null, "ops": [{"op": "GuestWrite", "vcpu": 0, "gpa": 1048576, ...}, ...], "model":
[observation or null, ...], "real": [observation, ...], "mismatch": {"step", "rule",
"detail"} or null}``. An observation is ``{"outcome": "Value", "value": 5}`` (class name plus
fields; bytes as hex). Ops and observations are resolved values: replay needs no Hypothesis.
Files are written atomically (a temporary file in the same directory, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final

import attrs

from kvmfuzz.errors import InvalidSchedule
from kvmfuzz.real import ops as O
from kvmfuzz.real.compare import Mismatch

FORMAT: Final = "kvmfuzz-diff/1"
OP_BY_NAME: Final[dict[str, type]] = {t.__name__: t for t in O.OP_TYPES}
OUTCOME_TYPES: Final[tuple[type, ...]] = (O.Ok, O.Value, O.Mmio, O.RunFailed, O.Exit, O.Errno,
                                          O.Dirty, O.WorkerDied)
OUTCOME_BY_NAME: Final[dict[str, type]] = {t.__name__: t for t in OUTCOME_TYPES}


def op_to_json(op: O.Op) -> dict[str, Any]:
    out: dict[str, Any] = {"op": type(op).__name__}
    for name, value in attrs.asdict(op, recurse=False).items():
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def op_from_json(data: dict[str, Any]) -> O.Op:
    fields = dict(data)
    name = fields.pop("op", None)
    cls = OP_BY_NAME.get(str(name))
    if cls is None:
        raise InvalidSchedule(f"unknown op {name!r}", expected=", ".join(OP_BY_NAME))
    if isinstance(fields.get("pages"), list):
        fields["pages"] = tuple(fields["pages"])
    op: O.Op = cls(**fields)
    return op


def outcome_to_json(outcome: O.Outcome | None) -> dict[str, Any] | None:
    if outcome is None:
        return None
    out: dict[str, Any] = {"outcome": type(outcome).__name__}
    for name, value in attrs.asdict(outcome, recurse=False).items():
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def outcome_from_json(data: dict[str, Any] | None) -> O.Outcome | None:
    if data is None:
        return None
    fields = dict(data)
    name = fields.pop("outcome", None)
    cls = OUTCOME_BY_NAME.get(str(name))
    if cls is None:
        raise InvalidSchedule(f"unknown outcome {name!r}", expected=", ".join(OUTCOME_BY_NAME))
    if cls is O.Mmio:
        fields["data"] = bytes.fromhex(fields["data"])
    if cls is O.Dirty:
        fields["pages"] = tuple(fields["pages"])
    outcome: O.Outcome = cls(**fields)
    return outcome


@attrs.frozen
class DiffCase:
    """A schedule run on both backends: the ops, each side's outcomes, the mismatch if any."""

    config: O.BackendConfig
    ops: tuple[O.Op, ...]
    model: tuple[O.Outcome | None, ...]
    real: tuple[O.Outcome, ...]
    mismatch: Mismatch | None = None
    model_bug: str | None = None

    @property
    def title(self) -> str:
        if self.mismatch is None:
            return f"agreement over {len(self.ops)} ops"
        m = self.mismatch
        return f"{m.rule} at step {m.step} ({type(m.op).__name__}) of {len(self.ops)} ops"

    def to_json(self) -> dict[str, Any]:
        config = attrs.asdict(self.config)
        return {
            "format": FORMAT,
            "title": self.title,
            "config": config,
            "model_bug": self.model_bug,
            "ops": [op_to_json(op) for op in self.ops],
            "model": [outcome_to_json(o) for o in self.model],
            "real": [outcome_to_json(o) for o in self.real],
            "mismatch": None if self.mismatch is None else {
                "step": self.mismatch.step, "rule": self.mismatch.rule,
                "detail": self.mismatch.detail},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], file: str | None = None) -> DiffCase:
        if data.get("format") != FORMAT:
            raise InvalidSchedule(f"format {data.get('format')!r}", file=file, expected=FORMAT)
        try:
            config = O.BackendConfig(**data["config"])
            ops = tuple(op_from_json(o) for o in data["ops"])
            model = tuple(outcome_from_json(o) for o in data.get("model", ()))
            real: list[O.Outcome] = []
            for o in data.get("real", ()):
                outcome = outcome_from_json(o)
                if outcome is None:
                    raise ValueError("a null kernel observation")
                real.append(outcome)
            mismatch = None
            m = data.get("mismatch")
            if m is not None:
                step = int(m["step"])
                mismatch = Mismatch(step, ops[step], str(m["rule"]),
                                    model[step] if step < len(model) else None, real[step],
                                    str(m["detail"]))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InvalidSchedule(f"malformed case: {exc!r}", file=file) from exc
        return cls(config, ops, model, tuple(real), mismatch, data.get("model_bug"))


def save_case(case: DiffCase, directory: str | Path, name: str | None = None) -> Path:
    """Write ``case`` atomically into ``directory``; the path written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if name is None:
        m = case.mismatch
        tag = f"{m.rule}-{type(m.op).__name__}" if m is not None else "agree"
        name = f"diff-{tag}-{len(case.ops)}ops.json"
    path = directory / name
    text = json.dumps(case.to_json(), indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_case(path: str | Path) -> DiffCase:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidSchedule(f"cannot read: {exc}", file=str(path)) from exc
    return DiffCase.from_json(data, file=str(path))
