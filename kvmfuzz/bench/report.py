"""The benchmark run and its report: per-bug summaries over seeds, the plain-baseline ratio,
catalogue-wide figures, the terminal / Markdown table, the JSON file and ``main``."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hypothesis

from kvmfuzz.bench.hunting import CAMPAIGN_ROUND_EXAMPLES, DEFAULT_STEP_COUNT, FORMAT, HuntResult, hunt
from kvmfuzz.bench.speed import throughput
from kvmfuzz.bugs import BY_NAME, CATALOGUE, lookup
from kvmfuzz.errors import InvalidArgument

DEFAULT_JSON = "kvmfuzz-out/bench.json"

def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: Sequence[HuntResult], budget: float) -> dict[str, Any]:
    """One bug's figures over its seeds. A run that did not find the bug counts as +inf in
    the time and example medians (it is censored at the budget), so a median is finite when
    more than half the seeds found the bug; shrunk figures are over the runs that found it."""
    found = [r for r in runs if r.found]
    times = [r.seconds_to_find if r.found and r.seconds_to_find is not None else math.inf
             for r in runs]
    examples = [float(r.examples_to_find) if r.found and r.examples_to_find is not None
                else math.inf for r in runs]
    msteps = [r.machine_steps for r in found if r.machine_steps is not None]
    pre = [r.preemptions for r in found if r.preemptions is not None]
    titles = sorted({r.title for r in found if r.title is not None})
    return {"seeds": len(runs), "found": len(found), "budget": budget,
            "median_seconds": _median(times), "max_seconds": max(times) if times else None,
            "median_examples": _median(examples),
            "median_machine_steps": _median(msteps), "max_machine_steps": max(msteps, default=None),
            "median_preemptions": _median(pre), "max_preemptions": max(pre, default=None),
            "titles": titles, "errors": [r.error for r in runs if r.error is not None]}


def speedup(aware: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """Time-to-find ratio plain / aware (medians). When plain did not find the bug in budget
    (its median is censored), the ratio is a lower bound: budget / aware median."""
    a, p = aware["median_seconds"], plain["median_seconds"]
    if a is None or p is None or math.isinf(a):
        return {"ratio": None, "lower_bound": False, "text": "n/a"}
    a = max(a, 1e-3)
    if math.isinf(p):
        value = plain["budget"] / a
        return {"ratio": value, "lower_bound": True, "text": f">= {value:.1f}x"}
    return {"ratio": p / a, "lower_bound": False, "text": f"{p / a:.1f}x"}


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "hypothesis": hypothesis.__version__, "platform": platform.platform(),
            "loadavg_at_start": load, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _secs(value: float | None, budget: float) -> str:
    if value is None:
        return "-"
    return f">{budget:g}s" if math.isinf(value) else f"{value:.1f}s"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return ">budget" if math.isinf(value) else f"{value:g}"


def _pair(med: float | None, mx: float | None) -> str:
    return "-" if med is None else f"{med:g} / {mx:g}"


HEADER = ("bug", "found", "t med", "t max", "examples med", "steps med/max", "preempt med/max",
          "plain found", "plain t med", "plain/aware")


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for b in report["bugs"]:
        a, p = b["aware"], b.get("plain")
        rows.append((b["name"], f"{a['found']}/{a['seeds']}", _secs(a["median_seconds"], a["budget"]),
                     _secs(a["max_seconds"], a["budget"]), _num(a["median_examples"]),
                     _pair(a["median_machine_steps"], a["max_machine_steps"]),
                     _pair(a["median_preemptions"], a["max_preemptions"]),
                     f"{p['found']}/{p['seeds']}" if p else "-",
                     _secs(p["median_seconds"], p["budget"]) if p else "-",
                     b["speedup"]["text"] if p else "-"))
    return rows


def format_table(rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(HEADER, *rows, strict=False)]
    out = []
    for r in (HEADER, *rows):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if r is HEADER:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def overall(report: dict[str, Any]) -> dict[str, Any]:
    """Catalogue-wide figures against the issue's targets."""
    bugs = report["bugs"]
    medians = [b["aware"]["median_seconds"] for b in bugs if b["aware"]["median_seconds"] is not None]
    ratios = [b["speedup"] for b in bugs if b.get("plain") and b["speedup"]["ratio"] is not None]
    ratio_values = sorted(r["ratio"] for r in ratios)
    med_ratio = _median(ratio_values)
    bound = bool(ratios) and med_ratio is not None and any(
        r["lower_bound"] and r["ratio"] <= med_ratio for r in ratios)
    shrunk = [b["aware"]["max_machine_steps"] for b in bugs if b["aware"]["max_machine_steps"] is not None]
    return {"bugs": len(bugs),
            "found_every_seed": sum(b["aware"]["found"] == b["aware"]["seeds"] for b in bugs),
            "never_found": [b["name"] for b in bugs if b["aware"]["found"] == 0],
            "median_seconds_over_bugs": _median(medians),
            "bugs_median_within_20s": sum(m <= 20 for m in medians),
            "max_machine_steps": max(shrunk, default=None),
            "bugs_shrunk_within_12": sum(s <= 12 for s in shrunk),
            "median_speedup": med_ratio, "median_speedup_is_lower_bound": bound,
            "unexpected_titles": {b["name"]: b["unexpected_titles"] for b in bugs
                                  if b.get("unexpected_titles")},
            "errors": {b["name"]: b["aware"]["errors"] for b in bugs if b["aware"]["errors"]}}


