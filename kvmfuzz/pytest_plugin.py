"""kvmfuzz's pytest plugin (registered through the ``pytest11`` entry point).

Options (also as ini keys ``kvmfuzz_seconds``, ``kvmfuzz_seed``, ``kvmfuzz_bug``):
``--kvmfuzz-seconds`` campaign budget, ``--kvmfuzz-seed`` first Hypothesis seed,
``--kvmfuzz-bug`` a planted bug from kvmfuzz.bugs (none = the correct model).
"""

from __future__ import annotations

import pytest

from kvmfuzz.bugs import lookup
from kvmfuzz.errors import InvalidArgument

_RESULTS = pytest.StashKey[list[list[str]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmfuzz")
    group.addoption("--kvmfuzz-seconds", default=None, help="campaign time budget in seconds")
    group.addoption("--kvmfuzz-seed", default=None, help="first Hypothesis seed of the campaign")
    group.addoption("--kvmfuzz-bug", default=None, help="planted bug to run against")
    parser.addini("kvmfuzz_seconds", "campaign time budget in seconds", default="60")
    parser.addini("kvmfuzz_seed", "first Hypothesis seed", default="0")
    parser.addini("kvmfuzz_bug", "planted bug", default="")


def _opt(config: pytest.Config, name: str) -> str:
    value = config.getoption(f"--kvmfuzz-{name}")
    return str(value) if value is not None else str(config.getini(f"kvmfuzz_{name}"))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS] = []
    try:
        seconds = float(_opt(config, "seconds"))
        if seconds <= 0:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"--kvmfuzz-seconds={_opt(config, 'seconds')!r}: expected a "
                                "positive number of seconds") from None
    try:
        int(_opt(config, "seed"))
    except ValueError:
        raise pytest.UsageError(f"--kvmfuzz-seed={_opt(config, 'seed')!r}: expected an "
                                "integer") from None
    try:
        lookup(_opt(config, "bug") or None)
    except InvalidArgument as exc:
        raise pytest.UsageError(f"--kvmfuzz-bug: {exc}") from None


@pytest.fixture
def kvmfuzz_options(request: pytest.FixtureRequest) -> dict[str, object]:
    config = request.config
    return {"seconds": float(_opt(config, "seconds")), "seed": int(_opt(config, "seed")),
            "bug": _opt(config, "bug") or None}


@pytest.fixture
def kvmfuzz_report(request: pytest.FixtureRequest) -> list[list[str]]:
    return request.config.stash[_RESULTS]


def pytest_report_header(config: pytest.Config) -> str:
    bug = _opt(config, "bug") or "none"
    return (f"kvmfuzz: seconds={_opt(config, 'seconds')} seed={_opt(config, 'seed')} bug={bug}"
            f" (rerun: pytest -m campaign --kvmfuzz-seconds={_opt(config, 'seconds')} "
            f"--kvmfuzz-seed={_opt(config, 'seed')}"
            + (f" --kvmfuzz-bug={bug})" if bug != "none" else ")"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for lines in terminalreporter.config.stash[_RESULTS]:
        terminalreporter.section("kvmfuzz campaign")
        for line in lines:
            terminalreporter.write_line(line)
