"""``python -m kvmfuzz``: the command line (kvmfuzz.cli)."""

from __future__ import annotations

import sys

from kvmfuzz.cli import main

sys.exit(main())