_MACHINES = {"hunting": "hunting machine", "weaving": "weaving machine",
             "campaign": f"campaign rounds ({CAMPAIGN_ROUND_EXAMPLES} examples each, hunting and "
                         "weaving machines in turn)"}


def _summary_lines(report: dict[str, Any]) -> list[str]:
    o, m = report["overall"], report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, Hypothesis "
             f"{m['hypothesis']} ({m['date']}; load average at start {m['loadavg_at_start']})",
             f"settings: budget {report['settings']['seconds']:g}s per bug and seed, "
             f"{report['settings']['seeds']} seeds, shrink up to "
             f"{report['settings']['shrink_seconds']:g}s, {report['settings']['step_count']} "
             f"rules per example, {_MACHINES[report['settings'].get('machine', 'hunting')]}"
             + (f"; plain baseline budget {report['settings']['plain_seconds']:g}s"
                if report["settings"].get("plain") and report["settings"].get("plain_seconds")
                not in (None, report["settings"]["seconds"]) else ""),
             f"bugs: {o['bugs']}; found on every seed: {o['found_every_seed']}; never found: "
             f"{', '.join(o['never_found']) or 'none'}; median time-to-find within 20 s: "
             f"{o['bugs_median_within_20s']}; shrunk within 12 machine steps (max over seeds): "
             f"{o['bugs_shrunk_within_12']}"]
    if o["unexpected_titles"]:
        lines.append("caught by an invariant its catalogue entry does not list: " + "; ".join(
            f"{name} ({', '.join(titles)})" for name, titles in o["unexpected_titles"].items()))
    if o["errors"]:
        lines.append("model errors: " + "; ".join(
            f"{name} ({errors[0]})" for name, errors in o["errors"].items()))
    if o["median_speedup"] is not None:
        bound = " (a lower bound: plain did not find some bugs in budget)" \
            if o["median_speedup_is_lower_bound"] else ""
        lines.append(f"protocol-aware vs plain: median time-to-find ratio {o['median_speedup']:.1f}x"
                     f"{bound}")
    t = report.get("throughput")
    if t is not None:
        lines.append(
            f"throughput ({t['seconds']:.0f}s each, correct model, every invariant on): full model "
            f"{t['full_rule_steps_per_s']:.0f} rule steps/s + {t['full_scheduler_steps_per_s']:.0f} "
            f"scheduler steps/s; no-op machine (same rules, same choices per rule) "
            f"{t['noop_rule_steps_per_s']:.0f} rule steps/s; ratio {100 * t['ratio']:.0f}% (rule "
            f"steps), {100 * t['ratio_all_steps']:.0f}% (rule + scheduler steps); against a no-op "
            f"machine with as many draws as choices ({t['draw_matched_rule_steps_per_s']:.0f} rule "
            f"steps/s): {100 * t['ratio_draw_matched']:.0f}%"
            + (f"; ERROR {t['error']}" if t["error"] else ""))
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvmfuzz bench",
        description="Time-to-find, shrunk size and plain-baseline ratio for every planted bug, "
        "and throughput against a no-op machine. A measurement, not a test: run it on an "
        "otherwise idle machine.")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="budget per bug and seed to find the bug (default 20)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per bug: 0..N-1 (default 5)")
    p.add_argument("--bugs", default=None,
                   help="comma-separated bug names (default: every non-calibration bug)")
    p.add_argument("--json", default=DEFAULT_JSON, metavar="OUT",
                   help=f"where to write the JSON report (default {DEFAULT_JSON})")
    p.add_argument("--no-plain", action="store_true", help="skip the plain baseline")
    p.add_argument("--plain-seconds", type=float, default=None,
                   help="budget per bug and seed for the plain baseline (default: --seconds). "
                   "A longer one turns the ratios of bugs plain does not find in --seconds from "
                   "lower bounds into measurements")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weaving", action="store_true",
                       help="hunt with the WeavingMachine (a campaign's odd rounds) instead of the "
                       "hunting machine")
    which.add_argument("--campaign", action="store_true",
                       help=f"hunt as a campaign does: rounds of {CAMPAIGN_ROUND_EXAMPLES} examples "
                       "alternating the hunting and the weaving machine (time to find for a "
                       "campaign user)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--shrink-seconds", type=float, default=60.0,
                   help="how long to let Hypothesis shrink each find (default 60)")
    p.add_argument("--step-count", type=int, default=DEFAULT_STEP_COUNT,
                   help=f"rules per generated example (default {DEFAULT_STEP_COUNT})")
    p.add_argument("--throughput-seconds", type=float, default=10.0,
                   help="seconds for each of the three throughput runs: the full model, the "
                   "choice-matched and the draw-matched no-op machine (default 10; 0: skip)")
    return p


