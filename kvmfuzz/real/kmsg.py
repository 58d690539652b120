"""New kernel-log lines, read from /dev/kmsg when it is readable (events, never failures).

/dev/kmsg hands out one record per read(): ``"prio,seq,usec,flags;text\\n"`` followed by
optional `` KEY=value`` continuation lines. Opened non-blocking and positioned at the end, a
reader sees only what the kernel logs from then on; EPIPE means records were overwritten
before we read them, and the next read continues with the oldest one still kept.
"""

from __future__ import annotations

import errno
import os


class KernelLog:
    """Collects kernel-log records written after construction; ``available`` says if it can."""

    def __init__(self, enabled: bool = True) -> None:
        self.fd = -1
        self.reason = "disabled"
        if not enabled:
            return
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self.fd, 0, os.SEEK_END)
            self.reason = "ok"
        except OSError as exc:
            self.fd = -1
            self.reason = f"/dev/kmsg unreadable: {exc.strerror}"

    @property
    def available(self) -> bool:
        return self.fd >= 0

    def read_new(self) -> tuple[str, ...]:
        """The text of every record logged since the last call (oldest first)."""
        if self.fd < 0:
            return ()
        lines: list[str] = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:
                    lines.append("kvmfuzz: kernel log records were overwritten before read")
                    continue
                break
            if not record:
                break
            head, _, text = record.decode("utf-8", "replace").partition(";")
            lines.append(text.split("\n", 1)[0] if text else head)
        return tuple(lines)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
