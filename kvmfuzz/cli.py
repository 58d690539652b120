"""The command line: ``python -m kvmfuzz COMMAND`` (installed as ``kvmfuzz``).

Commands:
  replay FILE... [--bug NAME]   replay schedules without Hypothesis; exit 0 when every one runs
                                clean, 1 when one raises a violation (printed, decoded) or does
                                not run as recorded
  show FILE [--bug NAME] [--html OUT]
                                the schedule as a timeline, one column per actor, with the
                                protocol state each step changed (HTML: a self-contained page)
  list [DIR]                    corpus entries (default: the regression corpus ``corpus/``)
  bugs                          the planted-bug catalogue, one bug per line
  real ... / bench ... / coverage ...
                                kvmfuzz.real.diff / kvmfuzz.bench / kvmfuzz.coverage

This module also holds the option table the pytest plugin uses (``OPTIONS``): the CLI and the
plugin share names, defaults and validation, and the CLI has no option the plugin lacks. Bad
arguments are usage errors (exit 2) naming the argument. No Hypothesis is imported here.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from kvmfuzz.bugs import CATALOGUE, lookup
from kvmfuzz.errors import InvalidArgument, InvalidSchedule

PROFILE_NAMES = ("dev", "ci", "long")
DEFAULT_CORPUS = "kvmfuzz-out/corpus"  # where campaigns save (gitignored)
REGRESSION_CORPUS = "corpus"  # the checked-in regression corpus


# -- option values (shared with the pytest plugin) ------------------------------------------

def parse_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise InvalidArgument(f"{value!r}: expected a positive number of seconds")
    return seconds


def parse_seed(value: str) -> int:
    try:
        seed = int(value, 0)
    except ValueError:
        seed = -1
    if seed < 0:
        raise InvalidArgument(f"{value!r}: expected a non-negative integer")
    return seed


def parse_bug(value: str) -> str | None:
    bug = lookup(value or None)
    return bug.name if bug is not None else None


def parse_corpus(value: str) -> Path:
    if not value:
        raise InvalidArgument("empty path: expected a directory")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"{value!r} exists and is not a directory")
    return path


@attrs.frozen
class DbUrl:
    """A parsed --kvmfuzz-db: ``none``, a directory, or redis://HOST:PORT[/DB]."""

    text: str
    redis: tuple[str, int, int] | None = None


def parse_db(value: str) -> DbUrl:
    if value in ("", "none"):
        return DbUrl("none")
    if "://" in value:
        url = urllib.parse.urlsplit(value)
        if url.scheme != "redis":
            raise InvalidArgument(f"{value!r}: unknown scheme {url.scheme!r}; expected "
                                  "redis://HOST:PORT, a directory, or none")
        try:
            port = url.port or 6379
        except ValueError:
            raise InvalidArgument(f"{value!r}: bad port; expected redis://HOST:PORT") from None
        db = url.path.strip("/")
        if not url.hostname or (db and not db.isdigit()) or url.query or url.fragment:
            raise InvalidArgument(f"{value!r}: expected redis://HOST:PORT[/DB]")
        return DbUrl(value, (url.hostname, port, int(db or 0)))
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"{value!r} exists and is not a directory")
    return DbUrl(value)


def parse_profile(value: str) -> str:
    if value not in PROFILE_NAMES:
        raise InvalidArgument(f"{value!r}: expected one of {', '.join(PROFILE_NAMES)}")
    return value


@attrs.frozen
class Option:
    """One ``--kvmfuzz-NAME`` option (ini key ``kvmfuzz_NAME``)."""

    name: str
    help: str
    default: str
    parse: Callable[[str], Any]


OPTIONS: tuple[Option, ...] = (
    Option("seconds", "campaign time budget in seconds (keep generating until spent)", "60",
           parse_seconds),
    Option("seed", "first Hypothesis seed of the campaign (round r uses seed + r)", "0", parse_seed),
    Option("bug", "planted bug from kvmfuzz.bugs to run against (none: the correct model)", "",
           parse_bug),
    Option("corpus", "directory where shrunk failures are saved as JSON schedules",
           DEFAULT_CORPUS, parse_corpus),
    Option("db", "Hypothesis example database: a directory, redis://HOST:PORT[/DB] or none "
           "(default: the profile's: .hypothesis/examples, none for ci)", "", parse_db),
    Option("profile", "settings profile: dev (quick), ci (derandomized, no database), long "
           "(default: ci when $CI is set, else dev)", "", parse_profile),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}


# -- commands --------------------------------------------------------------------------------

def _arg_bug(value: str) -> str | None:
    try:
        return parse_bug(value)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _arg_file(value: str) -> str:
    if not Path(value).is_file():
        raise argparse.ArgumentTypeError(f"{value!r}: no such file")
    return value


def _arg_dir(value: str) -> str:
    if not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value!r}: no such directory")
    return value


RECORDED: Any = object()  # show --bug default: the bug the schedule was recorded on


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage error: exit 2, naming the argument
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


