# Copyright (c) the dermseg contributors. Apache-2.0.
"""What every input kind shares: the size limits checked before any pixel is decoded, and the skip signal.

The limits are the loader's defence against decompression bombs and oversized files: they are checked on what
a file *declares* (its size on disk, its header's rows and columns), so a refusal costs neither memory nor time.
"""

from __future__ import annotations

__all__ = ["MAX_PIXELS", "MAX_FILE_BYTES", "SkippedInput", "check_size"]

# Refused before any pixel is decoded: a decompression bomb declares a huge size in a few bytes.
# 50 megapixels is above any dermoscope or phone camera in use (a 48 MP phone sensor is 8000 x 6000).
MAX_PIXELS = 50_000_000
# No file is read whole beyond this: uncompressed 8-bit RGB at MAX_PIXELS is 150 MB.
MAX_FILE_BYTES = 4 * MAX_PIXELS


class SkippedInput(Exception):
    """A readable file that is not a photograph to segment (a CT, an SR, a text file): reported, not an error."""


def check_size(rows: int, columns: int, what: str) -> None:
    """Refuse an empty image, or one that declares more than ``MAX_PIXELS``; ``what`` names it in the message."""
    if rows <= 0 or columns <= 0:
        raise ValueError(f"{what} has an empty image ({rows} x {columns})")
    if rows * columns > MAX_PIXELS:
        raise ValueError(f"{what} declares {rows} x {columns} pixels, more than the {MAX_PIXELS} allowed")