def _bug_names(p: argparse.ArgumentParser, value: str | None) -> list[str]:
    if value is None:
        return [b.name for b in CATALOGUE if not b.calibration]
    names = []
    for raw in value.split(","):
        try:
            bug = lookup(raw.strip())
        except InvalidArgument as exc:
            p.error(f"--bugs: {exc}")
        if bug is None:
            p.error(f"--bugs: {raw.strip()!r} is not a planted bug")
        names.append(bug.name)
    return names


def run_bench(bugs: Sequence[str], *, seconds: float, seeds: int, plain: bool,
              shrink_seconds: float, step_count: int, throughput_seconds: float,
              progress: Callable[[str], None], weaving: bool = False,
              plain_seconds: float | None = None, campaign: bool = False) -> dict[str, Any]:
    """The whole benchmark; returns the JSON report (``interrupted`` if Ctrl-C cut it short).
    ``plain_seconds``: the plain baseline's budget per bug and seed (default ``seconds``).
    ``weaving`` / ``campaign``: hunt with the weaving machine / as a campaign does (rounds
    alternating both machines); the plain baseline is one plain machine either way."""
    if weaving and campaign:
        raise InvalidArgument("run_bench: weaving and campaign exclude each other")
    plain_budget = seconds if plain_seconds is None else plain_seconds
    report: dict[str, Any] = {
        "format": FORMAT, "machine": machine_info(), "bugs": [], "throughput": None,
        "interrupted": False,
        "settings": {"seconds": seconds, "seeds": seeds, "plain": plain, "step_count": step_count,
                     "plain_seconds": plain_budget,
                     "machine": "campaign" if campaign else "weaving" if weaving else "hunting",
                     "shrink_seconds": shrink_seconds, "throughput_seconds": throughput_seconds}}
    try:
        for name in bugs:
            entry: dict[str, Any] = {"name": name, "caught_by": BY_NAME[name].caught_by}
            runs = []
            for seed in range(seeds):
                runs.append(hunt(name, seed, seconds=seconds, shrink_seconds=shrink_seconds,
                                 step_count=step_count, weaving=weaving, campaign=campaign))
                progress(runs[-1].line())
            entry["aware"] = summarize(runs, seconds)
            entry["aware"]["runs"] = [r.to_json() for r in runs]
            expected = {t.strip() for t in BY_NAME[name].caught_by.split("/")}
            entry["unexpected_titles"] = [t for t in entry["aware"]["titles"] if t not in expected]
            if plain:
                pruns = []
                for seed in range(seeds):
                    pruns.append(hunt(name, seed, plain=True, seconds=plain_budget,
                                      shrink_seconds=0, step_count=step_count))
                    progress(pruns[-1].line())
                entry["plain"] = summarize(pruns, plain_budget)
                entry["plain"]["runs"] = [r.to_json() for r in pruns]
                entry["speedup"] = speedup(entry["aware"], entry["plain"])
            report["bugs"].append(entry)
        if throughput_seconds > 0:
            progress(f"throughput: full model, then the two no-op machines, {throughput_seconds:g}s "
                     "each")
            report["throughput"] = throughput(throughput_seconds, step_count=step_count).to_json()
    except KeyboardInterrupt:
        report["interrupted"] = True
        progress("interrupted: reporting what was measured")
    report["overall"] = overall(report)
    return report


def _json_safe(value: Any) -> Any:
    """inf (a censored median) as the string "inf": JSON has no infinity."""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kvmfuzz bench [--seconds N] [--seeds K] [--bugs a,b] [--json OUT]
    [--no-plain] [--markdown]``: progress on stderr, the table and summary on stdout."""
    p = _parser()
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        p.error("--seconds: expected a positive number")
    if args.plain_seconds is not None and not (args.plain_seconds > 0
                                               and math.isfinite(args.plain_seconds)):
        p.error("--plain-seconds: expected a positive number")
    if args.seeds < 1:
        p.error("--seeds: expected at least 1")
    if args.step_count < 1:
        p.error("--step-count: expected at least 1")
    bugs = _bug_names(p, args.bugs)

    def progress(line: str) -> None:
        print(f"kvmfuzz bench: {line}", file=sys.stderr, flush=True)

    report = run_bench(bugs, seconds=args.seconds, seeds=args.seeds, plain=not args.no_plain,
                       shrink_seconds=args.shrink_seconds, step_count=args.step_count,
                       throughput_seconds=args.throughput_seconds, progress=progress,
                       weaving=args.weaving, plain_seconds=args.plain_seconds,
                       campaign=args.campaign)
    print(format_table(table_rows(report), markdown=args.markdown))
    print()
    for line in _summary_lines(report):
        print(("- " if args.markdown else "") + line)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    print(f"{'- ' if args.markdown else ''}JSON report: {out}")
    return 130 if report["interrupted"] else 0