DISPATCH = {"real": "kvmfuzz.real.diff", "bench": "kvmfuzz.bench", "coverage": "kvmfuzz.coverage"}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kvmfuzz", description="kvmfuzz: replay, show and list saved schedules; "
                "campaigns run through pytest (pytest -m campaign --kvmfuzz-seconds=N).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    r = sub.add_parser("replay", help="replay schedules without Hypothesis")
    r.add_argument("files", nargs="+", type=_arg_file, metavar="FILE")
    r.add_argument("--bug", type=_arg_bug, default=None, metavar="NAME",
                   help="planted bug to replay on (default: the correct model)")
    s = sub.add_parser("show", help="a schedule as a timeline (text, or --html)")
    s.add_argument("file", type=_arg_file, metavar="FILE")
    s.add_argument("--bug", type=_arg_bug, default=RECORDED, metavar="NAME",
                   help="planted bug to run it on (default: the one it was recorded on; none: "
                   "the correct model)")
    s.add_argument("--html", metavar="OUT", help="write a self-contained HTML page to OUT")
    ls = sub.add_parser("list", help="corpus entries: title, bug, length, date")
    ls.add_argument("dir", nargs="?", default=REGRESSION_CORPUS, type=_arg_dir, metavar="DIR")
    sub.add_parser("bugs", help="the planted-bug catalogue")
    for name, module in DISPATCH.items():
        sub.add_parser(name, help=f"{module}:main (arguments passed on)", add_help=False)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    if args_list and args_list[0] in DISPATCH:
        return _dispatch(args_list[0], args_list[1:])
    args = build_parser().parse_args(args_list)
    if args.command == "replay":
        return cmd_replay(args.files, args.bug, out)
    if args.command == "show":
        return cmd_show(args.file, args.bug, args.html, out)
    if args.command == "list":
        return cmd_list(args.dir, out)
    return cmd_bugs(out)


def _dispatch(command: str, argv: list[str]) -> int:
    module_name = DISPATCH[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            print(f"kvmfuzz {command}: not available yet ({module_name} is not installed in this "
                  "version)", file=sys.stderr)
            return 2
        raise
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"kvmfuzz {command}: not available yet ({module_name} has no main())", file=sys.stderr)
        return 2
    code = entry(argv)
    return int(code or 0)


def cmd_replay(files: Sequence[str], bug: str | None, out: TextIO) -> int:
    from kvmfuzz.corpus import load, replay
    status = 0
    for name in files:
        try:
            schedule = load(name)
            result = replay(schedule, bug, file=name)
        except InvalidSchedule as exc:
            print(f"{name}: INVALID SCHEDULE: {exc}", file=out)
            status = 1
            continue
        model = f"bug={bug or 'none'}"
        mode = "strict" if result.strict else "lenient"
        n = len(schedule.steps)
        teardown = len(result.driver.steps) - n
        if result.violation is None:
            div = (f", diverged from the recording at step {result.diverged_at} (the model took "
                   "another path)" if result.diverged_at is not None else "")
            print(f"{name}: clean on {model} ({mode}, {n} steps + {max(teardown, 0)} teardown "
                  f"steps{div})", file=out)
            continue
        status = 1
        recorded = schedule.meta.violation_title
        same = ("the recorded violation" if result.reproduced else
                f"recorded: {recorded}" if recorded else "none recorded")
        at = (f"step {result.violation_step}" if result.violation_step is not None
              and result.violation_step < n else "teardown")
        print(f"{name}: VIOLATION on {model} ({mode}) at {at} of {n} ({same})", file=out)
        print(f"  {result.violation}", file=out)
        steps = result.driver.failed_steps or tuple(result.driver.steps)
        shown = steps[-40:]
        if len(steps) > len(shown):
            print(f"  ... {len(steps) - len(shown)} earlier steps", file=out)
        for step in shown:
            print(f"    {step}" if step.reached or step.do == "start" else
                  f"    run {step.actor} → raised", file=out)
        print(f"  replay: python -m kvmfuzz replay {name}" + (f" --bug {bug}" if bug else ""),
              file=out)
    return status


def cmd_show(file: str, bug: object, html: str | None, out: TextIO) -> int:
    from kvmfuzz.corpus import load
    from kvmfuzz.timeline import build, render_html, render_text
    try:
        schedule = load(file)
        chosen = schedule.bug if bug is RECORDED else bug
        assert chosen is None or isinstance(chosen, str)
        timeline = build(schedule, chosen, file=file)
    except InvalidSchedule as exc:
        print(f"{file}: INVALID SCHEDULE: {exc}", file=sys.stderr)
        return 1
    if html is not None:
        from kvmfuzz.corpus import write_atomic
        target = Path(html)
        if target.parent and not target.parent.is_dir():
            print(f"kvmfuzz show: error: argument --html: {html!r}: no such directory",
                  file=sys.stderr)
            return 2
        write_atomic(target, render_html(timeline))
        print(f"wrote {html}", file=out)
        return 0
    out.write(render_text(timeline))
    return 0


def cmd_list(directory: str, out: TextIO) -> int:
    from kvmfuzz.corpus import corpus_files, load
    rows = []
    for path in corpus_files(directory):
        try:
            s = load(path)
        except InvalidSchedule as exc:
            rows.append((str(path), f"INVALID: {exc.expected or exc}", "-", "-", "-"))
            continue
        rows.append((str(path), s.title, s.bug or "none", str(len(s.steps)),
                     (s.meta.created or "-")[:10]))
    header = ("file", "title", "bug", "steps", "created")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    print(f"{len(rows)} schedule(s) in {directory}", file=out)
    return 0


def cmd_bugs(out: TextIO) -> int:
    width = max(len(b.name) for b in CATALOGUE)
    for b in CATALOGUE:
        mark = "[calibration] " if b.calibration else ""
        print(f"{b.name.ljust(width)}  {mark}{b.summary} (caught by: {b.caught_by})", file=out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
