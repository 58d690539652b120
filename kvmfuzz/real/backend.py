"""Backends that execute the op vocabulary (ops.py): the ``Backend`` protocol and the real KVM.

- ``Backend``: what a driver (a Hypothesis machine, a corpus replayer, a differential check
  against the Python model) needs: ``reset(config)``, ``apply(op) -> Observation``,
  ``close()``. The model will implement the same protocol.
- ``LocalKvmBackend``: executes ops in this process on a real VM (harness.py). A host load
  from a PROT_NONE page kills the process that does it, so callers normally use:
- ``KvmBackend``: the same executor in a worker subprocess (``python -m kvmfuzz.real.worker``)
  reached through a length-prefixed pickle protocol over pipes. A worker that dies or hangs
  is reported as a ``WorkerDied`` observation and restarted with the last config.

Argument errors (unknown region, gpa outside the accessor's map, ...) raise InvalidArgument in
the caller; kernel answers (errnos, MMIO exits, EFAULT, dirty bitmaps) are observations.
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Protocol, cast

import attrs

from kvmfuzz.errors import InvalidArgument, KvmfuzzError
from kvmfuzz.real import accessor as acc
from kvmfuzz.real import uapi
from kvmfuzz.real.harness import Kvm, Region, Vm
from kvmfuzz.real.kmsg import KernelLog
from kvmfuzz.real.ops import (
    BackendConfig,
    ClearDirtyLog,
    CowReplace,
    CreateRegion,
    Dirty,
    Errno,
    GetDirtyLog,
    GuestRead,
    GuestWrite,
    HostRead,
    HostWrite,
    MadviseDontneed,
    MemslotCreate,
    MemslotDelete,
    MemslotMove,
    MemslotSetFlags,
    Mprotect,
    Observation,
    Ok,
    Op,
    Outcome,
    PunchHole,
    Remap,
    WorkerDied,
)


class Backend(Protocol):
    """Executes a sequential schedule of ops, one observation per op."""

    def reset(self, config: BackendConfig) -> None:
        """Discard everything and start a fresh VM described by ``config``."""

    def apply(self, op: Op) -> Observation:
        """Execute one op and report what happened."""

    def close(self) -> None:
        """Release every resource (VM, worker process)."""


class WorkerError(KvmfuzzError):
    """The worker raised something other than InvalidArgument: a harness bug (traceback)."""


@attrs.frozen
class SlotState:
    """A memslot as last set successfully (flags as passed to KVM)."""

    gpa: int
    npages: int
    region: int
    region_page: int
    flags: int


class LocalKvmBackend:
    """The op executor on a real VM in this process (use KvmBackend unless you know why)."""

    def __init__(self) -> None:
        self._kvm: Kvm | None = None
        self._vm: Vm | None = None
        self._log: KernelLog | None = None
        self.config = BackendConfig()
        self.regions: dict[int, Region] = {}
        self.slots: dict[int, SlotState] = {}
        self._dispatch: dict[type, Callable[[Any], Outcome]] = {
            CreateRegion: self._create_region, GuestRead: self._guest_read,
            GuestWrite: self._guest_write, HostRead: self._host_read,
            HostWrite: self._host_write, MadviseDontneed: self._dontneed,
            Mprotect: self._mprotect, Remap: self._remap, CowReplace: self._cow_replace,
            PunchHole: self._punch_hole, MemslotCreate: self._slot_create,
            MemslotDelete: self._slot_delete, MemslotMove: self._slot_move,
            MemslotSetFlags: self._slot_set_flags, GetDirtyLog: self._get_dirty_log,
            ClearDirtyLog: self._clear_dirty_log,
        }

    # --- Backend ----------------------------------------------------------------------------

    def reset(self, config: BackendConfig) -> None:
        self._teardown()
        if self._kvm is None:
            self._kvm = Kvm()
        if self._log is None or self._log.available != config.kernel_log:
            if self._log is not None:
                self._log.close()
            self._log = KernelLog(config.kernel_log)
        self.config = config
        self._vm = Vm(self._kvm, config.vcpus, config.manual_protect, config.initially_set)

    def apply(self, op: Op) -> Observation:
        handler = self._dispatch.get(type(op))
        if handler is None:
            raise InvalidArgument(f"not an op: {op!r}")
        if self._vm is None:
            raise InvalidArgument("apply() before reset()")
        start = time.perf_counter_ns()
        outcome = handler(op)
        elapsed = time.perf_counter_ns() - start
        lines = self._log.read_new() if self._log is not None else ()
        return Observation(outcome, lines, elapsed)

    def close(self) -> None:
        self._teardown()
        if self._kvm is not None:
            self._kvm.close()
            self._kvm = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _teardown(self) -> None:
        if self._vm is not None:
            self._vm.close()
            self._vm = None
        for region in self.regions.values():
            region.close()
        self.regions = {}
        self.slots = {}

    # --- helpers ----------------------------------------------------------------------------

    @property
    def vm(self) -> Vm:
        if self._vm is None:
            raise InvalidArgument("no VM: call reset() first")
        return self._vm

    def _region(self, region: int) -> Region:
        try:
            return self.regions[region]
        except KeyError:
            raise InvalidArgument(
                f"unknown region {region}; known: {sorted(self.regions)}") from None

    def _check_guest_access(self, vcpu: int, gpa: int, size: int) -> None:
        if vcpu >= len(self.vm.vcpus):
            raise InvalidArgument(f"vcpu {vcpu}: the VM has {len(self.vm.vcpus)}")
        if not acc.DATA_GPA_MIN <= gpa <= acc.IDENTITY_MAP_END - size:
            raise InvalidArgument(
                f"gpa {gpa:#x} outside the accessor's data range "
                f"[{acc.DATA_GPA_MIN:#x}, {acc.IDENTITY_MAP_END:#x})")
        if gpa % size:
            raise InvalidArgument(f"gpa {gpa:#x} not aligned to its size {size}")

    @staticmethod
    def _errno(err: int) -> Outcome:
        return Errno(err) if err else Ok()

    def _set_region(self, slot: int, gpa: int, npages: int, region: int, region_page: int,
                    flags: int) -> int:
        backing = self._region(region)
        if region_page + npages > backing.npages:
            raise InvalidArgument(
                f"slot {slot}: pages [{region_page}, {region_page + npages}) outside region "
                f"{region} ({backing.npages} pages)")
        if backing.kind == "gmem":
            return self.vm.set_memory_region(
                slot, flags | uapi.KVM_MEM_GUEST_MEMFD, gpa, npages * acc.PAGE_SIZE,
                backing.hva(region_page), backing.fd, region_page * acc.PAGE_SIZE)
        return self.vm.set_memory_region(slot, flags, gpa, npages * acc.PAGE_SIZE,
                                         backing.hva(region_page))

    @staticmethod
    def _user_slot(slot: int) -> None:
        if slot == acc.SYSTEM_SLOT:
            raise InvalidArgument(f"slot {slot} is the accessor's system slot")

    def _known_slot(self, slot: int) -> SlotState:
        self._user_slot(slot)
        try:
            return self.slots[slot]
        except KeyError:
            raise InvalidArgument(f"unknown slot {slot}; known: {sorted(self.slots)}") from None

    # --- handlers ---------------------------------------------------------------------------

    def _create_region(self, op: CreateRegion) -> Outcome:
        if op.region in self.regions:
            raise InvalidArgument(f"region {op.region} exists")
        try:
            self.regions[op.region] = Region(op.kind, op.npages, self.vm, op.thp)
        except uapi.SysError as exc:
            return Errno(exc.errno or errno.EIO)
        return Ok()

    def _guest_read(self, op: GuestRead) -> Outcome:
        self._check_guest_access(op.vcpu, op.gpa, op.size)
        return self.vm.vcpus[op.vcpu].access(acc.CMD_READ[op.size], op.gpa)

    def _guest_write(self, op: GuestWrite) -> Outcome:
        self._check_guest_access(op.vcpu, op.gpa, op.size)
        return self.vm.vcpus[op.vcpu].access(acc.CMD_WRITE[op.size], op.gpa, op.value)

    def _host_read(self, op: HostRead) -> Outcome:
        return self._region(op.region).read(op.offset, op.size, op.checked)

    def _host_write(self, op: HostWrite) -> Outcome:
        return self._region(op.region).write(op.offset, op.value, op.size, op.checked)

    def _dontneed(self, op: MadviseDontneed) -> Outcome:
        return self._errno(self._region(op.region).dontneed(op.page, op.npages))

    def _mprotect(self, op: Mprotect) -> Outcome:
        return self._errno(self._region(op.region).protect(op.page, op.npages, op.prot))

    def _remap(self, op: Remap) -> Outcome:
        return self._errno(self._region(op.region).remap(op.page, op.npages, op.how))

    def _cow_replace(self, op: CowReplace) -> Outcome:
        return self._errno(self._region(op.region).cow_replace(op.page, op.npages))

    def _punch_hole(self, op: PunchHole) -> Outcome:
        return self._errno(self._region(op.region).punch_hole(op.page, op.npages))

    def _slot_create(self, op: MemslotCreate) -> Outcome:
        self._user_slot(op.slot)
        err = self._set_region(op.slot, op.gpa, op.npages, op.region, op.region_page, op.flags)
        if not err:
            if op.npages:
                self.slots[op.slot] = SlotState(op.gpa, op.npages, op.region, op.region_page,
                                                op.flags)
            else:
                self.slots.pop(op.slot, None)
        return self._errno(err)

    def _slot_delete(self, op: MemslotDelete) -> Outcome:
        self._user_slot(op.slot)
        state = self.slots.get(op.slot)
        if state is None:  # probe: KVM answers for a slot it does not have
            return self._errno(self.vm.set_memory_region(op.slot, 0, 0, 0, 0))
        err = self._set_region(op.slot, state.gpa, 0, state.region, state.region_page,
                               state.flags)
        if not err:
            del self.slots[op.slot]
        return self._errno(err)

    def _slot_move(self, op: MemslotMove) -> Outcome:
        state = self._known_slot(op.slot)
        err = self._set_region(op.slot, op.gpa, state.npages, state.region, state.region_page,
                               state.flags)
        if not err:
            self.slots[op.slot] = attrs.evolve(state, gpa=op.gpa)
        return self._errno(err)

    def _slot_set_flags(self, op: MemslotSetFlags) -> Outcome:
        state = self._known_slot(op.slot)
        err = self._set_region(op.slot, state.gpa, state.npages, state.region,
                               state.region_page, op.flags)
        if not err:
            self.slots[op.slot] = attrs.evolve(state, flags=op.flags)
        return self._errno(err)

    def _get_dirty_log(self, op: GetDirtyLog) -> Outcome:
        state = self.slots.get(op.slot)
        err, pages = self.vm.get_dirty_log(op.slot, state.npages if state else 0)
        return Errno(err) if err else Dirty(pages)

    def _clear_dirty_log(self, op: ClearDirtyLog) -> Outcome:
        return self._errno(self.vm.clear_dirty_log(op.slot, op.first_page, op.npages, op.pages))


# --- the worker protocol --------------------------------------------------------------------

_HEADER = struct.Struct("<I")


def send_message(stream: IO[bytes], message: object) -> None:
    """One message: a 4-byte little-endian length, then the pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_exact(fd: int, size: int, deadline: float | None) -> bytes | None:
    """``size`` bytes from ``fd``; None at EOF; TimeoutError past ``deadline``."""
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def receive_message(fd: int, deadline: float | None = None) -> object | None:
    """The next message from ``fd``; None at EOF; TimeoutError past ``deadline``."""
    header = _read_exact(fd, _HEADER.size, deadline)
    if header is None:
        return None
    payload = _read_exact(fd, _HEADER.unpack(header)[0], deadline)
    if payload is None:
        return None
    message: object = pickle.loads(payload)
    return message


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


