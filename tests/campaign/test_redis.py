"""``--kvmfuzz-db=redis://HOST:PORT``: campaigns on several machines share what they found
through Hypothesis's RedisExampleDatabase. Runs against a real redis-server on loopback
(``$KVMFUZZ_TEST_REDIS_URL``, which .ci/run starts, or one started here); skips, saying why,
only where no redis-server can be had."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmfuzz.campaign import make_database, run_campaign
from kvmfuzz.cli import parse_db
from kvmfuzz.corpus import load

redis = pytest.importorskip("redis", reason="the redis package is needed (pip install -e '.[dev]')")

FAST_BUG, FAST_SEED = "fault_leaks_page_ref", 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get("KVMFUZZ_TEST_REDIS_URL")
    if url:
        where = parse_db(url).redis
        assert where is not None
        client = redis.Redis(host=where[0], port=where[1], db=where[2])
        try:
            client.ping()
            client.flushdb()
            yield url
            return
        except redis.RedisError:
            pass  # stale variable: start our own below
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed here (apt-get install redis-server; .ci/run "
                    "installs and starts one)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_make_database_is_hypothesis_redis_database(redis_url: str) -> None:
    from hypothesis.extra.redis import RedisExampleDatabase
    assert isinstance(make_database(redis_url), RedisExampleDatabase)


def test_unreachable_redis_names_the_option() -> None:
    from kvmfuzz.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match=r"--kvmfuzz-db=redis://127\.0\.0\.1:1: cannot reach"):
        make_database("redis://127.0.0.1:1")


def test_machines_share_failures_through_redis(redis_url: str, tmp_path: Path) -> None:
    # "machine" A finds the planted bug and Hypothesis stores the failing example in Redis
    a = run_campaign(120, seed=FAST_SEED, bug=FAST_BUG, corpus=tmp_path / "a", database=redis_url,
                     max_failures=1, step_count=8, examples_per_round=20)
    assert a.violations, a.summary()
    where = parse_db(redis_url).redis
    assert where is not None
    client = redis.Redis(host=where[0], port=where[1], db=where[2])
    assert client.keys("hypothesis-example:*"), "nothing stored in Redis"
    # "machine" B, another seed and corpus: its first round replays A's example from Redis
    b = run_campaign(120, seed=FAST_SEED + 12345, bug=FAST_BUG, corpus=tmp_path / "b",
                     database=redis_url, max_failures=1, max_rounds=1, step_count=8,
                     examples_per_round=20)
    assert b.violations, b.summary()
    assert b.violations[0].examples <= 5, b.summary()
    assert b.violations[0].signature == a.violations[0].signature
    path = b.violations[0].path
    assert path is not None and load(path).title == a.violations[0].title
