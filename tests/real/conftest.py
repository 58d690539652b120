"""Fixtures for the real-KVM tests: a worker-backed KvmBackend shared by a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmfuzz.real.backend import KvmBackend
from kvmfuzz.real.ops import BackendConfig


@pytest.fixture(scope="module")
def worker() -> Iterator[KvmBackend]:
    backend = KvmBackend()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def kvm(worker: KvmBackend) -> KvmBackend:
    """A fresh two-vCPU VM in the shared worker."""
    worker.reset(BackendConfig(vcpus=2))
    return worker
