# Copyright (c) the dermseg contributors. Apache-2.0.
"""The values and rules that several layers share, one home each.

The operators, the results file, the edge store and the PACS sender all speak of the same routes, SOP classes,
UIDs and timestamps.  This module imports nothing heavy (no Holoscan, no torch), so the edge store and the
command-line tools use it without loading the app.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime, timezone

__all__ = [
    "MANUFACTURER",
    "RESULTS_FILE",
    "SEGMENTATION_STORAGE",
    "DERMOSCOPIC_PHOTOGRAPHY",
    "VL_PHOTOGRAPHIC",
    "SECONDARY_CAPTURE",
    "PHOTO_SOP_CLASSES",
    "Route",
    "CaseStatus",
    "is_valid_uid",
    "utc_timestamp",
]

# The Manufacturer of every object this app writes (and how it recognises its own results coming back).
MANUFACTURER = "dermseg"
# The run's record in the output folder, one entry per input file.
RESULTS_FILE = "results.json"

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
DERMOSCOPIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# The photographs the app segments, by SOP Class UID.
PHOTO_SOP_CLASSES = {
    DERMOSCOPIC_PHOTOGRAPHY: "Dermoscopic Photography Image Storage",
    VL_PHOTOGRAPHIC: "VL Photographic Image Storage",
    SECONDARY_CAPTURE: "Secondary Capture Image Storage",
}


class _StrEnum(str, enum.Enum):
    """A string enum that prints and serialises (JSON, SQLite) as its value, on Python 3.10 too."""

    def __str__(self) -> str:
        return str(self.value)


class Route(_StrEnum):
    """Where the confidence sends a segmented case."""

    ACCEPTED = "accepted"  # confident: a training sample at the edge
    REVIEW = "review"  # unsure: a person checks, and may correct, the mask


class CaseStatus(_StrEnum):
    """How a case's way through the pipeline ended."""

    OK = "ok"
    ERROR = "error"
    SKIPPED = "skipped"


# DICOM PS3.5 9.1: digits and dots, no leading zero in a component (not enforced: real files break it), <= 64.
_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(uid: object) -> bool:
    """True for a UID that is safe to use in a file name (and well formed enough for a PACS)."""
    return isinstance(uid, str) and len(uid) <= 64 and _UID_PATTERN.fullmatch(uid) is not None


def utc_timestamp() -> str:
    """Now, as every record of this app states a time: ISO 8601 in UTC to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
