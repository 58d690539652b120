"""kvmfuzz's pytest plugin (registered through the ``pytest11`` entry point).

Options (each also an ini key ``kvmfuzz_NAME``; the table is ``kvmfuzz.cli.OPTIONS``, shared
with the command line), validated when parsed — a bad value is a usage error naming it:

``--kvmfuzz-seconds`` campaign budget (keep generating until spent), ``--kvmfuzz-seed`` first
Hypothesis seed, ``--kvmfuzz-bug`` a planted bug from kvmfuzz.bugs (none = the correct model),
``--kvmfuzz-corpus`` where shrunk failures are saved, ``--kvmfuzz-db`` the example database
(directory, ``redis://HOST:PORT[/DB]``, none), ``--kvmfuzz-profile`` dev / ci / long (Hypothesis
profiles ``kvmfuzz-*``; ci is the default when ``$CI`` is set, and is then loaded for every
Hypothesis test of the session).

Campaigns: ``pytest -m campaign --kvmfuzz-seconds=N``. The header is a reproduction recipe; a
progress line is printed every few seconds; the terminal summary lists every distinct failure
with its corpus file and replay command. With pytest-xdist (``-n K``) the campaign is split in
K shards with distinct seeds (``seed + k * SHARD_SEED_STRIDE``), one per worker, and the
controller merges their results.

Protocol coverage (kvmfuzz.coverage): every campaign ends with a table per area (points, outcomes,
interleaving pairs, branches) and what was never reached; ``--kvmfuzz-coverage-report=DIR`` also
measures branch coverage of the model (coverage.py, started before the model is imported) and
writes ``DIR/coverage.json`` and ``DIR/index.html``, merging the reports of xdist workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kvmfuzz.cli import OPTIONS
from kvmfuzz.errors import InvalidArgument

_OPTS = pytest.StashKey[dict[str, Any]]()
_RAW = pytest.StashKey[dict[str, str]]()
_RESULTS = pytest.StashKey[list[Any]]()  # CampaignResult objects (this process)
_MERGED = pytest.StashKey[list[dict[str, Any]]]()  # results reported by xdist workers
WORKER_KEY = "kvmfuzz_campaigns"
_BRANCHES = pytest.StashKey[Any]()  # kvmfuzz.coverage.BranchCollector (coverage report only)
_BRANCH_FILES = pytest.StashKey[list[Any]]()  # FileBranches: this process's and the workers'
BRANCH_KEY = "kvmfuzz_branches"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmfuzz")
    for opt in OPTIONS:
        group.addoption(f"--kvmfuzz-{opt.name}", default=None, help=opt.help)
        parser.addini(f"kvmfuzz_{opt.name}", opt.help, default=opt.default)
    group.addoption("--kvmfuzz-coverage-report", default=None, metavar="DIR",
                    help="measure branch coverage of the model too and write DIR/coverage.json and "
                    "DIR/index.html (protocol coverage of campaigns)")


def _raw(config: pytest.Config, name: str) -> tuple[str, str]:
    """(value, where it came from) for option ``name``."""
    value = config.getoption(f"--kvmfuzz-{name}")
    if value is not None:
        return str(value), f"--kvmfuzz-{name}"
    return str(config.getini(f"kvmfuzz_{name}")), f"ini kvmfuzz_{name}"


def pytest_configure(config: pytest.Config) -> None:
    _start_branch_coverage(config)  # first: before the model is imported
    opts: dict[str, Any] = {}
    raw: dict[str, str] = {}
    for opt in OPTIONS:
        value, origin = _raw(config, opt.name)
        if opt.name == "profile" and not value:
            value = "ci" if os.environ.get("CI") else "dev"
        try:
            opts[opt.name] = opt.parse(value)
        except InvalidArgument as exc:
            raise pytest.UsageError(f"{origin}={value!r}: {exc}") from None
        raw[opt.name] = value
    config.stash[_OPTS] = opts
    config.stash[_RAW] = raw
    config.stash[_RESULTS] = []
    config.stash[_MERGED] = []
    from kvmfuzz.campaign import profile_name, register_profiles
    register_profiles()
    explicit = _raw(config, "profile")[0] != "" or bool(os.environ.get("CI"))
    if explicit and not config.getoption("hypothesis_profile", None):
        from hypothesis import settings
        settings.load_profile(profile_name(opts["profile"]))


def _workers(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        return int(workerinput.get("workercount", 1))
    n = config.getoption("numprocesses", None) if config.pluginmanager.hasplugin("xdist") else None
    return int(n) if isinstance(n, int) and n > 0 else 1


def recipe(config: pytest.Config) -> str:
    raw = config.stash[_RAW]
    parts = ["pytest -m campaign", f"--kvmfuzz-seconds={raw['seconds']}",
             f"--kvmfuzz-seed={raw['seed']}", f"--kvmfuzz-profile={raw['profile']}"]
    if raw["bug"]:
        parts.append(f"--kvmfuzz-bug={raw['bug']}")
    parts.append(f"--kvmfuzz-corpus={raw['corpus']}")
    if raw["db"]:
        parts.append(f"--kvmfuzz-db={raw['db']}")
    workers = _workers(config)
    if workers > 1:
        parts.append(f"-n {workers}")
    return " ".join(parts)


def pytest_report_header(config: pytest.Config) -> list[str]:
    opts, raw = config.stash[_OPTS], config.stash[_RAW]
    db = raw["db"] or ("none" if opts["profile"] == "ci" else ".hypothesis/examples")
    return [f"kvmfuzz: profile={opts['profile']} seed={opts['seed']} bug={opts['bug'] or 'none'} "
            f"seconds={raw['seconds']} corpus={raw['corpus']} db={db} workers={_workers(config)}"
            f" | rerun: {recipe(config)} | replay a saved failure: python -m kvmfuzz replay "
            f"{raw['corpus']}/FILE.json" + (f" --bug {opts['bug']}" if opts["bug"] else "")]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``kvmfuzz_shard``: one campaign shard per xdist worker (a single one without xdist)."""
    if "kvmfuzz_shard" in metafunc.fixturenames:
        n = _workers(metafunc.config)
        metafunc.parametrize("kvmfuzz_shard", range(n), ids=[f"shard{k}" for k in range(n)])


