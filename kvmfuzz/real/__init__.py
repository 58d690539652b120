"""The real-kernel backend: the same op vocabulary as the model, executed on /dev/kvm.

- ``ops``: the sequential op vocabulary, ``BackendConfig``, outcomes and ``Observation``.
- ``backend``: the ``Backend`` protocol, ``KvmBackend`` (a worker subprocess, restarted when it
  dies) and ``LocalKvmBackend`` (in process).
- ``stress``: ``run_stress(seed, host_ops, vcpus) -> StressReport``, concurrent and seeded.
- ``harness`` / ``accessor`` / ``uapi`` / ``kmsg``: the VM, the CPL3 guest accessor (source in
  ``guest/accessor.S``), the ioctl and mm ABI, and the kernel log reader.

- ``model_backend``: ``ModelBackend``, the same ops on the Python model (imports the model);
  ``compare``: the per-op comparison rules; ``diffcase`` / ``diffreplay``: saved mismatches
  (``kvmfuzz-diff/1``), replay and minimisation; ``diff``: the differential Hypothesis machine
  (``python -m kvmfuzz real``).

Standard library only (plus attrs for values) outside the model; only ``diff`` imports
hypothesis.
"""