class KvmBackend:
    """The real-kernel backend: LocalKvmBackend in a worker subprocess, restarted on death."""

    def __init__(self, config: BackendConfig | None = None) -> None:
        self.config = config or BackendConfig()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.restarts = 0
        self._ready = False

    # --- Backend ----------------------------------------------------------------------------

    def reset(self, config: BackendConfig | None = None) -> None:
        """Start a fresh VM (and a worker if none is running)."""
        if config is not None:
            self.config = config
        if self._proc is None or self._proc.poll() is not None:
            self._spawn()
        _, died = self._call(("reset", self.config))
        if died is not None:
            raise WorkerError(f"worker died during reset: {died.detail}")
        self._ready = True

    def apply(self, op: Op) -> Observation:
        return self.apply_all((op,))[0]

    def apply_all(self, ops: Iterable[Op]) -> list[Observation]:
        """Apply ops in one round trip. If the worker dies at op k, the result ends with
        k's WorkerDied observation, the later ops are not run, and a fresh worker with the
        same config is ready for the next call."""
        batch = tuple(ops)
        if not self._ready:
            raise InvalidArgument("apply() before reset()")
        if not batch:
            return []
        results, died = self._call(("apply", batch), count=len(batch))
        if died is not None:
            self.restarts += 1
            self.reset()
            results.append(Observation(died))
        return results

    def close(self) -> None:
        proc, self._proc = self._proc, None
        self._ready = False
        if proc is not None:
            try:
                if proc.poll() is None and proc.stdin is not None:
                    send_message(proc.stdin, ("close",))
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> KvmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # --- plumbing ---------------------------------------------------------------------------

    def _spawn(self) -> None:
        self.close()
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "kvmfuzz.real.worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, env=env, close_fds=True)

    def _call(self, message: tuple[Any, ...], count: int = 1
              ) -> tuple[list[Any], WorkerDied | None]:
        """Send ``message`` and collect ``count`` replies, or how the worker died."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        results: list[Any] = []
        try:
            send_message(proc.stdin, message)
            for _ in range(count):
                deadline = time.monotonic() + self.config.op_timeout_s
                reply = receive_message(proc.stdout.fileno(), deadline)
                if reply is None:
                    return results, self._died(None)
                kind, payload = cast(tuple[str, Any], reply)
                if kind == "error":
                    name, text = payload
                    if name == "InvalidArgument":
                        raise InvalidArgument(text)
                    raise WorkerError(f"worker raised {name}: {text}")
                results.append(payload)
        except TimeoutError:
            return results, self._died(f"gave no answer within {self.config.op_timeout_s} s")
        except BrokenPipeError:
            return results, self._died(None)
        return results, None

    def _died(self, why: str | None) -> WorkerDied:
        """Reap the worker (killing it if hung) and describe its end."""
        proc = self._proc
        assert proc is not None
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        if why is None:
            why = (f"killed by {signal.Signals(-code).name}" if code < 0
                   else f"exited with status {code}")
        tail = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", "replace").strip()
            tail = f"; stderr: {text[-500:]}" if text else ""
        detail = f"worker pid {proc.pid} {why}{tail}"
        self.close()
        return WorkerDied(detail)
