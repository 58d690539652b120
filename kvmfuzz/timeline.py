"""A schedule as a timeline (``kvmfuzz show``): one column per actor, one row per step, with
the protocol state each step changed.

The schedule is replayed (``kvmfuzz.corpus.replay``) and the steps that actually ran — the
recorded ones, then teardown — are re-run on a fresh ``Driver``, taking after each step a
snapshot of what the invalidation protocol is about: ``mmu_invalidate_in_progress``, the
invalidation range, ``mmu_invalidate_seq``, ``mn_active_invalidate_count`` and the present
leaf SPTEs (installed ``+``, zapped ``-``, changed ``~``). Text for the terminal; a
self-contained HTML page with an SVG timeline for the browser. No Hypothesis.
"""

from __future__ import annotations

import html
from typing import Any

import attrs

from kvmfuzz.corpus import Schedule, replay
from kvmfuzz.driver import Step
from kvmfuzz.errors import ProtocolViolation
from kvmfuzz.units import INVALID_GPA
from kvmfuzz.virt.kvm import Vm
from kvmfuzz.x86 import spte as S

MAX_ROWS = 2000


@attrs.frozen
class Row:
    """One executed step: ``index`` in the recorded schedule (None for teardown / catch-up)."""

    index: int | None
    actor: str
    text: str
    changes: tuple[str, ...]
    violation: str | None = None


@attrs.frozen
class Timeline:
    file: str
    title: str
    bug: str | None
    strict: bool
    actors: tuple[str, ...]
    rows: tuple[Row, ...]
    violation: str | None
    diverged_at: int | None
    truncated: int = 0


@attrs.frozen
class _State:
    in_progress: int
    range_: tuple[int, int]
    seq: int
    mn_active: int
    leaves: dict[tuple[int, int, int], int]


def _snapshot(vm: Vm) -> _State:
    from kvmfuzz.invariants.walk import present_leaves
    leaves = {(leaf.root.id, leaf.gfn, leaf.level): leaf.spte for leaf in present_leaves(vm)}
    return _State(vm.mmu_invalidate_in_progress,
                  (vm.mmu_invalidate_range_start, vm.mmu_invalidate_range_end),
                  vm.mmu_invalidate_seq, vm.mn_active_invalidate_count, leaves)


def _gpa(value: int) -> str:
    return "none" if value == INVALID_GPA else f"{value:#x}"


def _spte(vm: Vm, spte: int, level: int) -> str:
    flags = "W" if S.is_writable_pte(spte) else "RO"
    return f"pfn {S.spte_to_pfn(spte):#x} {flags}"


def _diff(vm: Vm, a: _State, b: _State) -> tuple[str, ...]:
    out = []
    if a.in_progress != b.in_progress:
        out.append(f"in_progress {a.in_progress}→{b.in_progress}")
    if a.range_ != b.range_:
        out.append(f"range [{_gpa(b.range_[0])}, {_gpa(b.range_[1])})")
    if a.seq != b.seq:
        out.append(f"seq {a.seq}→{b.seq}")
    if a.mn_active != b.mn_active:
        out.append(f"mn_active {a.mn_active}→{b.mn_active}")
    for key in sorted(set(a.leaves) | set(b.leaves)):
        root, gfn, level = key
        old, new = a.leaves.get(key), b.leaves.get(key)
        where = f"root#{root} gfn {gfn:#x} L{level}"
        if old is None and new is not None:
            out.append(f"+spte {where} {_spte(vm, new, level)}")
        elif new is None and old is not None:
            out.append(f"-spte {where}")
        elif old != new and old is not None and new is not None:
            out.append(f"~spte {where} {_spte(vm, new, level)}")
    return tuple(out)


def build(schedule: Schedule, bug: str | None, *, file: str = "<schedule>") -> Timeline:
    result = replay(schedule, bug, file=file)
    d = result.driver
    ran: tuple[Step, ...] = (d.failed_steps if d.failure is not None and d.failure is result.violation
                             else tuple(d.steps))
    fresh = schedule.driver(bug)
    state = _snapshot(fresh.vm)
    rows: list[Row] = []
    recorded = len(schedule.steps) if result.strict else 0
    violation_text: str | None = None
    for n, step in enumerate(ran[:MAX_ROWS]):
        index = n if n < recorded else None
        raised: str | None = None
        if step.do == "start":
            fresh.start(step.op or "", step.actor, **dict(step.args))
            text = str(step).removeprefix(f"start {step.actor} ")
            text = f"▶ {text}"
        else:
            op = fresh.vm.sched.actor(step.actor).op_name or "?"
            before = len(fresh.steps)
            try:
                t = fresh.run_actor(step.actor)
                text = f"{op} → {t.reached}"
            except ProtocolViolation as exc:
                got = fresh.steps[-1].reached if len(fresh.steps) > before else None
                text = f"{op} → {got}" if got else f"{op} ✗ raised"
                raised = violation_text = str(exc)
        new = _snapshot(fresh.vm)
        rows.append(Row(index, step.actor, text, _diff(fresh.vm, state, new), raised))
        state = new
        if raised:
            break
    if violation_text is None and result.violation is not None:
        violation_text = str(result.violation)
        rows.append(Row(None, "", "teardown", (), violation_text))
    used = {r.actor for r in rows if r.actor}
    actors = tuple(a for a in fresh.vm.sched.names() if a in used)
    return Timeline(file, schedule.title, bug, result.strict, actors, tuple(rows), violation_text,
                    result.diverged_at, max(0, len(ran) - MAX_ROWS))


