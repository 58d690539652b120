"""Errors raised by kvmfuzz.

- ``KvmfuzzError``: base of everything kvmfuzz raises on purpose.
- ``InvalidArgument``: a caller passed something out of range (bad option, bad rule argument).
- ``InvalidSchedule``: a corpus file or a schedule step cannot be replayed; names the file, the
  step and what was expected.
- ``ModelError``: the model contradicts itself. That is a kvmfuzz bug, never a finding.
- ``ProtocolViolation``: an invariant failed; a finding. ``.title`` is the invariant's name.
  Each invariant raises its own subclass (or at its own line), so that Hypothesis, which tells
  failures apart by exception type and raising line, keeps them distinct.
"""

from __future__ import annotations


class KvmfuzzError(Exception):
    """Base of every error kvmfuzz raises on purpose."""


class InvalidArgument(KvmfuzzError, ValueError):
    """An argument out of range: the message names it and the accepted values."""


class InvalidSchedule(KvmfuzzError):
    """A schedule (corpus file or step list) that cannot be replayed as written."""

    def __init__(self, message: str, *, file: str | None = None, step: int | None = None,
                 expected: str | None = None) -> None:
        self.file = file
        self.step = step
        self.expected = expected
        where = []
        if file is not None:
            where.append(file)
        if step is not None:
            where.append(f"step {step}")
        text = f"{': '.join(where)}: {message}" if where else message
        if expected is not None:
            text += f" (expected {expected})"
        super().__init__(text)


class ModelError(KvmfuzzError):
    """The model contradicts itself (our bug, never reported as a finding)."""


class ProtocolViolation(AssertionError):
    """An invariant of the protocol failed.

    ``title`` is the invariant's stable name (e.g. ``I1-no-mapping-in-closed-range``);
    ``detail`` is the decoded evidence. Subclasses exist per invariant family.
    """

    title: str = "protocol-violation"

    def __init__(self, detail: str, *, title: str | None = None) -> None:
        if title is not None:
            self.title = title
        self.detail = detail
        super().__init__(f"[{self.title}] {detail}")


class Deadlock(ProtocolViolation):
    """No actor can run while some operation is unfinished: a lock cycle or a lost wake-up."""

    title = "deadlock"


class NoProgress(ProtocolViolation):
    """An operation retried more often than the protocol allows with nothing pending."""

    title = "I12-fault-progress"
