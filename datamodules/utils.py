"""Small I/O helpers: every result file is written atomically (temporary file in the same folder, then rename).

The implementations live in the neutral `toolbox.io`; this module keeps the old import path."""
from __future__ import annotations

from toolbox.io import atomic_write_bytes_with, atomic_write_json, atomic_write_text

__all__ = ["atomic_write_bytes_with", "atomic_write_json", "atomic_write_text"]
