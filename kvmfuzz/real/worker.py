"""The KvmBackend worker process: ``python -m kvmfuzz.real.worker``.

Reads length-prefixed pickled requests on stdin and answers on the original stdout (Python's
own stdout is pointed at stderr so a stray print cannot corrupt the protocol):

- ``("reset", BackendConfig)`` → ``("ok", None)``
- ``("apply", (op, ...))`` → one ``("ok", Observation)`` per op, streamed
- ``("close",)`` → exit
- a failure → ``("error", (exception class name, message or traceback))``
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from kvmfuzz.errors import InvalidArgument
from kvmfuzz.real.backend import LocalKvmBackend, receive_message, send_message


def main() -> int:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    backend = LocalKvmBackend()
    try:
        while True:
            message: Any = receive_message(0)
            if message is None or message[0] == "close":
                return 0
            try:
                if message[0] == "reset":
                    backend.reset(message[1])
                    send_message(out, ("ok", None))
                elif message[0] == "apply":
                    for op in message[1]:
                        send_message(out, ("ok", backend.apply(op)))
                else:
                    raise InvalidArgument(f"unknown request {message[0]!r}")
            except InvalidArgument as exc:
                send_message(out, ("error", ("InvalidArgument", str(exc))))
            except Exception as exc:  # a harness bug: report it, keep serving
                send_message(out, ("error", (type(exc).__name__, traceback.format_exc())))
    finally:
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
