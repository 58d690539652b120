"""The worker subprocess: crash recovery, batches, errors crossing the pipe."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

from kvmfuzz.errors import InvalidArgument
from kvmfuzz.real.backend import Backend, KvmBackend, LocalKvmBackend
from kvmfuzz.real.harness import kvm_usable
from kvmfuzz.real.kmsg import KernelLog
from kvmfuzz.real.ops import (
    OP_TYPES,
    BackendConfig,
    CreateRegion,
    GuestRead,
    GuestWrite,
    HostRead,
    MemslotCreate,
    Mprotect,
    Ok,
    Op,
    Value,
    WorkerDied,
)

USABLE, REASON = kvm_usable()
pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not USABLE, reason=f"needs a usable /dev/kvm: {REASON}")]

GPA = 0x400000
SETUP = (CreateRegion(1, 4), MemslotCreate(1, GPA, 4, 1), GuestWrite(0, GPA, 3))


def test_backends_satisfy_the_protocol() -> None:
    backends: list[Backend] = [KvmBackend(), LocalKvmBackend()]
    for backend in backends:
        backend.close()


def test_ops_pickle() -> None:
    assert len(OP_TYPES) == 16
    assert pickle.loads(pickle.dumps(SETUP)) == SETUP


def test_host_read_of_prot_none_kills_worker_and_backend_recovers() -> None:
    with KvmBackend(BackendConfig(vcpus=1)) as kvm:
        kvm.reset()
        first_pid = kvm.pid
        kvm.apply_all(SETUP)
        out = kvm.apply_all([Mprotect(1, 0, 1, "none"), HostRead(1, 0), GuestRead(0, GPA)])
        assert out[0].outcome == Ok()
        died = out[1].outcome
        assert isinstance(died, WorkerDied) and "SIGSEGV" in died.detail
        assert len(out) == 2  # the op after the crash did not run
        assert kvm.restarts == 1 and kvm.pid != first_pid
        # a fresh VM with the same config: earlier regions are gone, the VM works
        with pytest.raises(InvalidArgument, match="unknown region"):
            kvm.apply(HostRead(1, 0))
        assert [o.outcome for o in kvm.apply_all(SETUP)] == [Ok(), Ok(), Value(3)]


def test_killed_worker_is_reported_and_replaced() -> None:
    with KvmBackend(BackendConfig(vcpus=1)) as kvm:
        kvm.reset()
        pid = kvm.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        died = kvm.apply(GuestRead(0, GPA)).outcome
        assert isinstance(died, WorkerDied) and "SIGKILL" in died.detail
        assert kvm.apply_all(SETUP)[-1].outcome == Value(3)


def test_apply_before_reset_is_refused() -> None:
    with KvmBackend() as kvm, pytest.raises(InvalidArgument):
        kvm.apply(GuestRead(0, GPA))


def test_in_process_backend_matches_worker() -> None:
    local = LocalKvmBackend()
    try:
        local.reset(BackendConfig(vcpus=1))
        with KvmBackend(BackendConfig(vcpus=1)) as kvm:
            kvm.reset()
            ops: list[Op] = [*SETUP, GuestRead(0, GPA), GuestRead(0, GPA + 0x8000)]
            assert [local.apply(op) for op in ops] == kvm.apply_all(ops)
    finally:
        local.close()


def test_hung_worker_times_out_and_is_replaced() -> None:
    with KvmBackend(BackendConfig(vcpus=1, op_timeout_s=0.5)) as kvm:
        kvm.reset()
        pid = kvm.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        died = kvm.apply(GuestRead(0, GPA)).outcome
        assert isinstance(died, WorkerDied) and "no answer within 0.5 s" in died.detail
        assert kvm.pid != pid
        assert kvm.apply_all(SETUP)[-1].outcome == Value(3)


def test_kernel_log_reader() -> None:
    assert KernelLog(enabled=False).read_new() == ()
    log = KernelLog()
    if not log.available or not os.access("/dev/kmsg", os.W_OK):
        log.close()
        pytest.skip(f"/dev/kmsg not readable and writable: {log.reason}")
    try:
        with open("/dev/kmsg", "wb", buffering=0) as kmsg:
            kmsg.write(b"<6>kvmfuzz: kernel log reader test\n")
        assert "kvmfuzz: kernel log reader test" in log.read_new()
        assert log.read_new() == ()
    finally:
        log.close()