def render_text(t: Timeline) -> str:
    lines = [f"{t.file}: {t.title} — replayed on bug={t.bug or 'none'} "
             f"({'strict' if t.strict else 'lenient'})"]
    if t.diverged_at is not None:
        lines.append(f"(diverged from the recording at step {t.diverged_at})")
    width = {a: max([len(a)] + [len(r.text) for r in t.rows if r.actor == a]) for a in t.actors}
    width = {a: min(w, 44) for a, w in width.items()}
    head = "  #   " + " │ ".join(a.ljust(width[a]) for a in t.actors) + " │ state changed"
    lines += [head, "─" * len(head)]
    for n, r in enumerate(t.rows):
        label = f"{r.index:>3}" if r.index is not None else ("  ·" if r.actor else "  !")
        cells = []
        for a in t.actors:
            cell = r.text if a == r.actor else ""
            cells.append(cell[:width[a]].ljust(width[a]))
        lines.append(f"{label}   " + " │ ".join(cells) + " │ " + "; ".join(r.changes))
        if r.violation:
            lines.append(f"      ✗ VIOLATION {r.violation}")
        if n + 1 == len(t.rows) and t.truncated:
            lines.append(f"      ... {t.truncated} more steps not shown")
    if t.violation is None:
        lines.append("no violation")
    lines.append("# = recorded step; · = teardown or catch-up step")
    return "\n".join(lines) + "\n"


_COLORS = {"vcpu": "#dbeafe", "mm": "#dcfce7", "vmm": "#fef3c7"}


def render_html(t: Timeline) -> str:
    """A self-contained page: an SVG with one lane per actor and one row per step."""
    lane_w, row_h, left, state_x = 230, 22, 48, 0
    lanes = {a: left + i * lane_w for i, a in enumerate(t.actors)}
    state_x = left + len(t.actors) * lane_w + 10
    height = 40 + row_h * (len(t.rows) + 1)
    width = state_x + 900
    e = html.escape
    parts: list[str] = []
    for a, x in lanes.items():
        parts.append(f'<text x="{x + 6}" y="24" class="h">{e(a)}</text>')
        parts.append(f'<line x1="{x}" y1="30" x2="{x}" y2="{height}" class="lane"/>')
    parts.append(f'<text x="{state_x}" y="24" class="h">state changed</text>')
    for n, r in enumerate(t.rows):
        y = 34 + n * row_h
        label = str(r.index) if r.index is not None else "·"
        parts.append(f'<text x="6" y="{y + 15}" class="n">{e(label)}</text>')
        if r.actor in lanes:
            x = lanes[r.actor]
            kind = next((k for k in _COLORS if r.actor.startswith(k)), "vcpu")
            fill = "#fecaca" if r.violation else _COLORS[kind]
            parts.append(f'<rect x="{x + 2}" y="{y}" width="{lane_w - 6}" height="{row_h - 3}" '
                         f'rx="3" fill="{fill}"><title>{e(r.actor)}: {e(r.text)}</title></rect>')
            parts.append(f'<text x="{x + 6}" y="{y + 14}" class="s">{e(_clip(r.text, 34))}</text>')
        changes = "; ".join(r.changes)
        if r.violation:
            changes = f"VIOLATION {r.violation}"
        parts.append(f'<text x="{state_x}" y="{y + 14}" class="{"v" if r.violation else "c"}">'
                     f'{e(_clip(changes, 150))}<title>{e(changes)}</title></text>')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>')
    verdict = (f'<p class="bad">VIOLATION: {e(t.violation)}</p>' if t.violation
               else '<p>no violation</p>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kvmfuzz: {e(t.title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
svg text {{ font-family: monospace; font-size: 12px; }}
svg .h {{ font-weight: bold; font-size: 13px; }}
svg .lane {{ stroke: #ccc; }}
svg .v {{ fill: #b91c1c; font-weight: bold; }}
svg .n {{ fill: #666; }}
.bad {{ color: #b91c1c; font-family: monospace; }}
</style></head><body>
<h1>{e(t.title)}</h1>
<p>{e(t.file)} replayed on bug={e(t.bug or 'none')} ({'strict' if t.strict else 'lenient'});
{len(t.rows)} steps; one lane per actor; rows numbered by recorded step (· = teardown).</p>
{verdict}
{svg}
</body></html>
"""


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def to_json(t: Timeline) -> dict[str, Any]:  # for tests and tools
    return attrs.asdict(t)
