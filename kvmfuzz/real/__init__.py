"""The real-kernel backend: the same op vocabulary as the model, executed on /dev/kvm.

- ``ops``: the sequential op vocabulary, ``BackendConfig``, outcomes and ``Observation``.
- ``backend``: the ``Backend`` protocol, ``KvmBackend`` (a worker subprocess, restarted when it
  dies) and ``LocalKvmBackend`` (in process).
- ``stress``: ``run_stress(seed, host_ops, vcpus) -> StressReport``, concurrent and seeded.
- ``harness`` / ``accessor`` / ``uapi`` / ``kmsg``: the VM, the CPL3 guest accessor (source in
  ``guest/accessor.S``), the ioctl and mm ABI, and the kernel log reader.

Standard library only (plus attrs for values); nothing here imports hypothesis.
"""