@pytest.fixture
def kvmfuzz_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The parsed ``--kvmfuzz-*`` options (seconds, seed, bug, corpus, db, profile)."""
    parsed: dict[str, Any] = request.config.stash[_OPTS]
    opts = dict(parsed)
    opts["db"] = request.config.stash[_RAW]["db"] or None
    return opts


@pytest.fixture
def kvmfuzz_report(request: pytest.FixtureRequest) -> list[Any]:
    """Where a campaign test puts its ``CampaignResult`` for the terminal summary."""
    return request.config.stash[_RESULTS]


@pytest.fixture
def kvmfuzz_progress(request: pytest.FixtureRequest) -> Any:
    """A callback writing a progress line to the terminal (not captured), or None under xdist."""
    config = request.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or hasattr(config, "workerinput"):
        return None

    def write(result: Any) -> None:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                reporter.write_line(result.progress_line())
        else:  # pragma: no cover
            reporter.write_line(result.progress_line())
    return write


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None and _RESULTS in config.stash:
        workeroutput[WORKER_KEY] = [r.to_json() for r in config.stash[_RESULTS]]
    branches = config.stash.get(_BRANCHES, None)
    if branches is not None:
        config.stash[_BRANCH_FILES].extend(branches.stop())
        if workeroutput is not None:
            workeroutput[BRANCH_KEY] = [f.to_json() for f in config.stash[_BRANCH_FILES]]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: collect each worker's campaign results."""
    output = getattr(node, "workeroutput", None) or {}
    node.config.stash[_MERGED].extend(output.get(WORKER_KEY, []))
    if output.get(BRANCH_KEY):
        from kvmfuzz.coverage import FileBranches
        node.config.stash[_BRANCH_FILES].extend(FileBranches.from_json(f) for f in output[BRANCH_KEY])


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    if _RESULTS not in config.stash:
        return
    from kvmfuzz.campaign import merge_results
    parts = [r.to_json() for r in config.stash[_RESULTS]] + config.stash[_MERGED]
    if not parts:
        return
    merged = merge_results(parts)
    terminalreporter.section("kvmfuzz campaign")
    for line in merged.summary():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"rerun: {recipe(config)}")
    _coverage_summary(terminalreporter, parts)


def _start_branch_coverage(config: pytest.Config) -> None:
    """With --kvmfuzz-coverage-report: validate DIR and start measuring the model's branches."""
    config.stash[_BRANCH_FILES] = []
    out = config.getoption("--kvmfuzz-coverage-report")
    if out is None:
        return
    if not out or (Path(out).exists() and not Path(out).is_dir()):
        raise pytest.UsageError(f"--kvmfuzz-coverage-report={out!r}: expected a directory")
    try:
        from kvmfuzz.coverage import BranchCollector
        config.stash[_BRANCHES] = BranchCollector().start()
    except ImportError as exc:
        raise pytest.UsageError(f"--kvmfuzz-coverage-report: needs the coverage package ({exc})") from None


def _coverage_summary(reporter: pytest.TerminalReporter, parts: list[dict[str, Any]]) -> None:
    """The merged protocol coverage of every campaign (and shard): table, optional report."""
    from kvmfuzz.coverage import CoverageReport, merge_reports, terminal_lines, write_report
    reports = [CoverageReport.from_json(p["coverage"]) for p in parts if p.get("coverage")]
    if not reports:
        return
    config = reporter.config
    merged = merge_reports(reports)
    out = config.getoption("--kvmfuzz-coverage-report")
    if out:
        files: list[Any] = config.stash[_BRANCH_FILES]
        merged = merged.with_files(files)
    reporter.section("kvmfuzz coverage")
    for line in terminal_lines(merged):
        reporter.write_line(line)
    if out:
        json_path, html_path = write_report(merged, out)
        reporter.write_line(f"coverage report: {html_path} (data: {json_path})")


def corpus_dir(config: pytest.Config) -> Path:
    return Path(config.stash[_OPTS]["corpus"])
