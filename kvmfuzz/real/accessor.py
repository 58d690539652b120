"""The guest accessor: its code bytes, the system slot's layout and the host-built page tables.

The guest runs at CPL3 in 64-bit mode (at CPL0 this kernel's vendor module emulates guest
instructions and bypasses the SPTE path, see shared/reference/real-kvm-facts.md). Its source is
kvmfuzz/real/guest/accessor.S; the bytes below were produced from it once with binutils
(``as --64`` then ``objcopy -O binary -j .text``), so the runtime needs no assembler.

Guest physical layout (the *system slot*, memslot 0, never written by the host after start):

    0x00000  code (ACCESSOR_CODE), guest read-only
    0x01000  mailboxes, 64 bytes per vCPU, guest read-write
    0x02000  PML4, 0x03000 PDPT, 0x04000-0x07fff four PDs, 0x08000-0x87fff 128 PTs (read-only)
    0x88000  a 64-bit TSS whose I/O bitmap allows ports 0-31 (read-only)

Why a TSS: under kvm_pvm the guest's RFLAGS.IOPL does not survive the first entry (the
switcher masks it), so the accessor's ``out`` at CPL3 raises #GP; the vendor module emulates
the instruction and KVM's emulator then consults the TSS I/O bitmap (through the TR loaded by
KVM_SET_SREGS). With port 0x10 allowed there, the ``out`` becomes the KVM_EXIT_IO report.

The identity map covers ``[0, 4 GiB)``: 4 KiB pages below 256 MiB, 2 MiB pages above, every
entry present, user, accessed and dirty (so the guest never makes KVM write its page tables).
Guest accesses are allowed at ``[DATA_GPA_MIN, IDENTITY_MAP_END)``; outside the map the guest
would triple-fault (it has no IDT).
"""

from __future__ import annotations

import functools
import struct
from typing import Final

ACCESSOR_CODE: Final = bytes.fromhex(
    "488b03488b7b08488b731083f801742783f802742783f803742783f804742683f805742683f806742683f8"
    "07742683f808742531d2eb270fb617eb220fb717eb1d8b17eb19488b17eb14408837eb0c668937eb078937"
    "eb034889374889f248895318e610eb9a"
)
ACCESSOR_ENTRY: Final = 0x0  # accessor_loop
ACCESSOR_PORT: Final = 0x10

# mailbox commands: read 1/2/4/8 bytes = 1..4, write = 5..8
CMD_READ: Final = {1: 1, 2: 2, 4: 3, 8: 4}
CMD_WRITE: Final = {1: 5, 2: 6, 4: 7, 8: 8}
MB_CMD: Final = 0
MB_GPA: Final = 8
MB_VALUE: Final = 16
MB_RESULT: Final = 24
MAILBOX_SIZE: Final = 64

PAGE_SIZE: Final = 4096
SYSTEM_SLOT: Final = 0
SYSTEM_GPA: Final = 0
SYSTEM_SIZE: Final = 1 << 20
CODE_GPA: Final = 0x0000
MAILBOX_GPA: Final = 0x1000
MAX_VCPUS: Final = PAGE_SIZE // MAILBOX_SIZE
PML4_GPA: Final = 0x2000
PDPT_GPA: Final = 0x3000
PD_GPA: Final = 0x4000
PT_GPA: Final = 0x8000
TSS_GPA: Final = 0x88000
TSS_IOMAP_BASE: Final = 104  # the I/O bitmap follows the 104-byte 64-bit TSS
TSS_LIMIT: Final = TSS_IOMAP_BASE + 4  # 4 bitmap bytes (ports 0-31, all allowed) + 0xff
SMALL_PAGES_END: Final = 256 << 20  # 4 KiB guest pages below, 2 MiB pages above
IDENTITY_MAP_END: Final = 4 << 30
DATA_GPA_MIN: Final = SYSTEM_SIZE

_P, _RW, _US, _A, _D, _PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
_TABLE: Final = _P | _RW | _US | _A


def _leaf(gpa: int) -> int:
    """A 4 KiB leaf: system pages read-only except the mailbox page."""
    writable = gpa >= SYSTEM_SIZE or gpa == MAILBOX_GPA
    return gpa | _P | _US | _A | _D | (_RW if writable else 0)


@functools.cache
def system_image() -> bytes:
    """The system slot's initial contents: code, empty mailboxes, page tables."""
    image = bytearray(SYSTEM_SIZE)
    image[CODE_GPA:CODE_GPA + len(ACCESSOR_CODE)] = ACCESSOR_CODE
    struct.pack_into("<Q", image, PML4_GPA, PDPT_GPA | _TABLE)
    n_pd = IDENTITY_MAP_END >> 30
    for i in range(n_pd):
        struct.pack_into("<Q", image, PDPT_GPA + 8 * i, (PD_GPA + PAGE_SIZE * i) | _TABLE)
    n_pt = SMALL_PAGES_END >> 21
    for j in range(n_pd * 512):  # PDEs, PD pages are contiguous
        gpa = j << 21
        pde = (PT_GPA + PAGE_SIZE * j) | _TABLE if j < n_pt else gpa | _TABLE | _D | _PS
        struct.pack_into("<Q", image, PD_GPA + 8 * j, pde)
    leaves = [_leaf(k << 12) for k in range(n_pt * 512)]
    struct.pack_into(f"<{len(leaves)}Q", image, PT_GPA, *leaves)
    assert PT_GPA + 8 * len(leaves) <= TSS_GPA
    struct.pack_into("<H", image, TSS_GPA + 102, TSS_IOMAP_BASE)
    image[TSS_GPA + TSS_LIMIT] = 0xFF  # the bitmap's terminating byte
    return bytes(image)


def mailbox_gpa(vcpu: int) -> int:
    return MAILBOX_GPA + MAILBOX_SIZE * vcpu
